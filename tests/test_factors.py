"""Generated data with known factors (core.factors): determinism, the DC-IGN one-factor batches,
the on-disk cache, and loading by name through core.data. Small sizes: generation is the subject."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from core import factors as F
from core.data import DataError
from core.datasets import load_split, prepare_data

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
SMALL_SPRITES = "dsprites:train_size=480,test_size=160,seed={seed}"
SMALL_FASHION = "transformed-fashion-mnist:train_size=320,test_size=96,seed={seed}"


def generate(dataset: str):
    name, spec = F.parse_spec(dataset)
    return F.generate_split_pair(name, spec, FASHION_MNIST)


def digest(ds) -> str:
    h = hashlib.sha256(ds.images.numpy().tobytes())
    h.update(ds.factors.codes.numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def sprites():
    return generate(SMALL_SPRITES.format(seed=0))


@pytest.fixture(scope="module")
def fashion():
    return generate(SMALL_FASHION.format(seed=0))


# -- determinism -----------------------------------------------------------------------------------

@pytest.mark.parametrize("template", [SMALL_SPRITES, SMALL_FASHION])
def test_same_seed_same_data_other_seed_other_data(template):
    a, b, c = (generate(template.format(seed=s)) for s in (0, 0, 1))
    for split in ("train", "test"):
        assert torch.equal(a[split].images, b[split].images)
        assert torch.equal(a[split].factors.codes, b[split].factors.codes)
        assert not torch.equal(a[split].images, c[split].images)
        assert not torch.equal(a[split].factors.codes, c[split].factors.codes)


def test_dsprites_shape_binary_images_and_factor_table(sprites):
    train = sprites["train"]
    assert train.images.shape == (480, 1, 32, 32) and train.images.dtype == torch.uint8
    assert set(train.images.unique().tolist()) == {0, 255}
    t = train.factors
    assert t.names == ("shape", "scale", "orientation", "x", "y")
    assert [g.numel() for g in t.grids] == [3, 6, 40, 16, 16]
    assert t.values.shape == (480, 5) and t.values.dtype == torch.float32
    for k, grid in enumerate(t.grids):  # values are the grid entries the codes point at
        assert torch.equal(t.values[:, k], grid[t.codes[:, k]].float())
    assert torch.equal(train.labels, t.codes[:, 0])  # a sprite's class is its shape
    assert (train.images.flatten(1).amax(1) == 255).all()  # no empty image: nothing is clipped away


def test_dsprites_images_follow_their_factors():
    """Rendering follows the factors: x from 0 to 1 moves the centre of mass across the image less
    the margins, and the shapes' areas are what their geometry says."""
    spec = F.DSpritesSpec(image_size=64)
    n = 5
    shape = torch.tensor([0, 1, 2, 0, 0])
    scale = torch.full((n,), 1.0, dtype=torch.float64)
    angle = torch.zeros(n, dtype=torch.float64)
    x = torch.tensor([0.0, 0.5, 0.5, 0.5, 1.0], dtype=torch.float64)
    y = torch.full((n,), 0.5, dtype=torch.float64)
    img = F.render_sprites(shape, scale, angle, x, y, spec.image_size).float()[:, 0]
    cols = torch.arange(64, dtype=torch.float32)
    com_x = (img.sum(1) * cols).sum(1) / img.sum((1, 2))
    # pixel-centre sampling moves an edge by up to one pixel
    assert com_x[4] - com_x[0] == pytest.approx(64 - 2 * (0.18 * 64 * 2 ** 0.5 + 0.5), abs=1.0)
    # the square is 2r wide, the ellipse 2r by r, the heart in between: areas in that order
    area = img.sum((1, 2)) / 255
    assert area[3] > area[2] > area[1]
    side = 2 * 0.18 * 64  # the square's side, within a pixel either way once sampled
    assert (side - 1) ** 2 <= area[3] <= (side + 1) ** 2


def test_full_grid_holds_every_combination_once():
    pair = F.generate_split_pair("dsprites", F.DSpritesSpec(image_size=16, num_scales=2, num_orientations=3,
                                                              num_positions=4, full_grid=True))
    codes = torch.cat([pair["train"].factors.codes, pair["test"].factors.codes])
    assert codes.shape[0] == 3 * 2 * 3 * 4 * 4
    assert torch.unique(codes, dim=0).shape[0] == codes.shape[0]


