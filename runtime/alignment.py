"""Cross-modal alignment for `fusion calibrate --refine` and `--auto`: IR and visible frames aligned on what the two
bands share (edge orientation, see `cross_modal_features`), coarse to fine over an image pyramid, starting from the
points' homography. `refine_homography` keeps its result only when it stays near the user's points and raises the
alignment score; `auto_homography` aligns with no points and refuses on a flat scene. The homography itself, its
file and its per-frame use live in runtime/registration.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import cv2
import numpy as np

from runtime.errors import FusionError
from runtime.registration import transfer_error


def edge_map(gray: np.ndarray, blur_sigma: float = 1.5) -> np.ndarray:
    """Gradient magnitude of a float gray image, smoothed and scaled to unit maximum: what ECC aligns."""
    gray = np.asarray(gray, dtype=np.float32)
    if blur_sigma > 0:
        gray = cv2.GaussianBlur(gray, (0, 0), blur_sigma)
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    magnitude = cv2.magnitude(gx, gy)
    if blur_sigma > 0:
        magnitude = cv2.GaussianBlur(magnitude, (0, 0), blur_sigma)
    peak = float(magnitude.max())
    return magnitude / peak if peak > 0 else magnitude


# ------------------------------------------------------------------------------------------ cross-modal refinement
# Thermal and visible images share where edges are and which way they run, not how bright either side is nor which
# side is brighter (a warm person is bright in IR and may be dark in VIS). Both images are turned into a field of
# edge orientations, the angle doubled so that a flipped contrast reads the same (cos 2a, sin 2a), weighted by how
# far the gradient stands above the image's own noise, and with flat and saturated regions masked out.

@dataclass
class CrossModalFeatures:
    """Doubled-angle gradient orientation of one image at one scale: what both bands share."""
    field: np.ndarray       # (H, W, 2) float32: (cos 2a, sin 2a) * g^2 / (g^2 + noise^2), 0 where flat
    saturated: np.ndarray   # (H, W) bool: clipped pixels and their border (glare, blooming) -- no evidence there
    textured: float         # share of the unsaturated pixels whose gradient stands clear of the noise


def gradient_noise_floor(gray: np.ndarray, blur_sigma: float = 1.0) -> float:
    """The gradient magnitude that is noise or flat texture for this image: a robust scale of its smoothed gradient.

    Half of a natural image is flat or nearly so, so the median gradient magnitude measures its noise; an edge has
    to stand well above it to count."""
    gray = np.asarray(gray, dtype=np.float32)
    if blur_sigma > 0:
        gray = cv2.GaussianBlur(gray, (0, 0), blur_sigma)
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3, scale=1 / 8)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3, scale=1 / 8)
    magnitude = cv2.magnitude(gx, gy)
    return max(2.0 * float(np.median(magnitude)), 2e-3)


def cross_modal_features(gray: np.ndarray, noise_floor: float, blur_sigma: float = 1.0,
                         saturation: tuple[float, float] = (0.01, 0.985)) -> CrossModalFeatures:
    """The orientation field of a float gray image in [0, 1] (see above); noise_floor from gradient_noise_floor."""
    gray = np.asarray(gray, dtype=np.float32)
    smooth = cv2.GaussianBlur(gray, (0, 0), blur_sigma) if blur_sigma > 0 else gray
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3, scale=1 / 8)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3, scale=1 / 8)
    g2 = gx * gx + gy * gy
    denominator = g2 + np.float32(noise_floor ** 2)
    field = np.empty(gray.shape + (2,), np.float32)
    field[..., 0] = (gx * gx - gy * gy) / denominator
    field[..., 1] = 2 * gx * gy / denominator
    clipped = ((gray <= saturation[0]) | (gray >= saturation[1])).astype(np.uint8)
    saturated = cv2.dilate(clipped, np.ones((5, 5), np.uint8)).astype(bool)
    field[saturated] = 0
    usable = ~saturated
    textured = float((g2[usable] > 4 * noise_floor ** 2).mean()) if usable.any() else 0.0
    return CrossModalFeatures(field, saturated, textured)


def _frame_normaliser(width: int, height: int) -> np.ndarray:
    """Pixel coordinates -> centred coordinates of unit half-diagonal (keeps the normal equations well scaled)."""
    half = 0.5 * float(np.hypot(width, height))
    return np.array([[1 / half, 0, -0.5 * (width - 1) / half], [0, 1 / half, -0.5 * (height - 1) / half], [0, 0, 1]])


def centred_perspective(homography: np.ndarray, ir_shape: tuple[int, int], vis_shape: tuple[int, int]) -> np.ndarray:
    """The two perspective terms of an IR->VIS homography in centred coordinates of unit half-diagonal (each frame
    its own): what PERSPECTIVE_SIGMA holds near zero, the same at any resolution."""
    centred = (_frame_normaliser(vis_shape[1], vis_shape[0]) @ homography
               @ np.linalg.inv(_frame_normaliser(ir_shape[1], ir_shape[0])))
    return centred[2, :2] / centred[2, 2]


# Motion models, smallest first: each is the first n of these parameters of a small correction
# [[1+a, -b+c, tx], [b+c2, 1+a+d, ty], [p, q, 1]] applied in the VIS frame (centred, unit-scale coordinates).
MOTION_MODELS = {"translation": 2, "similarity": 4, "affine": 6, "homography": 8}


def _correction(params: np.ndarray) -> np.ndarray:
    tx, ty, a, b, c, d, p, q = np.concatenate([params, np.zeros(8 - len(params))])
    return np.array([[1 + a, -b + c, tx], [b + c, 1 + a + d, ty], [p, q, 1.0]])


def _correction_jacobian(x: np.ndarray, y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """d(corrected x)/d(params), d(corrected y)/d(params) at zero, per point: two (N, n) arrays."""
    zero, one = np.zeros_like(x), np.ones_like(x)
    jx = np.stack([one, zero, x, -y, y, zero, -x * x, -x * y], axis=1)
    jy = np.stack([zero, one, y, x, x, y, -x * y, -y * y], axis=1)
    return jx[:, :n], jy[:, :n]


def _level_transform(level: int) -> np.ndarray:
    """Full-resolution pixel coordinates -> those of pyramid level `level` (cv2.pyrDown halves about pixel centres)."""
    s = 0.5 ** level
    return np.array([[s, 0, 0.5 * s - 0.5], [0, s, 0.5 * s - 0.5], [0, 0, 1.0]])


def _warp_valid(homography: np.ndarray, ir_shape: tuple[int, int], out_size: tuple[int, int], margin: int) -> np.ndarray:
    ones = np.full(ir_shape, 255, np.uint8)
    valid = cv2.warpPerspective(ones, homography, out_size, flags=cv2.INTER_NEAREST, borderValue=0)
    if margin > 0:
        valid = cv2.erode(valid, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))
    return valid > 0


def alignment_scores(homographies: Sequence[np.ndarray], ir_gray: np.ndarray, vis_gray: np.ndarray,
                     blur_sigma: float = 1.0) -> list[float]:
    """The cross-modal alignment score of each IR->VIS homography, all on the same pixels (the VIS pixels every one
    of them covers, less saturated ones): the normalised correlation of the two orientation fields, in [-1, 1].

    0 means unrelated edges, 1 the same edges running the same way everywhere; real IR/VIS pairs that are aligned
    score 0.2-0.5, and the score falls as they slide apart (what `--refine` must raise)."""
    ir_gray = np.asarray(ir_gray, dtype=np.float32)
    vis_gray = np.asarray(vis_gray, dtype=np.float32)
    height, width = vis_gray.shape
    vis_features = cross_modal_features(vis_gray, gradient_noise_floor(vis_gray, blur_sigma), blur_sigma)
    ir_floor = gradient_noise_floor(ir_gray, blur_sigma)
    common = ~vis_features.saturated
    warped_fields = []
    for homography in homographies:
        warped = cv2.warpPerspective(ir_gray, homography, (width, height), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REPLICATE)
        features = cross_modal_features(warped, ir_floor, blur_sigma)
        common &= ~features.saturated & _warp_valid(homography, ir_gray.shape, (width, height), 3)
        warped_fields.append(features.field)
    scores = []
    vis_field = vis_features.field[common]
    for field in warped_fields:
        ir_field = field[common]
        denominator = float(np.sqrt((vis_field ** 2).sum() * (ir_field ** 2).sum()))
        scores.append(float((vis_field * ir_field).sum() / denominator) if denominator > 0 else 0.0)
    return scores


IMAGE_WEIGHT_IN_POINTS = 16.0
# Where the images lead, the perspective terms of the mapping (centred coordinates of unit half-diagonal) are held
# near zero with this spread: a rig's two cameras side by side see each other's view through a nearly affine mapping,
# while a real scene's depth (parallax) pulls an image-led fit's perspective far off (see refine_homography).
PERSPECTIVE_SIGMA = 0.002


def _align_level(homography: np.ndarray, ir: np.ndarray, vis_features: CrossModalFeatures, ir_floor: float,
                 model: str, prior: Optional[tuple[np.ndarray, np.ndarray, float]], iterations: int,
                 blur_sigma: float, max_pixels: int = 40000,
                 image_weight_in_points: Optional[float] = IMAGE_WEIGHT_IN_POINTS,
                 perspective_sigma: Optional[float] = None) -> np.ndarray:
    """Gauss-Newton on one pyramid level: the correction of `homography` (IR->VIS, this level's pixels) that best
    lays the warped IR orientation field onto the VIS one, with robust (Huber) weights for edges only one band
    sees, and, when prior = (ir points, vis points, weight) is given, a pull towards the user's points (the image
    then counts for at most `image_weight_in_points` clicked pairs; None: its own weight, uncapped)."""
    height, width = vis_features.field.shape[:2]
    n = MOTION_MODELS[model]
    norm = _frame_normaliser(width, height)
    norm_inv = np.linalg.inv(norm)
    scale = 1.0 / norm[0, 0]                                          # pixels per normalised unit
    vis_field = vis_features.field
    rng = np.random.default_rng(0)
    for _ in range(iterations):
        warped = cv2.warpPerspective(ir, homography, (width, height), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REPLICATE)
        features = cross_modal_features(warped, ir_floor, blur_sigma)
        usable = ~features.saturated & ~vis_features.saturated & _warp_valid(homography, ir.shape, (width, height), 3)
        energy = (features.field ** 2).sum(axis=2) + (vis_field ** 2).sum(axis=2)
        usable &= energy > 0.05
        ys, xs = np.nonzero(usable)
        if len(xs) < 50:
            break
        if len(xs) > max_pixels:
            pick = rng.choice(len(xs), max_pixels, replace=False)
            ys, xs = ys[pick], xs[pick]
        grad_x = cv2.Sobel(features.field, cv2.CV_32F, 1, 0, ksize=3, scale=1 / 8)[ys, xs]   # (N, 2)
        grad_y = cv2.Sobel(features.field, cv2.CV_32F, 0, 1, ksize=3, scale=1 / 8)[ys, xs]
        residual = features.field[ys, xs] - vis_field[ys, xs]                               # (N, 2)
        xn = xs * norm[0, 0] + norm[0, 2]
        yn = ys * norm[1, 1] + norm[1, 2]
        jx, jy = _correction_jacobian(xn, yn, n)
        jx, jy = jx * scale, jy * scale
        steepest = grad_x[:, :, None] * jx[:, None, :] + grad_y[:, :, None] * jy[:, None, :]   # (N, 2, n)
        size = np.sqrt((residual ** 2).sum(axis=1))
        spread = 1.4826 * float(np.median(size)) + 1e-6
        weight = np.minimum(1.0, 1.345 * spread / np.maximum(size, 1e-9))                     # Huber
        steepest = steepest.reshape(-1, n)
        w = np.repeat(weight, 2)
        hessian = (steepest * w[:, None]).T @ steepest
        gradient = (steepest * w[:, None]).T @ residual.reshape(-1)
        # Neighbouring pixels of a smoothed field are not independent evidence: count about one per blur area.
        evidence = 1.0 / (spread ** 2 * (2 * blur_sigma + 1) ** 2)
        hessian, gradient = hessian * evidence, gradient * evidence
        if prior is not None:
            ir_points, vis_points, prior_weight = prior
            mapped = cv2.perspectiveTransform(ir_points.reshape(-1, 1, 2), homography).reshape(-1, 2)
            px, py = _correction_jacobian(mapped[:, 0] * norm[0, 0] + norm[0, 2],
                                          mapped[:, 1] * norm[1, 1] + norm[1, 2], n)
            point_jac = np.concatenate([px, py]) * scale
            offset = np.concatenate([mapped[:, 0] - vis_points[:, 0], mapped[:, 1] - vis_points[:, 1]])
            point_hessian = prior_weight * point_jac.T @ point_jac
            # The pixels are not independent witnesses: a scene seen from two places disagrees with itself by
            # parallax, and a rig's two images by more than noise. The whole image counts as IMAGE_WEIGHT_IN_POINTS
            # clicked pairs at most, so it can correct the clicks but not overrule them.
            cap = np.inf if image_weight_in_points is None else (
                image_weight_in_points / max(len(ir_points), 1) * np.trace(point_hessian)
                / max(np.trace(hessian), 1e-12))
            if cap < 1:
                hessian, gradient = hessian * cap, gradient * cap
            hessian = hessian + point_hessian
            gradient = gradient - prior_weight * point_jac.T @ offset
        if perspective_sigma is not None and n == 8:
            weight = 1.0 / perspective_sigma ** 2
            hessian[6:, 6:] += weight * np.eye(2)
            gradient[6:] -= weight * centred_perspective(homography, ir.shape, (height, width))
        damping = 1e-6 * np.trace(hessian) / n + 1e-12
        try:
            step = -np.linalg.solve(hessian + damping * np.eye(n), gradient)
        except np.linalg.LinAlgError:
            break
        corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float64)
        correction = norm_inv @ _correction(step) @ norm
        moved = cv2.perspectiveTransform(corners.reshape(-1, 1, 2), correction).reshape(-1, 2) - corners
        largest = float(np.abs(moved).max())
        if not np.isfinite(largest):
            break
        if largest > 1.0:                                            # a pixel of this level per step at most
            correction = norm_inv @ _correction(step / largest) @ norm
        homography = np.linalg.inv(correction) @ homography
        homography /= homography[2, 2]
        if largest < 0.01:
            break
    return homography


def _pyramid(gray: np.ndarray, levels: int) -> list[np.ndarray]:
    images = [np.asarray(gray, dtype=np.float32)]
    for _ in range(levels - 1):
        images.append(cv2.pyrDown(images[-1]))
    return images


def pyramid_levels(shape: tuple[int, int], coarsest_side: int = 80) -> int:
    """How many levels take the smaller side of `shape` down to about `coarsest_side` pixels (1 to 4)."""
    return int(np.clip(np.floor(np.log2(min(shape) / coarsest_side)) + 1, 1, 4))


def align_coarse_to_fine(homography: np.ndarray, ir_gray: np.ndarray, vis_gray: np.ndarray,
                         model: str = "homography", points: Optional[tuple[np.ndarray, np.ndarray]] = None,
                         click_sigma_px: float = 3.0, levels: Optional[int] = None, blur_sigma: float = 1.0,
                         iterations: int = 30,
                         image_weight_in_points: Optional[float] = IMAGE_WEIGHT_IN_POINTS,
                         perspective_sigma: Optional[float] = None) -> np.ndarray:
    """The IR->VIS homography that best aligns the two orientation fields, from `homography`, coarse to fine.

    Coarse levels fit a translation, then a similarity, then an affine correction (the few parameters a blurred
    image pins down) before the finest levels free up `model`. With points = (ir, vis), the user's pairs stay in
    the fit as evidence of `click_sigma_px` accuracy, and the whole image counts for at most
    `image_weight_in_points` of them (None: the image's own weight, uncapped).
    """
    ir_gray = np.asarray(ir_gray, dtype=np.float32)
    vis_gray = np.asarray(vis_gray, dtype=np.float32)
    levels = levels or min(pyramid_levels(ir_gray.shape), pyramid_levels(vis_gray.shape))
    ir_pyramid, vis_pyramid = _pyramid(ir_gray, levels), _pyramid(vis_gray, levels)
    order = list(MOTION_MODELS)
    top = order.index(model)
    for level in reversed(range(levels)):
        to_level = _level_transform(level)
        level_h = to_level @ homography @ np.linalg.inv(to_level)
        ir_floor = gradient_noise_floor(ir_pyramid[level], blur_sigma)
        vis_features = cross_modal_features(vis_pyramid[level], gradient_noise_floor(vis_pyramid[level], blur_sigma),
                                            blur_sigma)
        prior = None
        if points is not None:
            ir_points = cv2.perspectiveTransform(points[0].reshape(-1, 1, 2), to_level).reshape(-1, 2)
            vis_points = cv2.perspectiveTransform(points[1].reshape(-1, 1, 2), to_level).reshape(-1, 2)
            prior = (ir_points, vis_points, 1.0 / (click_sigma_px * 0.5 ** level) ** 2)
        # A blurred level pins down few parameters: the coarsest fits a similarity then an affine correction, the
        # middle ones an affine one, and only the finest frees up `model`.
        schedule = [model] if level == 0 else [order[min(top, order.index("affine"))]]
        if level == levels - 1 and level > 0:
            schedule = [order[min(top, order.index("similarity"))]] + schedule
        for step_model in schedule:
            level_h = _align_level(level_h, ir_pyramid[level], vis_features, ir_floor, step_model, prior,
                                   iterations, blur_sigma, image_weight_in_points=image_weight_in_points,
                                   perspective_sigma=perspective_sigma)
        homography = np.linalg.inv(to_level) @ level_h @ to_level
        homography /= homography[2, 2]
    return homography


@dataclass
class Refinement:
    """What `refine_homography` decided: the mapping to use, and the evidence for it (all of it goes in the JSON)."""
    homography: np.ndarray            # the one to use: the refined mapping, or the points' one when a guard refused
    candidate: np.ndarray             # what the image alignment arrived at
    kept: str                         # "refined" or "points"
    reason: str                       # one line: why
    score_points: float               # cross-modal alignment score of the points' mapping
    score_refined: float              # ... and of the candidate, on the same pixels
    point_shift_px: float             # largest distance from the candidate's mapping to a user's VIS point
    model: str
    fit: str = "images+points"        # "images": the image-led mapping explained every click; "images+points": not
    image_led_shift_px: float = float("nan")   # largest click residual of the image-led mapping

    def record(self) -> dict:
        return {"kept": self.kept, "reason": self.reason, "model": self.model,
                "score_points": round(self.score_points, 5), "score_refined": round(self.score_refined, 5),
                "refined_point_shift_px": round(self.point_shift_px, 4), "fit": self.fit,
                "image_led_point_shift_px": (round(self.image_led_shift_px, 4)
                                               if np.isfinite(self.image_led_shift_px) else None),
                "candidate_homography": np.asarray(self.candidate, dtype=float).tolist()}


# A scene where fewer pixels than this carry an edge above the noise (fog, a blank wall, a lens cap) gives the
# alignment nothing to hold on to.
MIN_TEXTURED_SHARE = 0.03
# The refined mapping must beat the points' mapping by more than this to count as better.
MIN_SCORE_GAIN = 1e-3


def refine_homography(homography: np.ndarray, ir_gray: np.ndarray, vis_gray: np.ndarray, ir_points, vis_points,
                      max_shift_px: float = 5.0, click_sigma_px: float = 3.0,
                      model: str = "homography") -> Refinement:
    """Refine a point-based IR->VIS homography on the images, and keep the refinement only when it is safe.

    ir_gray, vis_gray: float (H, W) in [0, 1], the frames the points were picked on. The candidate is the image-led
    alignment (`align_coarse_to_fine` from `homography`, the image at its own weight) when it explains every click
    to within max_shift_px, and otherwise the alignment in which the image counts for at most
    IMAGE_WEIGHT_IN_POINTS clicks (it can then only move the mapping as far as the points' accuracy allows). It
    replaces `homography` only when (1) it maps every user IR point within max_shift_px of its VIS partner (for the
    pairs `homography` itself fits that well) and (2) it raises the cross-modal alignment score. Otherwise the
    points' homography is kept and `reason` says which guard refused.
    """
    ir_points = np.asarray(ir_points, dtype=np.float64).reshape(-1, 2)
    vis_points = np.asarray(vis_points, dtype=np.float64).reshape(-1, 2)
    texture = min(cross_modal_features(g, gradient_noise_floor(g)).textured for g in (ir_gray, vis_gray))
    if texture < MIN_TEXTURED_SHARE:
        score = alignment_scores([homography], ir_gray, vis_gray)[0]
        reason = (f"kept the points' homography: the scene is too flat to refine on (edges on {100 * texture:.1f}% "
                  f"of the pixels, {100 * MIN_TEXTURED_SHARE:.0f}% needed)")
        return Refinement(homography, homography, "points", reason, score, score, 0.0, model)
    inliers = transfer_error(homography, ir_points, vis_points) <= max_shift_px
    # First the images at their own weight (thousands of pixels; the clicks stay in the fit only to steady the terms
    # the scene pins down least). The clicks then test that answer: when it explains every click to within
    # --max-shift (what clicks about 3 px off do under the right mapping), the images are believed. When it leaves a
    # click farther off (the rig's two views disagree with any one homography: parallax, a pair whose bands are not
    # registered to each other, a scene that pins little down), the images may only correct the clicks, counting
    # for at most IMAGE_WEIGHT_IN_POINTS of them.
    image_led = align_coarse_to_fine(homography, ir_gray, vis_gray, model, (ir_points[inliers], vis_points[inliers]),
                                     click_sigma_px, image_weight_in_points=None, perspective_sigma=PERSPECTIVE_SIGMA)
    image_shifts = transfer_error(image_led, ir_points[inliers], vis_points[inliers])
    image_shift = float(image_shifts.max()) if len(image_shifts) and np.all(np.isfinite(image_led)) else np.inf
    if image_shift <= max_shift_px:
        candidate, fit = image_led, "images"
    else:
        candidate = align_coarse_to_fine(homography, ir_gray, vis_gray, model,
                                         (ir_points[inliers], vis_points[inliers]), click_sigma_px)
        fit = "images+points"
    score_points, score_refined = alignment_scores([homography, candidate], ir_gray, vis_gray)
    shifts = transfer_error(candidate, ir_points[inliers], vis_points[inliers])
    shift = float(shifts.max()) if len(shifts) else 0.0
    if not np.all(np.isfinite(candidate)) or shift > max_shift_px:
        worst = int(np.flatnonzero(inliers)[np.argmax(shifts)]) if len(shifts) else 0
        reason = (f"kept the points' homography: the refined mapping puts IR point {worst + 1} {shift:.1f} px from "
                  f"its VIS point (more than --max-shift {max_shift_px:g})")
        return Refinement(homography, candidate, "points", reason, score_points, score_refined, shift, model, fit,
                          image_shift)
    if score_refined <= score_points + MIN_SCORE_GAIN:
        reason = (f"kept the points' homography: the refinement did not raise the cross-modal alignment score "
                  f"({score_points:.4f} -> {score_refined:.4f})")
        return Refinement(homography, candidate, "points", reason, score_points, score_refined, shift, model, fit,
                          image_shift)
    how = ("led by the images, which explain every click" if fit == "images" else
           f"the images correct the clicks (led by the images, a click would be {image_shift:.1f} px off)")
    reason = (f"refined: alignment score {score_points:.4f} -> {score_refined:.4f}, user points within "
              f"{shift:.1f} px (--max-shift {max_shift_px:g}); {how}")
    return Refinement(candidate, candidate, "refined", reason, score_points, score_refined, shift, model, fit,
                      image_shift)


def _translation_search(start: np.ndarray, ir: np.ndarray, vis: np.ndarray, radius: int,
                        blur_sigma: float, rival_px: float = 4.0) -> tuple[np.ndarray, float]:
    """Exhaustive search of the shift (within `radius` px of this level) that best lays the IR orientation field,
    warped by `start`, on the VIS one. Returns (start shifted by it, how distinct the best shift is: the best
    correlation over the best one at least rival_px away, 1 meaning no distinct answer)."""
    height, width = vis.shape
    warped = cv2.warpPerspective(ir, start, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    ir_field = cross_modal_features(warped, gradient_noise_floor(ir, blur_sigma), blur_sigma).field
    ir_field[~_warp_valid(start, ir.shape, (width, height), 2)] = 0
    vis_field = cross_modal_features(vis, gradient_noise_floor(vis, blur_sigma), blur_sigma).field
    inner = vis_field[radius:height - radius, radius:width - radius]
    scores = np.zeros((2 * radius + 1, 2 * radius + 1))
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            window = ir_field[dy:dy + inner.shape[0], dx:dx + inner.shape[1]]
            scores[dy, dx] = float((window * inner).sum())
    best = np.unravel_index(int(np.argmax(scores)), scores.shape)
    yy, xx = np.mgrid[:scores.shape[0], :scores.shape[1]]
    away = np.hypot(yy - best[0], xx - best[1]) >= rival_px
    peak, rival = scores[best], scores[away].max() if away.any() else 0.0
    distinct = float(peak / rival) if rival > 0 and peak > 0 else (float("inf") if peak > 0 else 1.0)
    # IR content at (x + d) of the warped field sits at x in VIS: move the mapping by -d.
    shift = np.array([[1, 0, radius - best[1]], [0, 1, radius - best[0]], [0, 0, 1.0]])
    return shift @ start, distinct


# --auto's search must find one best shift standing this much above any other 4 coarse px (16 px) away, else it
# refuses. On LLVIP and RoadScene training pairs the real pairs gave 1.11-1.99 and an IR frame laid on the VIS frame
# of another scene 1.02-1.47: it stops some wrong guesses, not all (the score checks come after it).
MIN_PEAK_DISTINCTNESS = 1.10
# ... and the alignment it arrives at must score at least this (see alignment_scores). Laid on the VIS frame of another
# scene (RoadScene training pairs, six mismatched pairs), --auto's alignment still reached 0.061-0.138; on the real
# training pairs it ended at 0.247-0.464. A score under 0.15 is what a wrong scene can reach: no evidence.
MIN_AUTO_SCORE = 0.15


def auto_homography(ir_gray: np.ndarray, vis_gray: np.ndarray, scale: Optional[float] = None,
                    search_px: int = 48, model: str = "affine") -> Refinement:
    """IR->VIS homography with no points: the frames' centres laid on each other (IR scaled by `scale`, by default
    the ratio of the frame widths), a shift search at the coarsest level, then the coarse-to-fine alignment.

    Refuses (FusionError) rather than guess: on a flat scene, when no shift stands out, or when the alignment does
    not raise the cross-modal score above where it started. The model defaults to affine: without points nothing
    checks perspective terms."""
    ir_gray = np.asarray(ir_gray, dtype=np.float32)
    vis_gray = np.asarray(vis_gray, dtype=np.float32)
    texture = min(cross_modal_features(g, gradient_noise_floor(g)).textured for g in (ir_gray, vis_gray))
    if texture < MIN_TEXTURED_SHARE:
        raise FusionError(f"--auto refuses: the scene is too flat to align (edges on {100 * texture:.1f}% of the "
                          f"pixels, {100 * MIN_TEXTURED_SHARE:.0f}% needed); point the cameras at a scene with "
                          f"structure, or give point pairs with --points/--pick")
    (ir_h, ir_w), (vis_h, vis_w) = ir_gray.shape, vis_gray.shape
    scale = scale or vis_w / ir_w
    start = np.array([[scale, 0, 0.5 * (vis_w - 1) - scale * 0.5 * (ir_w - 1)],
                      [0, scale, 0.5 * (vis_h - 1) - scale * 0.5 * (ir_h - 1)], [0, 0, 1.0]])
    levels = min(pyramid_levels(ir_gray.shape), pyramid_levels(vis_gray.shape))
    top = _level_transform(levels - 1)
    ir_small, vis_small = _pyramid(ir_gray, levels)[-1], _pyramid(vis_gray, levels)[-1]
    radius = max(2, int(np.ceil(search_px * 0.5 ** (levels - 1))))
    shifted, distinct = _translation_search(top @ start @ np.linalg.inv(top), ir_small, vis_small, radius, 1.0)
    if distinct < MIN_PEAK_DISTINCTNESS:
        raise FusionError(f"--auto refuses: no shift of the IR view stands out (best {distinct:.3f}x the next); "
                          f"give point pairs with --points/--pick")
    candidate = align_coarse_to_fine(np.linalg.inv(top) @ shifted @ top, ir_gray, vis_gray, model)
    score_start, score_found = alignment_scores([start, candidate], ir_gray, vis_gray)
    if not np.all(np.isfinite(candidate)) or score_found <= score_start + MIN_SCORE_GAIN:
        raise FusionError(f"--auto refuses: the alignment it found scores {score_found:.3f} against {score_start:.3f} "
                          f"for the centred start, no better; give point pairs with --points/--pick")
    if score_found <= MIN_AUTO_SCORE:
        raise FusionError(f"--auto refuses: the alignment it found scores {score_found:.3f}, no more than the view of "
                          f"another scene can reach ({MIN_AUTO_SCORE:g}); give point pairs with --points/--pick")
    reason = f"auto: alignment score {score_start:.4f} (centred) -> {score_found:.4f}, shift peak {distinct:.2f}x"
    return Refinement(candidate, candidate, "auto", reason, score_start, score_found, 0.0, model)


# ------------------------------------------------------------------------------------------- cameras of two shapes
