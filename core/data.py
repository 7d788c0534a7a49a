"""Image datasets: IDX files (gz or plain), torchvision by name, binarisation, labelled subsets.

Datasets are held as uint8 tensors (N, C, H, W): Fashion-MNIST is 47 MB that way, so every
worker keeps its copy in memory and batches are plain index lookups, with no loader processes.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from core.idx import (SPLIT_FILES, SYSTEM_LOCATIONS, DataError, IdxHeader, open_idx, read_idx,  # noqa: F401 - re-exported
                      read_idx_rows, write_idx)
from core.networks import DataShape

if TYPE_CHECKING:
    from core.factors import FactorTable

_TORCHVISION = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST", "cifar10": "CIFAR10"}


@dataclass
class ImageDataset:
    images: torch.Tensor          # (N, C, H, W) uint8
    labels: torch.Tensor | None   # (N,) int64
    num_classes: int
    name: str
    factors: FactorTable | None = None  # generative factors per row, for generated data (core.factors)
    # Uniform dequantisation noise u in [0, 1) per pixel, fixed for evaluation (a test split under
    # a Gaussian likelihood): its floats are (x + u) / 256, a density on continuous data.
    noise: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> DataShape:
        return DataShape(*self.images.shape[1:])

    def take(self, limit: int | None) -> "ImageDataset":
        if limit is None or limit >= len(self):
            return self
        labels = None if self.labels is None else self.labels[:limit]
        factors = None if self.factors is None else self.factors.select(slice(0, limit))
        noise = None if self.noise is None else self.noise[:limit]
        return ImageDataset(self.images[:limit], labels, self.num_classes, self.name, factors, noise)

    def floats(self, indices: torch.Tensor) -> torch.Tensor:
        """The images at `indices` as the models see them in evaluation: in [0, 1], dequantised
        with the split's fixed noise where it has one."""
        if self.noise is None:
            return to_float(self.images[indices])
        return dequantize(self.images[indices], self.noise[indices])


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        try:
            if (directory / name).is_file():
                return directory / name
        except OSError as err:  # a folder we may not search: is_file() raises rather than say False
            raise DataError(f"{directory}: cannot read the data folder ({err.strerror})") from None
    return None


def _images_to_nchw(array: np.ndarray, path: Path) -> torch.Tensor:
    if array.dtype != np.uint8:
        # Float images (IDX type 0x0D/0x0E) are refused whole: their scale (0..1 or 0..255) is
        # unknown and they may hold NaN or Inf; datasets are uint8 from end to end.
        raise DataError(f"{path}: image IDX files must hold uint8 pixels (0..255), found {array.dtype.name}")
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and array.shape[-1] in (1, 3, 4):
        array = array.transpose(0, 3, 1, 2)  # (N, H, W, C) as IDX writers usually store colour
    elif array.ndim != 4:
        raise DataError(f"{path}: images must have 3 or 4 dimensions, found shape {array.shape}")
    return torch.from_numpy(np.array(array, copy=True, order="C"))  # frombuffer arrays are read-only


# Labels are class indices and the number of classes is the largest label plus one; conditioning
# (cvae), the classifier (m2) and label enumeration are sized by it, so one stray value (an int32
# 10**9) would ask for gigabyte one-hot tensors. A fixed cap rather than "no more classes than
# examples": a small split may legitimately miss most classes (a 10-image test file of a
# 100-class set). 65,536 is far beyond any labelled image set (ImageNet-21k has 21,841 classes).
MAX_CLASSES = 65_536