def test_transformed_fashion_keeps_identity_and_applies_the_transform(fashion):
    from core.data import load_idx_split

    train = fashion["train"]
    source = load_idx_split(FASHION_MNIST, "train")
    t = train.factors
    assert train.images.shape == (320, 1, 28, 28) and train.images.dtype == torch.uint8
    assert t.names == ("item", "rotation", "scale", "x", "y")
    items = t.codes[:, 0]
    assert torch.equal(train.labels, source.labels[items])  # the identity carries its class
    # a row with the identity transform (rotation 0, scale 1, no shift) is the source item itself
    identity = F.transform_images(source.images[items[:8]], torch.zeros(8), torch.ones(8), torch.zeros(8), torch.zeros(8))
    assert torch.equal(identity, source.images[items[:8]])
    # a whole-pixel shift moves the item: +2 in x equals rolling the unshifted image 2 columns right
    shifted = F.transform_images(source.images[items[:8]], torch.zeros(8), torch.ones(8), torch.full((8,), 2.0), torch.zeros(8))
    assert torch.equal(shifted[..., 2:], source.images[items[:8]][..., :-2])
    # test identities come from Fashion-MNIST's test split: ids up to 10,000
    assert fashion["test"].factors.grids[0].numel() == 10_000


# -- DC-IGN batches --------------------------------------------------------------------------------

def held_and_varying(codes: torch.Tensor) -> tuple[list[int], list[int]]:
    distinct = [codes[:, k].unique().numel() for k in range(codes.shape[1])]
    return [k for k, d in enumerate(distinct) if d == 1], [k for k, d in enumerate(distinct) if d > 1]


@pytest.mark.parametrize("which", ["sprites", "fashion"])
def test_one_factor_batch_varies_exactly_the_named_factor(which, request):
    table = request.getfixturevalue(which)["train"].factors
    gen = torch.Generator().manual_seed(0)
    for name in table.names:
        f = table.index(name)
        for _ in range(20):
            rows = F.one_factor_batch(table, name, 16, gen)
            held, varying = held_and_varying(table.codes[rows])
            assert varying == [f], f"{name}: factors {[table.names[k] for k in varying]} vary"
            assert rows.unique().numel() == rows.numel() == 16


def test_one_factor_batch_is_deterministic_given_the_generator(sprites):
    table = sprites["train"].factors
    draws = [[F.one_factor_batch(table, "x", 8, torch.Generator().manual_seed(s)) for _ in range(3)] for s in (5, 5)]
    assert all(torch.equal(a, b) for a, b in zip(*draws))
    assert not torch.equal(F.one_factor_batch(table, "x", 8, torch.Generator().manual_seed(6)), draws[0][0])


