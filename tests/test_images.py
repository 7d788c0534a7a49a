"""pipelines/images.py writes the PNG grid torchvision's save_image would, pixel for pixel,
without importing torchvision (whose import costs seconds per command)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.images import save_grid


@pytest.mark.parametrize("n, channels, nrow", [(64, 1, 8), (7, 1, 3), (5, 3, 8), (1, 1, 4), (12, 1, 12)])
def test_grid_equals_torchvision_save_image(tmp_path, n, channels, nrow):
    from torchvision.utils import save_image

    gen = torch.Generator().manual_seed(n)
    # values outside [0, 1] too: both clamp
    images = torch.rand(n, channels, 9, 7, generator=gen) * 1.2 - 0.1
    ours = save_grid(images, tmp_path / "ours.png", nrow=nrow)
    save_image(images.clamp(0, 1), str(tmp_path / "ref.png"), nrow=nrow, padding=2, pad_value=1.0)
    ours_px = np.asarray(Image.open(ours))
    ref_px = np.asarray(Image.open(tmp_path / "ref.png"))
    assert ours_px.shape == ref_px.shape
    assert np.array_equal(ours_px, ref_px)


def test_bad_shapes_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\(N, 1 or 3, H, W\)"):
        save_grid(torch.zeros(4, 2, 8, 8), tmp_path / "x.png")
    with pytest.raises(ValueError, match="N >= 1"):
        save_grid(torch.zeros(0, 1, 8, 8), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_writing_a_grid_does_not_import_torchvision(tmp_path):
    code = ("import sys, torch; from pipelines.images import save_grid; "
            f"save_grid(torch.rand(4, 1, 8, 8), {str(tmp_path / 'g.png')!r}); "
            "print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
