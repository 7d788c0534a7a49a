"""Image grids as PNG files (samples, reconstructions, completions)."""
from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import save_image


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Save (N, C, H, W) images in [0, 1] as one PNG grid."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nrow = nrow or max(1, int(round(images.shape[0] ** 0.5)))
    save_image(images.detach().float().clamp(0, 1).cpu(), str(path), nrow=nrow, padding=2, pad_value=1.0)
    return path