def test_one_factor_epoch_covers_every_row_once_in_mixed_order(sprites):
    table = sprites["train"].factors
    batches = list(F.one_factor_epoch(table, 16, torch.Generator().manual_seed(0)))
    for name, rows in batches:
        _, varying = held_and_varying(table.codes[rows])
        assert varying == [table.index(name)]
    rows = torch.cat([r for _, r in batches])
    assert torch.equal(rows.sort().values, torch.arange(len(table)))  # grouped data: each row once
    order = [name for name, _ in batches]
    assert {order.count(n) for n in table.names} == {480 // 16 // 5}  # the groups cycle over factors
    assert order != sorted(order, key=table.names.index)  # shuffled across factors
    # longer lines than the batch are cut into pieces that still vary
    small = list(F.one_factor_epoch(table, 5, torch.Generator().manual_seed(0)))
    assert all(2 <= r.numel() <= 5 and held_and_varying(table.codes[r])[1] == [table.index(n)] for n, r in small)


def test_full_grid_lines_and_missing_lines():
    pair = F.generate_split_pair("dsprites", F.DSpritesSpec(image_size=16, num_scales=2, num_orientations=3,
                                                              num_positions=4, full_grid=True, test_fraction=0.01))
    table = pair["train"].factors
    gen = torch.Generator().manual_seed(0)
    for name in table.names:
        rows = F.one_factor_batch(table, name, 64, gen)
        assert held_and_varying(table.codes[rows])[1] == [table.index(name)]
    one_row = table.select(slice(0, 1))
    with pytest.raises(DataError, match="no rows share all factors but 'x'"):
        F.one_factor_batch(one_row, "x", 4, gen)
    with pytest.raises(DataError, match="unknown factor 'colour'"):
        F.one_factor_batch(table, "colour", 4, gen)


def test_shuffled_batches_cover_every_row_once():
    batches = list(F.shuffled_batches(50, 16, torch.Generator().manual_seed(0)))
    assert [b.numel() for b in batches] == [16, 16, 16, 2]
    assert torch.equal(torch.cat(batches).sort().values, torch.arange(50))


# -- the cache -------------------------------------------------------------------------------------

def test_cache_returns_the_generated_bytes_and_regenerates_a_corrupt_file(tmp_path, sprites):
    dataset = SMALL_SPRITES.format(seed=0)
    first = F.load_generated_split(dataset, "train", cache_dir=tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and all(f.endswith(".npz") for f in files)  # both splits, no temporaries left
    assert digest(first) == digest(sprites["train"])
    path = next(tmp_path.glob("dsprites-train-*.npz"))
    stamp = path.stat().st_mtime_ns
    again = F.load_generated_split(dataset, "train", cache_dir=tmp_path)
    assert path.stat().st_mtime_ns == stamp  # read, not rewritten
    assert torch.equal(again.images, sprites["train"].images)
    assert torch.equal(again.factors.codes, sprites["train"].factors.codes)
    assert torch.equal(again.factors.groups, sprites["train"].factors.groups)
    assert torch.equal(again.labels, sprites["train"].labels)
    assert again.factors.names == sprites["train"].factors.names

    # flip one byte inside the images: the zip still opens, the checksum must catch it
    raw = bytearray(path.read_bytes())
    at = raw.find(b"\xff", len(raw) // 3)
    raw[at] = 0x00
    path.write_bytes(bytes(raw))
    assert F.read_cache(path, "dsprites") is None
    repaired = F.load_generated_split(dataset, "train", cache_dir=tmp_path)
    assert digest(repaired) == digest(sprites["train"])
    assert F.read_cache(path, "dsprites") is not None  # rewritten whole

    # a well-formed file whose images differ from what its SHA-256 was taken over (the zip's own
    # CRCs pass): only the checksum can tell
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["images"] = arrays["images"].copy()
    arrays["images"][0, 0, 0, 0] ^= 0xFF
    np.savez(path, **arrays)
    assert F.read_cache(path, "dsprites") is None
    assert digest(F.load_generated_split(dataset, "train", cache_dir=tmp_path)) == digest(sprites["train"])

    path.write_bytes(raw[: len(raw) // 2])  # truncated
    assert digest(F.load_generated_split(dataset, "train", cache_dir=tmp_path)) == digest(sprites["train"])


def test_cache_key_changes_with_every_parameter_seed_and_split():
    name, spec = F.parse_spec("dsprites")
    keys = {F.cache_key(name, spec, "train"), F.cache_key(name, spec, "test"),
            F.cache_key(*F.parse_spec("dsprites:seed=1"), "train"),
            F.cache_key(*F.parse_spec("dsprites:image_size=64"), "train"),
            F.cache_key(*F.parse_spec("transformed-fashion-mnist"), "train")}
    assert len(keys) == 5


# -- by name through core.data ---------------------------------------------------------------------

def test_prepare_data_loads_generated_data_by_name_with_factors(tmp_path, monkeypatch):
    monkeypatch.setenv(F.CACHE_ENV, str(tmp_path))
    data = prepare_data(SMALL_SPRITES.format(seed=0), None, "static", train_limit=100)
    assert len(data.train) == 100 and len(data.test) == 160
    assert data.train.factors is not None and len(data.train.factors) == 100
    assert data.train.factors.groups is not None and data.train.factors.groups.numel() == 100
    assert data.shape.as_tuple() == (1, 32, 32) and data.num_classes == 3
    assert list(tmp_path.iterdir())  # the cache went where the environment said
    fashion = load_split(SMALL_FASHION.format(seed=0), "test", FASHION_MNIST)
    assert fashion.factors.names[0] == "item" and fashion.num_classes == 10


@pytest.mark.parametrize("dataset, message", [
    ("dsprites:colour=red", "unknown option 'colour=red'"),
    ("dsprites:image_size=big", "image_size='big' is not a int"),
    ("dsprites:full_grid=maybe", "full_grid='maybe' is not a bool"),
    ("dsprites:image_size=4", "image_size must be at least 8"),
    ("transformed-fashion-mnist:scales=0/1", "scales must be positive"),
])
def test_bad_options_fail_naming_the_option(dataset, message, tmp_path):
    with pytest.raises(DataError, match=message):
        F.load_generated_split(dataset, "train", cache_dir=tmp_path)
