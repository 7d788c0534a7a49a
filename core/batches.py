"""How training batches are drawn: the training split as the trainer holds it, and the default
order (one shared permutation per epoch). A variant changes the order or adds to each batch through
its `epoch_batches` and `draw_batch` hooks (m2's labelled batch, DC-IGN's one-factor batches)."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from core.data import ImageDataset, UniformStream, binarize_below, to_float


@dataclass
class Batch:
    x: torch.Tensor                       # (B, C, H, W) float, binarised as configured
    y: torch.Tensor | None = None         # (B,) int64 labels where the dataset has them
    x_labelled: torch.Tensor | None = None  # semi-supervised: a labelled batch drawn beside x
    y_labelled: torch.Tensor | None = None
    # DC-IGN: the generative factor that varies across this batch's rows (the others are held);
    # a variant's draw_batch fills it from the data's factor table, None elsewhere.
    varying_factor: str | None = None

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device) -> "Batch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return replace(self, x=move(self.x), y=move(self.y), x_labelled=move(self.x_labelled),
                       y_labelled=move(self.y_labelled))


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The same permutation on every rank, a new one each epoch."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


@dataclass
class TrainingSource:
    """The training split (uint8, on the training device) and how a batch of it becomes floats."""
    data: ImageDataset
    dynamic: bool  # a fresh Bernoulli draw per batch (dynamic binarisation)
    device: torch.device
    dequantized: bool = False  # fresh uniform noise per batch: (x + u) / 256 (Gaussian likelihoods)

    def __post_init__(self) -> None:
        # On the CPU the dynamic draw takes its uniforms from a stream made in large chunks.
        self._uniforms = (UniformStream() if self.dynamic and not self.dequantized and self.device.type == "cpu"
                          else None)

    def __len__(self) -> int:
        return len(self.data)

    def start_epoch(self) -> None:
        """The trainer calls this before each epoch's first batch: from here the epoch's random
        bits follow from torch's generator alone, as a resumed run's do."""
        if self._uniforms is not None:
            self._uniforms.restart()

    def batch(self, indices: torch.Tensor) -> Batch:
        labels = self.data.labels
        # index_select copies whole rows; images[indices] goes through the general indexing
        # kernel, several times slower on uint8 images.
        images = self.data.images.index_select(0, indices)
        if self._uniforms is not None:
            x = binarize_below(images, self._uniforms.take(images.numel()).view(images.shape))
        else:
            x = to_float(images, self.dynamic, dequantized=self.dequantized)
        return Batch(x, None if labels is None else labels.index_select(0, indices))

    def shuffled_batches(self, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
        """Global batches of indices: every example once per epoch, the same on every rank."""
        return list(epoch_permutation(len(self), seed, epoch).to(self.device).split(batch_size))
