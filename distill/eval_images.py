"""The images of an evaluation: the student's fusions (gray and colour), a teacher's or baseline's (resumable, through
the loop of `fusion teacher fuse`), colour versions of gray fusions and the labelled picture grid.

    from distill.eval_images import fuse_pairs, fuse_with_teacher, picture_grid
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np


def fuse_pairs(model, pairs, out_dir: Path, device: str = "cpu", colour_dir: Optional[Path] = None) -> List[str]:
    """Run the student on each pair at full size; write fused luminance PNGs (and colour ones with VIS chroma)."""
    import torch
    from tqdm import tqdm

    from runtime.color import merge_luminance, split_luminance
    from runtime.imageio import read_pair, write_image
    names = []
    channels = model.config.vis_channels
    with torch.no_grad():
        for pair in tqdm(pairs, desc="student", unit="pair", file=sys.stderr):
            ir, vis = read_pair(pair)
            vis_y, cbcr = split_luminance(vis)
            vis_in = vis_y[None] if channels == 1 else (vis.transpose(2, 0, 1) if vis.ndim == 3 else
                                                         np.repeat(vis[None], 3, axis=0))
            fused = model(torch.from_numpy(ir)[None, None].to(device),
                          torch.from_numpy(np.ascontiguousarray(vis_in))[None].to(device))[0].cpu().numpy()
            if channels == 1:
                fused_y = fused[0]
                colour = merge_luminance(fused_y, cbcr)
            else:
                colour = fused.transpose(1, 2, 0)
                fused_y, _ = split_luminance(colour)
            write_image(out_dir / f"{pair.name}.png", fused_y)
            if colour_dir is not None:
                write_image(colour_dir / f"{pair.name}.png", colour)
            names.append(pair.name)
    return names


def fuse_with_teacher(name: str, kind, pairs, out_dir: Path) -> None:
    """Write `name`'s fusion of each pair not already present in out_dir (resumable)."""
    from teacher.batch import pending
    from teacher.fuse_cli import fuse_into
    from teacher.registry import load_teacher_class
    teacher = load_teacher_class(name, kind)()

    def output_of(pair):
        return out_dir / f"{pair.name}.png"

    todo, _ = pending(pairs, output_of, resume=True)
    fuse_into(teacher, todo, output_of, teacher.device, desc=name)


def picture_grid(pairs, columns: Dict[str, Path], out_path: Path, rows: int = 4, height: int = 200) -> Path:
    """Rows of pairs, columns IR | VIS | each fused folder, every tile resized to `height`, labelled."""
    import cv2

    from runtime.imageio import draw_label, read_raw, write_image
    tiles_rows = []
    for pair in pairs[:rows]:
        tiles = []
        sources = [("IR", pair.ir), ("VIS", pair.vis)] + [(label, folder / f"{pair.name}.png")
                                                         for label, folder in columns.items()]
        for label, path in sources:
            img = read_raw(path)
            if img.dtype != np.uint8:
                img = (img / 257).astype(np.uint8)
            if img.ndim == 2:
                img = np.repeat(img[..., None], 3, axis=2)
            width = int(round(img.shape[1] * height / img.shape[0]))
            img = np.ascontiguousarray(cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA))
            draw_label(img, label, scale=0.6, colour=(255, 255, 0))
            tiles.append(img)
            tiles.append(np.full((height, 4, 3), 255, np.uint8))
        tiles_rows.append(np.concatenate(tiles[:-1], axis=1))
    width = max(r.shape[1] for r in tiles_rows)
    padded = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in tiles_rows]
    return write_image(out_path, np.concatenate(padded, axis=0))


def colourise(pairs, fused_dir: Path, out_dir: Path) -> None:
    """Colour versions of gray fusions (the visible chroma on the fused luminance, as the runtime shows them)."""
    from runtime.color import merge_luminance, split_luminance
    from runtime.imageio import read_pair, read_raw, write_image
    for pair in pairs:
        target = out_dir / f"{pair.name}.png"
        if target.is_file():
            continue
        fused = read_raw(next(iter(sorted(fused_dir.glob(f"{pair.name}.*")))))
        fused = fused.astype(np.float32) / (65535.0 if fused.dtype == np.uint16 else 255.0)
        if fused.ndim == 3:
            fused = split_luminance(fused)[0]
        _, vis = read_pair(pair)
        _, cbcr = split_luminance(vis if vis.ndim == 3 else np.repeat(vis[..., None], 3, axis=2))
        write_image(target, merge_luminance(fused, cbcr))
