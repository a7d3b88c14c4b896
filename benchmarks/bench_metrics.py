"""How much faster distill.metrics is than the straightforward scipy formulation, for the same numbers.

The baseline below is the formulation the field's evaluation script uses (2-D `scipy.signal.convolve2d` for VIF's
Gaussian windows and Qabf's Sobel kernels, scikit-image's SSIM formulation with scipy.ndimage, a contingency table
over the distinct values for MI, float32 images), written out here so the comparison needs no third-party checkout.
Both run single-threaded (OpenCV, OpenMP and BLAS pinned to one thread) on real RoadScene test pairs fused by
averaging; the script checks that every metric agrees to 1e-4 relative and prints per-pair medians (CPU and wall
time, the two implementations alternating) and the speed ratio.

    .venv/bin/python benchmarks/bench_metrics.py [--pairs N] [--repeats R] [--data DIR]

Exit status 1 when the numbers disagree or the speed-up is below --min-ratio (default 10).
"""
from __future__ import annotations

import os

if __name__ == "__main__":  # one thread everywhere, set before numpy/scipy load their thread pools
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[_var] = "1"

import argparse  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from distill.metrics import METRIC_NAMES, fusion_metrics, read_gray_for_metrics  # noqa: E402


# ------------------------------------------------------------------------------------ straightforward baseline
def _baseline_entropy(f):
    counts = np.bincount(np.uint8(np.round(f)).ravel())
    p = counts / counts.sum()
    return -np.sum(p * np.log2(p + (p == 0)))


def _baseline_average_gradient(f):
    gx = np.zeros_like(f)
    gy = np.zeros_like(f)
    gx[:, 0], gx[:, -1] = f[:, 1] - f[:, 0], f[:, -1] - f[:, -2]
    gx[:, 1:-1] = (f[:, 2:] - f[:, :-2]) / 2
    gy[0, :], gy[-1, :] = f[1, :] - f[0, :], f[-1, :] - f[-2, :]
    gy[1:-1, :] = (f[2:, :] - f[:-2, :]) / 2
    return np.mean(np.sqrt((gx ** 2 + gy ** 2) / 2))


def _baseline_mutual_information(a, b):
    """sklearn.metrics.mutual_info_score: contingency table of the distinct values, natural log."""
    _, ia = np.unique(a.ravel(), return_inverse=True)
    _, ib = np.unique(b.ravel(), return_inverse=True)
    table = np.zeros((ia.max() + 1, ib.max() + 1))
    np.add.at(table, (ia.ravel(), ib.ravel()), 1)
    n = table.sum()
    pi, pj = table.sum(axis=1), table.sum(axis=0)
    nz = table > 0
    outer = np.outer(pi, pj)[nz]
    joint = table[nz]
    return max(float(np.sum(joint / n * (np.log(joint) - np.log(n) - np.log(outer) + 2 * np.log(n)))), 0.0)


def _baseline_corr(a, b):
    return np.sum((a - a.mean()) * (b - b.mean())) / np.sqrt(np.sum((a - a.mean()) ** 2) * np.sum((b - b.mean()) ** 2))


def _baseline_vif_one(ref, dist):
    from scipy.signal import convolve2d

    sigma_nsq, eps = 2.0, 1e-10
    num = den = 0.0
    for scale in range(1, 5):
        n = 2 ** (5 - scale) + 1
        half = (n - 1) / 2.0
        y, x = np.ogrid[-half:half + 1, -half:half + 1]
        win = np.exp(-(x * x + y * y) / (2.0 * (n / 5.0) ** 2))
        win[win < np.finfo(win.dtype).eps * win.max()] = 0
        win = np.rot90(win / win.sum(), 2)
        if scale > 1:
            ref = convolve2d(ref, win, mode="valid")[::2, ::2]
            dist = convolve2d(dist, win, mode="valid")[::2, ::2]
        mu1 = convolve2d(ref, win, mode="valid")
        mu2 = convolve2d(dist, win, mode="valid")
        s1 = convolve2d(ref * ref, win, mode="valid") - mu1 * mu1
        s2 = convolve2d(dist * dist, win, mode="valid") - mu2 * mu2
        s12 = convolve2d(ref * dist, win, mode="valid") - mu1 * mu2
        s1[s1 < 0] = 0
        s2[s2 < 0] = 0
        g = s12 / (s1 + eps)
        sv = s2 - g * s12
        g[s1 < eps] = 0
        sv[s1 < eps] = s2[s1 < eps]
        s1[s1 < eps] = 0
        g[s2 < eps] = 0
        sv[s2 < eps] = 0
        sv[g < 0] = s2[g < 0]
        g[g < 0] = 0
        sv[sv <= eps] = eps
        num += np.sum(np.log10(1 + g * g * s1 / (sv + sigma_nsq)))
        den += np.sum(np.log10(1 + s1 / sigma_nsq))
    vif = num / den
    return 1.0 if np.isnan(vif) else vif


