"""benchmarks.crops: pixel-exact enlarged crops of fused images beside their sources (the docs' texture pictures)."""
from __future__ import annotations

import cv2
import numpy as np

from benchmarks.crops import load_gray, main


def test_crops_are_pixel_exact_and_bad_boxes_fail(tmp_path, roadscene, test_names, capsys):
    name = test_names[0]
    fused = tmp_path / "fused"
    fused.mkdir()
    ir = load_gray(next((roadscene / "ir").glob(f"{name}.*")))
    cv2.imwrite(str(fused / f"{name}.png"), 255 - ir)                     # a "fusion" we know pixel by pixel
    out = tmp_path / "crop.png"
    assert main(["--data", str(roadscene), "--name", name, "--box", "10,20,30,40", "--column", f"neg={fused}",
                 "--zoom", "2", "--out", str(out)]) == 0
    strip = cv2.imread(str(out), cv2.IMREAD_COLOR)[..., 0]
    assert strip.shape == (80, 3 * 60 + 2 * 4)                            # three 30x40 tiles x2, 4 px gaps
    neg_tile = strip[:, 2 * 64:2 * 64 + 60]
    expected = np.repeat(np.repeat(255 - ir[20:60, 10:40], 2, axis=0), 2, axis=1)
    assert np.array_equal(neg_tile[28:], expected[28:])                    # below the label: the exact pixels
    assert main(["--data", str(roadscene), "--name", name, "--box", "10000,0,8,8", "--out", str(out)]) == 2
    assert "does not fit" in capsys.readouterr().err


def test_labels_stay_inside_their_box_on_a_bright_tile():
    """Picture labels (grids, crops) are drawn on a black box: on a white tile every non-white pixel of the label is
    inside the box and the text itself is there (the old thick black outline drifted past the end of the text)."""
    import numpy as np

    from runtime.imageio import draw_label
    for scale, colour in ((0.5, (0, 255, 255)), (0.6, (255, 255, 0))):
        tile = np.full((60, 400, 3), 255, np.uint8)
        draw_label(tile, "teacher pyramid-sharp", scale=scale, colour=colour)
        touched = np.argwhere((tile != 255).any(axis=2))
        box_w = touched[:, 1].max() + 1
        box = tile[:touched[:, 0].max() + 1, :box_w]
        assert (box == 0).all(axis=2).mean() > 0.5                       # the black box
        assert (box == np.array(colour, np.uint8)).all(axis=2).sum() > 20  # the text in its colour
        assert (tile[:, box_w:] == 255).all()