def load_idx_split(directory: str | os.PathLike, split: str, name: str | None = None) -> ImageDataset:
    """Load one split from a folder in the MNIST layout (train-images-idx3-ubyte[.gz], ...)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: data folder does not exist")
    image_stem, label_stem = SPLIT_FILES[split]
    image_path = _find(directory, image_stem)
    if image_path is None:
        raise DataError(f"{directory}: no {image_stem}[.gz] for the {split} split")
    images = _images_to_nchw(read_idx(image_path), image_path)
    labels, num_classes = None, 0
    label_path = _find(directory, label_stem)
    if label_path is not None:
        raw = read_idx(label_path)
        if raw.ndim != 1 or raw.shape[0] != images.shape[0]:
            raise DataError(f"{label_path}: {raw.shape[0] if raw.ndim else 0} labels for {images.shape[0]} images")
        if raw.dtype.kind not in "iu":  # a float label (NaN, 2.7) would be cast silently to some int
            raise DataError(f"{label_path}: labels must be integers, found {raw.dtype.name}")
        labels = torch.from_numpy(raw.astype(np.int64))  # astype copies: writable
        if labels.numel() and labels.min() < 0:
            raise DataError(f"{label_path}: negative label {int(labels.min())}")
        num_classes = int(labels.max()) + 1 if labels.numel() else 0
        if num_classes > MAX_CLASSES:
            raise DataError(f"{label_path}: label {num_classes - 1} means {num_classes:,} classes, more than the "
                            f"{MAX_CLASSES:,} vae-zoo accepts (a damaged file, or not a labels file?)")
    return ImageDataset(images, labels, num_classes, name or directory.name)


def _load_torchvision(name: str, split: str, root: Path) -> ImageDataset:
    import torchvision.datasets as tvd

    cls = getattr(tvd, _TORCHVISION[name])
    try:
        ds = cls(str(root), train=(split == "train"), download=True)
    except Exception as err:  # network errors come in many types
        raise DataError(f"{name}: not found locally and could not be downloaded ({err}); "
                        f"pass --data-dir with its IDX files") from None
    data = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
    images = _images_to_nchw(data, root)
    labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    return ImageDataset(images, labels, len(ds.classes), name)


# -- binarisation -------------------------------------------------------------------------------

def static_binarize(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """One fixed Bernoulli draw per pixel (uint8 0/255), the same for every run with this seed."""
    gen = torch.Generator().manual_seed(seed)
    probs = images.float().div_(255.0)
    return torch.bernoulli(probs, generator=gen).mul_(255).to(torch.uint8)


# Dynamic binarisation compares a uniform 15-bit integer u with a threshold per grey level:
# pixel x is 1 when u < T(x), T(x) = 128 x + ceil(x / 2), so P(1 | x) = T(x) / 2**15. T is within
# 1/2 of 2**15 x / 255 at every level and exact at both ends (T(0) = 0, T(255) = 2**15).
_UNIFORM_BITS = 15


def _thresholds_less_one(images: torch.Tensor) -> torch.Tensor:
    """T(x) - 1 = 128 x + floor((x - 1) / 2) in int16 (-1 at x = 0, 2**15 - 1 at x = 255), for u <= T - 1."""
    levels = images.to(torch.int16)
    return torch.add(levels.sub(1).bitwise_right_shift_(1), levels, alpha=128)


def _uniform_15_bit(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniform integers in [0, 2**15) as int16. On the CPU, torch's Mersenne twister makes random
    bits at about half the rate of numpy's SFC64, so one 63-bit seed drawn from torch's generator
    (which keeps runs reproducible and resumable from torch's RNG state alone) seeds an SFC64 that
    makes the batch's bits. Elsewhere torch's own generator (Philox on CUDA) draws them."""
    n = math.prod(shape)
    if device.type != "cpu":
        return torch.randint(0, 2**_UNIFORM_BITS, shape, dtype=torch.int16, generator=generator, device=device)
    seed = int(torch.empty((), dtype=torch.int64).random_(generator=generator))
    words = np.random.SFC64(seed).random_raw((n + 3) // 4)  # four 16-bit draws per 64-bit word
    return torch.from_numpy(words.view(np.int16)[:n]).view(shape).bitwise_and_(2**_UNIFORM_BITS - 1)


def dynamic_binarize(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A fresh Bernoulli draw per pixel of uint8 images, as floats 0/1: pixel x is 1 with
    probability `dynamic_one_probability(x)`, within 1.6e-5 of x / 255 and exact at 0 and 255.

    A 15-bit uniform integer and a compare per pixel, in int16: 2.1x / 3.4x cheaper at batch 128 /
    512 than the draw it replaced (a torch.randint threshold in {0..254} per pixel, one
    Mersenne-twister call each), and 5.2x / 8.4x cheaper than torch.bernoulli on x / 255
    (benchmarks/binarisation_draw.py)."""
    return binarize_below(images, _uniform_15_bit(images.shape, generator, images.device))


def binarize_below(images: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """`dynamic_binarize` given its 15-bit uniforms (int16, the images' shape): floats 0/1, a pixel
    1 where its uniform is below its grey level's threshold."""
    out = torch.empty(images.shape, dtype=torch.float32, device=images.device)
    return torch.le(uniform, _thresholds_less_one(images), out=out)


class UniformStream:
    """15-bit uniforms for dynamic binarisation on the CPU, made 2**21 at a time (4 MiB) by one
    SFC64 seeded from torch's generator. Made batch by batch (a seed, a generator and a numpy call
    each, in caches the backward pass has just filled) they were more than half of the draw's cost
    in a training step (benchmarks/step_parts.py). `restart` drops what is left, so the next
    `take` seeds afresh from torch's generator: the trainer restarts the stream every epoch, so a
    run resumed at an epoch boundary draws the same bits as one that never stopped."""

    CHUNK = 2**21

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator
        self.restart()

    def restart(self) -> None:
        self._uniform: torch.Tensor | None = None
        self._used = 0

    def take(self, n: int) -> torch.Tensor:
        """The next n uniforms, each used once (int16, 1-d)."""
        if self._uniform is None or self._used + n > len(self._uniform):
            self._uniform = _uniform_15_bit(torch.Size([max(n, self.CHUNK)]), self.generator, torch.device("cpu"))
            self._used = 0
        self._used += n
        return self._uniform[self._used - n:self._used]


def dynamic_one_probability(level: int) -> float:
    """The exact probability that `dynamic_binarize` sets a pixel of grey level `level` (0..255)."""
    return (128 * level + (level + 1) // 2) / 2**_UNIFORM_BITS


def to_float(images: torch.Tensor, dynamic: bool = False, generator: torch.Generator | None = None,
             dequantized: bool = False) -> torch.Tensor:
    """uint8 images to floats in [0, 1]; `dynamic` draws a fresh Bernoulli sample (dynamic
    binarisation, `dynamic_binarize`), `dequantized` fresh uniform noise: (x + u) / 256."""
    if dequantized:
        return dequantize(images, torch.rand(images.shape, generator=generator, device=images.device))
    if dynamic:
        return dynamic_binarize(images, generator)
    return images.float().div_(255.0)


# 8-bit images dequantised to [0, 1): a continuous density p on (x + u) / 256 bounds the discrete
# likelihood, log P(x) >= E_u log p((x + u) / 256) - D log 256 (Theis, van den Oord & Bethge 2016).
LEVELS = 256


def dequantize(images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return (images.float() + noise).div_(LEVELS)


def bits_per_dim(nll_nats: float, dims: int) -> float:
    """-log2 P(x) per dimension of 8-bit data from a density's NLL in nats on (x + u) / 256."""
    return (nll_nats + dims * math.log(LEVELS)) / (dims * math.log(2))


@dataclass
class PreparedData:
    """Train and test images ready for batching, with the binarisation applied where it is fixed."""

    train: ImageDataset
    test: ImageDataset
    dynamic_train: bool  # draw a new binarisation of each training batch
    dequantized: bool = False  # training batches draw fresh dequantisation noise; test has fixed noise

    @property
    def shape(self) -> DataShape:
        return self.train.shape

    @property
    def num_classes(self) -> int:
        return max(self.train.num_classes, self.test.num_classes)


def prepare_split(ds: ImageDataset, binarize: str, split: str) -> ImageDataset:
    """Apply the binarisation that is fixed for this split. Dynamic binarisation evaluates on one
    fixed draw of the test set (seed 1), so test numbers are comparable across runs."""
    fixed = binarize == "static" or (binarize == "dynamic" and split == "test")
    if not fixed:
        return ds
    seed = 0 if split == "train" else 1
    return ImageDataset(static_binarize(ds.images, seed), ds.labels, ds.num_classes, ds.name, ds.factors)


def with_dequantization(data: PreparedData, seed: int = 1) -> PreparedData:
    """8-bit grey levels for a continuous density: training batches draw fresh uniform noise, the
    test split one fixed draw (`seed`), so its numbers compare across runs."""
    if data.dequantized:
        return data
    test = data.test
    noise = torch.rand(test.images.shape, generator=torch.Generator().manual_seed(seed))
    test = ImageDataset(test.images, test.labels, test.num_classes, test.name, test.factors, noise)
    return PreparedData(data.train, test, dynamic_train=False, dequantized=True)


def labelled_subset(labels: torch.Tensor, n: int, num_classes: int, seed: int = 0) -> torch.Tensor:
    """Indices of a class-balanced subset of n examples (n // K per class, the remainder spread
    over the first classes), drawn with a fixed seed so every run uses the same labels."""
    if n < num_classes:
        raise DataError(f"a class-balanced subset needs at least one label per class: {n} < {num_classes}")
    if n > labels.numel():
        raise DataError(f"asked for {n} labelled examples but the training set has {labels.numel()}")
    gen = torch.Generator().manual_seed(seed)
    per_class = [n // num_classes + (1 if c < n % num_classes else 0) for c in range(num_classes)]
    chosen = []
    for c, count in enumerate(per_class):
        members = torch.nonzero(labels == c).flatten()
        if members.numel() < count:
            raise DataError(f"class {c} has {members.numel()} examples, fewer than the {count} asked for")
        chosen.append(members[torch.randperm(members.numel(), generator=gen)[:count]])
    return torch.cat(chosen).sort().values