def _baseline_sobel(img):
    from scipy.signal import convolve2d

    ky = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], np.float32)
    kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
    sx = convolve2d(img, kx, mode="same")
    sy = convolve2d(img, ky, mode="same")
    g = np.sqrt(sx * sx + sy * sy)
    a = np.zeros_like(img)
    a[sx == 0] = math.pi / 2
    a[sx != 0] = np.arctan(sy[sx != 0] / sx[sx != 0])
    return g, a


def _baseline_edge_q(a_src, g_src, a_f, g_f):
    ratio = np.zeros_like(a_src)
    ratio[g_src > g_f] = g_f[g_src > g_f] / g_src[g_src > g_f]
    ratio[g_src == g_f] = g_f[g_src == g_f]
    ratio[g_src < g_f] = g_src[g_src < g_f] / g_f[g_src < g_f]
    align = 1 - np.abs(a_src - a_f) / (math.pi / 2)
    return 0.9994 / (1 + np.exp(-15 * (ratio - 0.5))) * (0.9879 / (1 + np.exp(-22 * (align - 0.8))))


def _baseline_qabf(f, a, b):
    ga, aa = _baseline_sobel(a)
    gb, ab = _baseline_sobel(b)
    gf, af = _baseline_sobel(f)
    qa, qb = _baseline_edge_q(aa, ga, af, gf), _baseline_edge_q(ab, gb, af, gf)
    return np.sum(qa * ga + qb * gb) / np.sum(ga + gb)


def _baseline_ssim(x, y, data_range=2.0, win=7):
    """scikit-image's structural_similarity with its defaults (uniform 7x7 window, sample covariance), which keeps
    float32 images in float32; written out so the baseline needs scipy only."""
    from scipy.ndimage import uniform_filter

    ux, uy = uniform_filter(x, size=win), uniform_filter(y, size=win)
    uxx, uyy, uxy = uniform_filter(x * x, size=win), uniform_filter(y * y, size=win), uniform_filter(x * y, size=win)
    cov_norm = win * win / (win * win - 1)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    pad = (win - 1) // 2
    return s[pad:-pad, pad:-pad].mean(dtype=np.float64)


def baseline_metrics(ir: np.ndarray, vis: np.ndarray, fused: np.ndarray) -> dict:
    """Every metric, the straightforward way (float32 images, as the standard script holds them)."""
    f, a, b = (np.asarray(x, np.float32) for x in (fused, ir, vis))
    mse = (np.mean((a - f) ** 2) + np.mean((b - f) ** 2)) / 2
    out = {
        "EN": _baseline_entropy(f),
        "SD": np.std(f),
        "SF": np.sqrt(np.mean((f[:, 1:] - f[:, :-1]) ** 2) + np.mean((f[1:, :] - f[:-1, :]) ** 2)),
        "AG": _baseline_average_gradient(f),
        "MI": _baseline_mutual_information(f, a) + _baseline_mutual_information(f, b),
        "SCD": _baseline_corr(a, f - b) + _baseline_corr(b, f - a),
        "VIF": _baseline_vif_one(a, f) + _baseline_vif_one(b, f),
        "Qabf": _baseline_qabf(f, a, b),
        "SSIM": _baseline_ssim(f, a) + _baseline_ssim(f, b),
        "PSNR": 10 * np.log10(np.max(f) ** 2 / mse),
        "CC": (_baseline_corr(a, f) + _baseline_corr(b, f)) / 2,
        "MSE": mse,
    }
    return {k: float(out[k]) for k in METRIC_NAMES}


