"""`fusion calibrate`: the IR-to-VIS homography that `fusion run --homography` applies.

    fusion calibrate --points pairs.txt --ir ir.png --vis vis.png --out h.json             # from a point file
    fusion calibrate --points pairs.txt --ir ir.png --vis vis.png --refine --out h.json    # + image alignment
    fusion calibrate --pick --ir cam0 --vis cam1 --out h.json                              # click pairs in a window
    fusion calibrate --auto --ir cam0 --vis cam1 --out h.json                              # no clicks

A point file lists one pair per line, `ir_x ir_y vis_x vis_y` (pixels; commas or spaces), or is JSON
{"ir": [[x, y], ...], "vis": [[x, y], ...]}. Use 4 or more pairs spread over the view, on things far from the cameras
(the homography is exact for a distant scene). --ir/--vis may be images or any `fusion run` source (one frame is
grabbed); they give the frame sizes, the images --refine aligns, and a --preview to check the result by eye.

--refine aligns the two images coarse to fine on what IR and VIS share (where edges are and which way they run),
starting from the points' homography. The images lead when the mapping they find explains every click to within
--max-shift; otherwise they may only correct the clicks. The refined mapping is kept only when it stays within
--max-shift px of every clicked point and raises the cross-modal alignment score; otherwise the points' homography is
saved and one line says why. --auto does the same from the frames' centres with no points, and refuses on a scene
too flat to align or when what it finds scores no better than the view of another scene.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from runtime.errors import FusionError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1]
    parser.add_argument("--points", metavar="FILE", help="point pairs (ir_x ir_y vis_x vis_y per line, or JSON)")
    parser.add_argument("--pick", action="store_true", help="click point pairs in a window (needs a display)")
    parser.add_argument("--ir", help="IR image or source (frame size, --refine/--auto, preview)")
    parser.add_argument("--vis", help="VIS image or source")
    parser.add_argument("--ir-size", metavar="WxH", help="IR frame size when no --ir image is given")
    parser.add_argument("--vis-size", metavar="WxH", help="VIS frame size when no --vis image is given")
    parser.add_argument("--refine", action="store_true",
                        help="refine the points' homography on the images (needs --ir and --vis); kept only if safe")
    parser.add_argument("--max-shift", type=float, default=5.0, metavar="PX",
                        help="--refine may move the mapping of a clicked point at most this far (default 5)")
    parser.add_argument("--auto", action="store_true",
                        help="no points: align the images from their centres (refuses on a flat scene)")
    parser.add_argument("--scale", type=float, metavar="S",
                        help="with --auto: IR-to-VIS scale to start from (default: the ratio of the frame widths)")
    parser.add_argument("--ransac", type=float, default=0.0, metavar="PX",
                        help="with more than 4 pairs, ignore pairs farther than PX pixels from the fit")
    parser.add_argument("--out", "-o", required=True, metavar="FILE", help="homography JSON to write")
    parser.add_argument("--save-points", metavar="FILE", help="with --pick: also save the clicked pairs (JSON)")
    parser.add_argument("--preview", metavar="PNG", help="write VIS with the warped IR edges drawn on it")
    parser.set_defaults(func=main)


def _parse_wh(text: Optional[str], flag: str) -> Optional[tuple[int, int]]:
    if not text:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        return w, h
    except ValueError:
        raise FusionError(f"{flag} must look like WIDTHxHEIGHT (for example 640x512), got '{text}'") from None


def grab_image(uri: str, role: str) -> np.ndarray:
    """An image file as stored, or one frame from any `fusion run` source (uint8/uint16, RGB or gray)."""
    from runtime.imageio import IMAGE_EXTENSIONS, read_raw
    path = Path(uri)
    if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
        img = read_raw(path)
    else:
        from runtime.sources import SourceLost, open_source
        source = open_source(uri, role)
        try:
            frame = source.read()
        except SourceLost as exc:
            raise FusionError(f"could not grab a frame from {uri}: {exc}") from None
        finally:
            source.close()
        if frame is None:
            raise FusionError(f"{uri} delivered no frame to calibrate on")
        img = frame.image
    if role == "ir" and img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    return img


def gray_float(img: np.ndarray, role: str) -> np.ndarray:
    from runtime.color import luminance
    from runtime.imageio import ir_to_float, vis_to_float
    return ir_to_float(img) if role == "ir" else luminance(vis_to_float(img))


def pick_points(ir: np.ndarray, vis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Click a point in the IR view, then its partner in the VIS view, repeatedly; Enter finishes, u undoes."""
    from runtime.sinks import gui_available
    if not gui_available():
        raise FusionError("--pick needs OpenCV with window support (this one is headless); write a point file "
                          "instead: one 'ir_x ir_y vis_x vis_y' line per pair")
    from runtime.imageio import to_uint8
    ir_view = cv2.cvtColor(to_uint8(gray_float(ir, "ir")), cv2.COLOR_GRAY2BGR)
    vis_view = cv2.cvtColor(to_uint8(np.clip(gray_float(vis, "vis"), 0, 1)), cv2.COLOR_GRAY2BGR) \
        if vis.ndim == 2 else cv2.cvtColor(vis if vis.dtype == np.uint8 else to_uint8(vis / 65535.0),
                                           cv2.COLOR_RGB2BGR)
    scale = ir_view.shape[0] / vis_view.shape[0]
    vis_small = cv2.resize(vis_view, (int(round(vis_view.shape[1] * scale)), ir_view.shape[0]))
    points: dict[str, list] = {"ir": [], "vis": []}
    title = "fusion calibrate: click IR (left) then VIS (right); Enter = done, u = undo, Esc = cancel"

    def on_click(event, x, y, _flags, _param):
        if event != cv2.EVENT_LBUTTONDOWN:
            return
        want = "ir" if len(points["ir"]) == len(points["vis"]) else "vis"
        if want == "ir" and x < ir_view.shape[1]:
            points["ir"].append([float(x), float(y)])
        elif want == "vis" and x >= ir_view.shape[1]:
            points["vis"].append([(x - ir_view.shape[1]) / scale, y / scale])

    cv2.namedWindow(title, cv2.WINDOW_NORMAL)
    cv2.setMouseCallback(title, on_click)
    try:
        while True:
            canvas = np.hstack([ir_view, vis_small])
            for i, (x, y) in enumerate(points["ir"]):
                cv2.circle(canvas, (int(x), int(y)), 4, (0, 255, 255), -1)
                cv2.putText(canvas, str(i + 1), (int(x) + 5, int(y) - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                            (0, 255, 255), 1)
            for i, (x, y) in enumerate(points["vis"]):
                px, py = int(x * scale) + ir_view.shape[1], int(y * scale)
                cv2.circle(canvas, (px, py), 4, (0, 255, 0), -1)
                cv2.putText(canvas, str(i + 1), (px + 5, py - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 0), 1)
            cv2.imshow(title, canvas)
            key = cv2.waitKey(30) & 0xFF
            if key in (13, 10):
                break
            if key == 27:
                raise FusionError("calibration cancelled")
            if key == ord("u"):
                side = "vis" if len(points["vis"]) == len(points["ir"]) else "ir"
                if points[side]:
                    points[side].pop()
    finally:
        cv2.destroyWindow(title)
    n = min(len(points["ir"]), len(points["vis"]))
    return np.asarray(points["ir"][:n]), np.asarray(points["vis"][:n])


def edge_preview(homography: np.ndarray, ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
    """VIS (RGB uint8) with the edges of the warped IR drawn in magenta: aligned edges sit on VIS edges."""
    from runtime.imageio import to_uint8
    from runtime.alignment import edge_map
    ir_gray = gray_float(ir, "ir")
    warped = cv2.warpPerspective(ir_gray, homography, (vis.shape[1], vis.shape[0]))
    edges = edge_map(warped, blur_sigma=1.0) > 0.25
    base = vis if vis.ndim == 3 else np.repeat(vis[:, :, None], 3, axis=2)
    base = to_uint8(base.astype(np.float32) / (65535.0 if base.dtype == np.uint16 else 255.0))
    out = (base * 0.7).astype(np.uint8)
    out[edges] = (255, 0, 255)
    return out


def main(args: argparse.Namespace) -> int:
    from runtime.alignment import auto_homography, refine_homography
    from runtime.registration import homography_from_points, read_point_pairs, save_homography, transfer_error
    from runtime.imageio import write_image, write_json
    if args.max_shift <= 0:
        raise FusionError(f"--max-shift must be positive, got {args.max_shift}")
    if args.auto and (args.points or args.pick or args.refine):
        raise FusionError("--auto finds the homography without points; drop --points/--pick/--refine, or drop --auto")
    ir_img = grab_image(args.ir, "ir") if args.ir else None
    vis_img = grab_image(args.vis, "vis") if args.vis else None
    ir_size = (ir_img.shape[1], ir_img.shape[0]) if ir_img is not None else _parse_wh(args.ir_size, "--ir-size")
    vis_size = (vis_img.shape[1], vis_img.shape[0]) if vis_img is not None else _parse_wh(args.vis_size, "--vis-size")
    if args.auto:
        if ir_img is None or vis_img is None:
            raise FusionError("--auto needs --ir and --vis images (or sources) to align")
        found = auto_homography(gray_float(ir_img, "ir"), gray_float(vis_img, "vis"), scale=args.scale)
        homography = found.homography
        record = {"points": None, "refined": "auto", "refinement": found.record()}
        print(found.reason)
    else:
        if args.pick:
            if ir_img is None or vis_img is None:
                raise FusionError("--pick needs --ir and --vis (images or sources to click on)")
            ir_points, vis_points = pick_points(ir_img, vis_img)
            if args.save_points:
                write_json(args.save_points, {"ir": ir_points.tolist(), "vis": vis_points.tolist()})
        elif args.points:
            ir_points, vis_points = read_point_pairs(args.points)
        else:
            raise FusionError("give --points FILE (ir_x ir_y vis_x vis_y per line), --pick, or --auto")
        if ir_size is None or vis_size is None:
            raise FusionError("the frame sizes are needed: give --ir and --vis images, or --ir-size and --vis-size")
        homography = homography_from_points(ir_points, vis_points, ransac_px=args.ransac)
        errors = transfer_error(homography, ir_points, vis_points)
        record = {"points": {"ir": ir_points.tolist(), "vis": vis_points.tolist()},
                  "point_rmse_px": round(float(np.sqrt(np.mean(errors ** 2))), 4),
                  "point_max_error_px": round(float(errors.max()), 4), "refined": None}
        print(f"homography from {len(ir_points)} point pairs: RMS transfer error {record['point_rmse_px']:.2f} px "
              f"(max {record['point_max_error_px']:.2f} px)")
        if args.refine:
            if ir_img is None or vis_img is None:
                raise FusionError("--refine needs --ir and --vis images to align")
            result = refine_homography(homography, gray_float(ir_img, "ir"), gray_float(vis_img, "vis"),
                                       ir_points, vis_points, max_shift_px=args.max_shift)
            homography = result.homography
            record["refined"] = "cross-modal" if result.kept == "refined" else None
            record["refinement"] = {"max_shift_px": args.max_shift, **result.record()}
            print(result.reason)
    save_homography(args.out, homography, ir_size, vis_size, **record)
    print(f"saved {args.out}  (use: fusion run --homography {args.out} ...)")
    if args.preview:
        if ir_img is None or vis_img is None:
            raise FusionError("--preview needs --ir and --vis images")
        write_image(args.preview, edge_preview(homography, ir_img, vis_img))
        print(f"preview: {args.preview} (magenta: IR edges warped onto VIS)", file=sys.stderr)
    return 0
