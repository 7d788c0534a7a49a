"""Datasets with known generative factors, generated offline from a seed, and DC-IGN's batches.

Two generators, both loadable by name through `core.datasets.load_split` / `prepare_data`:

* `dsprites`: procedural binary shapes (square, ellipse, heart) with factors shape, scale,
  orientation, x and y position, as in dSprites (Matthey et al. 2017), 32x32 by default.
* `transformed-fashion-mnist`: Fashion-MNIST items (read from the IDX files) under a known
  rotation, scale and x/y translation; the item's index in its split is the identity factor.

A name may carry options: `dsprites:image_size=64,train_size=50000,seed=3` or
`dsprites:full_grid=true` (see DSpritesSpec / TransformedFashionSpec for the fields).

Every row keeps its factors in a FactorTable (integer codes into a discrete grid per factor, and
the values they stand for). Subsampled data is generated in *groups*: each group holds all
factors but one at a shared value and varies that one, the varied factor cycling from group to
group. So the batches DC-IGN trains on (Kulkarni et al. 2015: one factor varies, the rest are
held) exist in any prefix of the data, and `one_factor_batch` / `one_factor_epoch` draw them.

Generated splits are cached on disk (see `load_generated_split` for why, with figures), keyed
by the generator's version, its parameters, the seed and the split, written atomically and
checked against a SHA-256 on every load: a damaged file is regenerated, never trusted.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import warnings
import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from core.data import DataError, ImageDataset
from core.factor_table import (  # noqa: F401  (the sampler's names, re-exported)
    FactorTable,
    full_grid_codes,
    grouped_codes,
    one_factor_batch,
    one_factor_epoch,
    shuffled_batches,
)
from core.files import atomic_write

# Bump when a generator's output changes for the same parameters: it is part of the cache key.
GENERATOR_VERSION = 1
CACHE_ENV = "VAEZOO_DATA_CACHE"
DEFAULT_CACHE = Path.home() / ".cache" / "vae-zoo" / "generated"
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


# -- dsprites -------------------------------------------------------------------------------------

SHAPES = ("square", "ellipse", "heart")


@dataclass(frozen=True)
class DSpritesSpec:
    """Parameters of the `dsprites` generator (dSprites' own grid is 6 scales, 40 orientations,
    32 positions per axis at 64x64; positions default to image_size // 2)."""

    image_size: int = 32
    num_scales: int = 6
    num_orientations: int = 40
    num_positions: int = 0            # 0: image_size // 2
    full_grid: bool = False           # every combination, split into train/test at random
    train_size: int = 20_000          # rows of a subsample (ignored with full_grid)
    test_size: int = 5_000
    test_fraction: float = 0.1        # of the full grid
    rows_per_group: int = 16
    seed: int = 0

    def check(self) -> None:
        if self.image_size < 8:
            raise DataError(f"dsprites: image_size must be at least 8, got {self.image_size}")
        for name in ("num_scales", "num_orientations", "train_size", "test_size", "rows_per_group"):
            if getattr(self, name) < 1:
                raise DataError(f"dsprites: {name} must be positive, got {getattr(self, name)}")
        if self.num_positions < 0 or not 0 < self.test_fraction < 1:
            raise DataError("dsprites: num_positions must be >= 0 and test_fraction in (0, 1)")

    @property
    def positions(self) -> int:
        return self.num_positions or self.image_size // 2

    def grids(self) -> tuple[torch.Tensor, ...]:
        d = torch.float64
        return (torch.arange(len(SHAPES), dtype=d),
                torch.linspace(0.5, 1.0, self.num_scales, dtype=d),
                torch.arange(self.num_orientations, dtype=d) * (2 * math.pi / self.num_orientations),
                torch.linspace(0.0, 1.0, self.positions, dtype=d),
                torch.linspace(0.0, 1.0, self.positions, dtype=d))


DSPRITES_FACTORS = ("shape", "scale", "orientation", "x", "y")


def render_sprites(shape: torch.Tensor, scale: torch.Tensor, orientation: torch.Tensor,
                   x: torch.Tensor, y: torch.Tensor, image_size: int, chunk: int = 512) -> torch.Tensor:
    """Binary images (N, 1, S, S) uint8 0/255 of the shapes, sampled at pixel centres.

    A shape of scale 1 has half-width 0.18 * S; x and y in [0, 1] move its centre across the
    image, keeping a margin of its largest extent so no position clips it.
    """
    s = image_size
    radius = 0.18 * s                                     # half-width at scale 1
    margin = radius * math.sqrt(2) + 0.5                  # a square's corner at scale 1, any rotation
    pixel = torch.arange(s, dtype=torch.float32) + 0.5
    out = torch.zeros(shape.numel(), 1, s, s, dtype=torch.uint8)
    for kind in range(len(SHAPES)):
        rows = torch.nonzero(shape == kind).flatten()
        for part in rows.split(chunk):                    # small chunks: the temporaries stay in cache
            cx = (margin + x[part].float() * (s - 2 * margin))[:, None, None]
            cy = (margin + y[part].float() * (s - 2 * margin))[:, None, None]
            r = (radius * scale[part].float())[:, None, None]
            angle = orientation[part].float()[:, None, None]
            cos, sin = torch.cos(angle) / r, torch.sin(angle) / r
            dx, dy = pixel[None, None, :] - cx, pixel[None, :, None] - cy
            u = cos * dx + sin * dy                       # the pixel in the shape's frame, unit half-width
            v = cos * dy - sin * dx
            if kind == 0:                                 # square
                inside = torch.maximum(u.abs(), v.abs()) <= 1.0
            elif kind == 1:                               # ellipse, 2:1
                inside = u * u + 4 * v * v <= 1.0
            else:                                         # heart curve (x^2+y^2-1)^3 <= x^2 y^3, y up
                hu, hv = u * 1.2, v * -1.2 + 0.15
                q = hu * hu + hv * hv - 1
                inside = q * q * q <= hu * hu * hv * hv * hv
            out[part, 0] = inside.to(torch.uint8) * 255
    return out


def generate_dsprites(spec: DSpritesSpec) -> dict[str, tuple[torch.Tensor, FactorTable]]:
    """Both splits of `dsprites` for `spec`: {"train": (images, factors), "test": (...)}."""
    spec.check()
    grids = spec.grids()
    sizes = [g.numel() for g in grids]
    gen = torch.Generator().manual_seed(spec.seed)
    if spec.full_grid:
        codes = full_grid_codes(sizes)
        is_test = torch.rand(codes.shape[0], generator=gen) < spec.test_fraction
        split_codes = {"train": (codes[~is_test], None), "test": (codes[is_test], None)}
    else:
        split_codes = {"train": grouped_codes(sizes, spec.train_size, spec.rows_per_group, gen),
                       "test": grouped_codes(sizes, spec.test_size, spec.rows_per_group, gen)}
    result = {}
    for split, (codes, groups) in split_codes.items():
        table = FactorTable(DSPRITES_FACTORS, grids, codes, groups)
        vals = [g[c] for g, c in zip(grids, codes.T)]
        images = render_sprites(codes[:, 0], vals[1], vals[2], vals[3], vals[4], spec.image_size)
        result[split] = (images, table)
    return result


# -- transformed Fashion-MNIST --------------------------------------------------------------------

@dataclass(frozen=True)
class TransformedFashionSpec:
    """Parameters of `transformed-fashion-mnist`: rotations in degrees, scales, shifts in pixels."""

    rotations: tuple[float, ...] = (-40.0, -30.0, -20.0, -10.0, 0.0, 10.0, 20.0, 30.0, 40.0)
    scales: tuple[float, ...] = (0.6, 0.7, 0.8, 0.9, 1.0)
    shifts: tuple[float, ...] = (-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0)
    train_size: int = 20_000
    test_size: int = 5_000
    rows_per_group: int = 16
    seed: int = 0

    def check(self) -> None:
        for name in ("rotations", "scales", "shifts"):
            if not getattr(self, name):
                raise DataError(f"transformed-fashion-mnist: {name} must not be empty")
        if min(self.scales) <= 0:
            raise DataError("transformed-fashion-mnist: scales must be positive")
        for name in ("train_size", "test_size", "rows_per_group"):
            if getattr(self, name) < 1:
                raise DataError(f"transformed-fashion-mnist: {name} must be positive, got {getattr(self, name)}")


FASHION_FACTORS = ("item", "rotation", "scale", "x", "y")


def transform_images(images: torch.Tensor, rotation_deg: torch.Tensor, scale: torch.Tensor,
                     shift_x: torch.Tensor, shift_y: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """uint8 (N, 1, H, W) images rotated (degrees, counter-clockwise as seen), scaled about the
    centre and then shifted by whole or fractional pixels; bilinear, zeros outside."""
    import torch.nn.functional as F

    n, _, h, w = images.shape
    out = torch.empty_like(images)
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        a = torch.deg2rad(rotation_deg[sl].double())
        s = scale[sl].double()
        cos, sin = torch.cos(a) / s, torch.sin(a) / s
        # affine_grid maps output coordinates (normalised to [-1, 1]) to input ones: the inverse map.
        tx, ty = -2 * shift_x[sl].double() / w, -2 * shift_y[sl].double() / h
        theta = torch.stack([torch.stack([cos, -sin, cos * tx - sin * ty], 1),
                             torch.stack([sin, cos, sin * tx + cos * ty], 1)], 1).float()
        grid = F.affine_grid(theta, [theta.shape[0], 1, h, w], align_corners=False)
        warped = F.grid_sample(images[sl].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out[sl] = warped.round_().clamp_(0, 255).to(torch.uint8)
    return out


def generate_transformed_fashion(spec: TransformedFashionSpec, source_dir: str | os.PathLike | None = None
                                 ) -> dict[str, tuple[torch.Tensor, FactorTable, torch.Tensor]]:
    """Both splits: train items come from Fashion-MNIST's train split, test items from its test
    split (identities never cross). {"split": (images, factors, class labels)}."""
    from core.data import load_idx_split

    spec.check()
    source_dir = Path(source_dir or FASHION_MNIST_DIR)
    gen = torch.Generator().manual_seed(spec.seed)
    d = torch.float64
    result = {}
    for split, size in (("train", spec.train_size), ("test", spec.test_size)):
        source = load_idx_split(source_dir, split, name="fashion-mnist")
        grids = (torch.arange(len(source), dtype=d), torch.tensor(sorted(spec.rotations), dtype=d),
                 torch.tensor(sorted(spec.scales), dtype=d), torch.tensor(sorted(spec.shifts), dtype=d),
                 torch.tensor(sorted(spec.shifts), dtype=d))
        codes, groups = grouped_codes([g.numel() for g in grids], size, spec.rows_per_group, gen)
        vals = [g[c] for g, c in zip(grids, codes.T)]
        images = transform_images(source.images[codes[:, 0]], vals[1], vals[2], vals[3], vals[4])
        labels = source.labels[codes[:, 0]] if source.labels is not None else None
        result[split] = (images, FactorTable(FASHION_FACTORS, grids, codes, groups), labels)
    return result


# -- names, options and the cache -----------------------------------------------------------------

GENERATORS = {"dsprites": DSpritesSpec, "transformed-fashion-mnist": TransformedFashionSpec}


def is_generated(dataset: str) -> bool:
    return dataset.split(":", 1)[0].lower() in GENERATORS


def parse_spec(dataset: str) -> tuple[str, DSpritesSpec | TransformedFashionSpec]:
    """`dsprites:image_size=64,seed=3` -> ("dsprites", DSpritesSpec(image_size=64, seed=3))."""
    name, _, options = dataset.partition(":")
    name = name.lower()
    spec_type = GENERATORS[name]
    known = {f.name: f for f in fields(spec_type)}
    kwargs = {}
    for item in filter(None, (o.strip() for o in options.split(","))):
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or key not in known:
            raise DataError(f"{name}: unknown option {item!r}; options are {', '.join(known)}")
        default = getattr(spec_type(), key)
        try:
            if isinstance(default, bool):
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(raw)
                kwargs[key] = raw.lower() in ("true", "1")
            elif isinstance(default, tuple):
                kwargs[key] = tuple(float(v) for v in raw.split("/") if v)
            else:
                kwargs[key] = type(default)(raw)
        except ValueError:
            raise DataError(f"{name}: option {key}={raw!r} is not a {type(default).__name__}"
                            + (" (values separated by '/')" if isinstance(default, tuple) else "")) from None
    return name, spec_type(**kwargs)


def cache_key(name: str, spec, split: str) -> str:
    payload = json.dumps({"generator": name, "version": GENERATOR_VERSION, "params": asdict(spec), "split": split},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def _arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.data)
    return h.hexdigest()


def _to_arrays(ds: ImageDataset) -> dict[str, np.ndarray]:
    t = ds.factors
    arrays = {"images": ds.images.numpy(), "codes": t.codes.numpy(),
              "names": np.array(t.names), "num_classes": np.array(ds.num_classes)}
    arrays.update({f"grid_{i}": g.numpy() for i, g in enumerate(t.grids)})
    if ds.labels is not None:
        arrays["labels"] = ds.labels.numpy()
    if t.groups is not None:
        arrays["groups"] = t.groups.numpy()
    return arrays


def _from_arrays(arrays: dict[str, np.ndarray], name: str) -> ImageDataset:
    names = tuple(str(n) for n in arrays["names"])
    grids = tuple(torch.from_numpy(arrays[f"grid_{i}"]) for i in range(len(names)))
    labels = torch.from_numpy(arrays["labels"]) if "labels" in arrays else None
    groups = torch.from_numpy(arrays["groups"]) if "groups" in arrays else None
    return ImageDataset(torch.from_numpy(arrays["images"]), labels, int(arrays["num_classes"]), name,
                        factors=FactorTable(names, grids, torch.from_numpy(arrays["codes"]), groups))


def write_cache(path: Path, ds: ImageDataset) -> None:
    """An uncompressed .npz (loads at disk speed) with a SHA-256 of its arrays, written to a
    temporary file in the same folder and renamed: a reader never sees half a file."""
    arrays = _to_arrays(ds)
    arrays["sha256"] = np.array(_arrays_digest(arrays))
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    atomic_write(path, write)


def read_cache(path: Path, name: str) -> ImageDataset | None:
    """The cached split, or None when the file is missing, unreadable or fails its checksum."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        stored = str(arrays.pop("sha256"))
        if stored != _arrays_digest(arrays):
            return None
        return _from_arrays({k: np.array(v, copy=True) for k, v in arrays.items()}, name)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, io.UnsupportedOperation):
        return None


def generate_split_pair(name: str, spec, source_dir: str | None = None) -> dict[str, ImageDataset]:
    if name == "dsprites":
        return {split: ImageDataset(images, table.codes[:, 0].clone(), len(SHAPES), name, factors=table)
                for split, (images, table) in generate_dsprites(spec).items()}
    return {split: ImageDataset(images, labels, 10 if labels is not None else 0, name, factors=table)
            for split, (images, table, labels) in generate_transformed_fashion(spec, source_dir).items()}


def cache_dir_default() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def load_generated_split(dataset: str, split: str, data_dir: str | None = None,
                         cache_dir: str | os.PathLike | None = None, use_cache: bool = True) -> ImageDataset:
    """One split of a generated dataset, from the cache when a valid copy is there.

    Cache, not on-the-fly: see benchmarks/generated_data.py for the figures (README, "Data with known factors").
    `data_dir` is the Fashion-MNIST IDX folder for transformed-fashion-mnist (default: Debian's);
    it is not part of the cache key, so point it only at Fashion-MNIST itself. The cache lives in
    $VAEZOO_DATA_CACHE or ~/.cache/vae-zoo/generated.
    """
    name, spec = parse_spec(dataset)
    if not use_cache:
        return generate_split_pair(name, spec, data_dir)[split]
    folder = Path(cache_dir) if cache_dir is not None else cache_dir_default()
    path = folder / f"{name}-{split}-{cache_key(name, spec, split)}.npz"
    cached = read_cache(path, name)
    if cached is not None:
        return cached
    pair = generate_split_pair(name, spec, data_dir)
    try:
        for s, ds in pair.items():  # both splits come from one generator stream: keep both
            write_cache(folder / f"{name}-{s}-{cache_key(name, spec, s)}.npz", ds)
    except OSError as err:  # a read-only home still trains, only without the cache
        warnings.warn(f"{name}: cannot write the data cache in {folder} ({err}); generating on every load")
    return pair[split]