# ----------------------------------------------------------------------------------------------------------- bench
def _interleaved_medians(fast, slow, repeats: int) -> dict[str, float]:
    """Median wall and CPU seconds of each function, runs alternating so machine load hits both alike.

    CPU time is this thread's (everything is pinned to one thread), which is what a busy shared machine distorts
    least; wall time is reported beside it.
    """
    samples = {"fast_wall": [], "fast_cpu": [], "slow_wall": [], "slow_cpu": []}
    for _ in range(repeats):
        for label, fn in (("fast", fast), ("slow", slow)):
            wall, cpu = time.perf_counter(), time.thread_time()
            fn()
            samples[f"{label}_cpu"].append(time.thread_time() - cpu)
            samples[f"{label}_wall"].append(time.perf_counter() - wall)
    return {key: statistics.median(values) for key, values in samples.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "roadscene",
                        help="RoadScene folder with ir/, vi/ and test.txt")
    parser.add_argument("--pairs", type=int, default=8, help="number of test pairs to time (first N of test.txt)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per pair and implementation (median)")
    parser.add_argument("--min-ratio", type=float, default=10.0, help="fail below this speed-up")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    cv2.setNumThreads(1)
    names = [Path(line).name for line in (args.data / "test.txt").read_text().split()][: args.pairs]
    rows, worst = [], {m: 0.0 for m in METRIC_NAMES}
    for name in names:
        ir = read_gray_for_metrics(args.data / "ir" / name)
        vis = read_gray_for_metrics(args.data / "vi" / name)
        fused = np.round((ir + vis) / 2)
        fast, slow = fusion_metrics(ir, vis, fused), baseline_metrics(ir, vis, fused)
        for m in METRIC_NAMES:
            worst[m] = max(worst[m], abs(fast[m] - slow[m]) / max(abs(slow[m]), 1e-12))
        timing = _interleaved_medians(lambda: fusion_metrics(ir, vis, fused),
                                      lambda: baseline_metrics(ir, vis, fused), args.repeats)
        timing.update(name=name, width=ir.shape[1], height=ir.shape[0])
        rows.append(timing)
        print(f"{name:16s} {ir.shape[1]}x{ir.shape[0]}  CPU: scipy {timing['slow_cpu'] * 1e3:7.1f} ms, "
              f"distill.metrics {timing['fast_cpu'] * 1e3:6.1f} ms, x{timing['slow_cpu'] / timing['fast_cpu']:5.1f}   "
              f"wall: {timing['slow_wall'] * 1e3:7.1f} / {timing['fast_wall'] * 1e3:6.1f} ms, "
              f"x{timing['slow_wall'] / timing['fast_wall']:5.1f}", flush=True)

    summary = {"pairs": len(rows)}
    for clock in ("cpu", "wall"):
        summary[f"baseline_{clock}_ms"] = statistics.median(r[f"slow_{clock}"] for r in rows) * 1e3
        summary[f"fast_{clock}_ms"] = statistics.median(r[f"fast_{clock}"] for r in rows) * 1e3
        summary[f"speedup_{clock}"] = statistics.median(r[f"slow_{clock}"] / r[f"fast_{clock}"] for r in rows)
    max_rel = max(worst.values())
    print(f"\n{len(rows)} pairs, one thread, per-pair medians:")
    print(f"  CPU time : scipy baseline {summary['baseline_cpu_ms']:.1f} ms, distill.metrics "
          f"{summary['fast_cpu_ms']:.1f} ms, speed-up x{summary['speedup_cpu']:.1f}")
    print(f"  wall time: scipy baseline {summary['baseline_wall_ms']:.1f} ms, distill.metrics "
          f"{summary['fast_wall_ms']:.1f} ms, speed-up x{summary['speedup_wall']:.1f}")
    print("largest relative difference per metric: " + ", ".join(f"{m} {v:.1e}" for m, v in worst.items()))
    ratio = summary["speedup_cpu"]
    if args.json:
        from runtime.imageio import write_json
        write_json(args.json, {**summary, "max_rel_diff": worst, "per_pair": rows})
    ok = True
    if max_rel > 1e-4:
        print(f"FAIL: numbers differ by up to {max_rel:.1e} relative (limit 1e-4)")
        ok = False
    if ratio < args.min_ratio:
        print(f"FAIL: CPU-time speed-up x{ratio:.1f} is below x{args.min_ratio:g}")
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
