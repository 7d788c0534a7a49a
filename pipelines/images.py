"""Image grids as PNG files (samples, reconstructions, completions).

The layout and pixels are torchvision's `save_image(images, nrow=..., padding=2, pad_value=1.0)`
(tests/test_images.py checks equality), written with NumPy and Pillow: importing torchvision
pulls in torch._dynamo, and importing pipelines.artifacts took 5.6 s with it, 3.1 s without.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

PADDING, PAD_VALUE = 2, 1.0


def grid_array(images: torch.Tensor, nrow: int) -> np.ndarray:
    """(N, C, H, W) images in [0, 1] as one (rows, cols, 3) uint8 RGB array, `nrow` images per
    row with a 2-pixel white border, as torchvision's make_grid + save_image lay them out."""
    if images.dim() != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(f"save_grid needs (N, 1 or 3, H, W) images with N >= 1, got {tuple(images.shape)}")
    x = images.detach().float().clamp(0, 1).cpu()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    n, _, h, w = x.shape
    if n == 1:  # make_grid returns a single image unpadded
        grid = x[0]
    else:
        cols = min(nrow, n)
        rows = -(-n // cols)
        grid = torch.full((3, rows * (h + PADDING) + PADDING, cols * (w + PADDING) + PADDING), PAD_VALUE)
        for k in range(n):
            top, left = (k // cols) * (h + PADDING) + PADDING, (k % cols) * (w + PADDING) + PADDING
            grid[:, top:top + h, left:left + w] = x[k]
    # save_image's rounding: x * 255 + 0.5, truncated to uint8
    return grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Save (N, C, H, W) images in [0, 1] as one PNG grid."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nrow = nrow or max(1, int(round(images.shape[0] ** 0.5)))
    Image.fromarray(grid_array(images, nrow)).save(path, format="PNG")
    return path
