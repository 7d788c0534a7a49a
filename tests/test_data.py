"""Data: IDX files (gz or plain) and their errors, dataset folders, binarisation, labelled subsets,
and the real Fashion-MNIST that CI installs with Debian's dataset-fashion-mnist package."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from core.data import (
    DataError,
    ImageDataset,
    labelled_subset,
    load_idx_split,
    prepare_split,
    read_idx,
    static_binarize,
    to_float,
    write_idx,
)
from core.datasets import load_split, prepare_data
from conftest import N_TEST, N_TRAIN, NUM_CLASSES, make_images, write_idx_folder

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


# -- IDX round trips ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_round_trips_write_idx(tmp_path, name, dtype):
    rng = np.random.RandomState(0)
    array = (rng.randn(5, 3, 4) * 100).astype(dtype) if dtype not in (np.uint8,) else rng.randint(0, 256, (5, 3, 4)).astype(dtype)
    path = tmp_path / name
    write_idx(path, array)
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == name.endswith(".gz")  # gzip exactly when the name says so
    back = read_idx(path)
    assert back.shape == array.shape
    assert np.array_equal(back, array)


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(array=hnp.arrays(dtype=st.sampled_from([np.uint8, np.int8, np.dtype(">i2"), np.int32, np.float32, np.float64]),
                        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5)),
       gz=st.booleans())
def test_read_idx_round_trips_any_array(tmp_path, array, gz):
    path = tmp_path / ("h.gz" if gz else "h")
    write_idx(path, array)
    back = read_idx(path)
    assert back.shape == array.shape and back.dtype.kind == array.dtype.kind
    assert back.dtype.itemsize == array.dtype.itemsize
    assert np.array_equal(back, array, equal_nan=array.dtype.kind == "f")


def test_idx_header_is_the_mnist_layout(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x", array)
    raw = (tmp_path / "x").read_bytes()
    assert raw[:4] == bytes([0, 0, 0x08, 3])  # magic 0x00000803 as in train-images-idx3-ubyte
    assert raw[4:16] == (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + (4).to_bytes(4, "big")
    assert raw[16:] == array.tobytes()


def test_gzip_is_told_by_content_not_name(tmp_path):
    array = np.arange(10, dtype=np.uint8)
    write_idx(tmp_path / "plain.gz", array, compress=False)
    write_idx(tmp_path / "packed", array, compress=True)
    assert np.array_equal(read_idx(tmp_path / "plain.gz"), array)
    assert np.array_equal(read_idx(tmp_path / "packed"), array)


# -- IDX errors name the file ---------------------------------------------------------------------

def _expect_data_error(path, *words):
    with pytest.raises(DataError) as err:
        read_idx(path)
    message = str(err.value)
    assert str(path) in message, message
    for word in words:
        assert word in message, message
    return message


def test_truncated_idx_file_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    write_idx(path, np.zeros((10, 4, 4), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-7])
    _expect_data_error(path, "truncated")
    # a header cut short too
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    _expect_data_error(path, "truncated")


def test_truncated_gzip_idx_file_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(path, np.random.RandomState(0).randint(0, 256, (50, 8, 8)).astype(np.uint8))
    path.write_bytes(path.read_bytes()[:-40])
    _expect_data_error(path)


def test_corrupt_gzip_idx_file_is_refused_naming_the_file(tmp_path):
    # A gzip member whose first deflate block has the reserved block type 3: zlib rejects it.
    path = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(path, np.random.RandomState(0).randint(0, 256, (50, 8, 8)).astype(np.uint8))
    raw = bytearray(path.read_bytes())
    assert raw[3] == 0  # no optional gzip header fields: the deflate stream starts at byte 10
    raw[10] = 0b111  # BFINAL=1, BTYPE=11 (reserved)
    path.write_bytes(bytes(raw))
    _expect_data_error(path)


def test_wrong_magic_number_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    write_idx(path, np.zeros((3, 4, 4), dtype=np.uint8))
    raw = bytearray(path.read_bytes())
    raw[2] = 0x07  # not an IDX type code
    path.write_bytes(bytes(raw))
    _expect_data_error(path, "magic")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    _expect_data_error(path, "magic")
    path.write_bytes(b"")
    _expect_data_error(path)


def test_trailing_bytes_are_refused(tmp_path):
    path = tmp_path / "x"
    write_idx(path, np.zeros((3, 4), dtype=np.uint8))
    path.write_bytes(path.read_bytes() + b"\x00")
    _expect_data_error(path, "trailing")


def test_missing_file_is_a_data_error(tmp_path):
    _expect_data_error(tmp_path / "nope")


def test_label_and_image_count_mismatch_names_the_labels_file(tmp_path):
    images, labels = make_images(20, seed=0)
    folder = write_idx_folder(tmp_path / "d", (images, labels[:19]), make_images(8, seed=1))
    with pytest.raises(DataError) as err:
        load_idx_split(folder, "train")
    message = str(err.value)
    assert "train-labels-idx1-ubyte" in message and "19" in message and "20" in message


@pytest.mark.parametrize("top,refused", [(10**9, True), (65_536, True), (65_535, False)])
def test_absurd_label_values_are_refused_naming_the_labels_file(tmp_path, top, refused):
    """num_classes is the largest label plus one: a stray 10**9 would size one-hot labels,
    cvae's conditioning and m2's classifier by it. More than 65,536 classes is refused; the
    largest accepted label (65,535) is the control."""
    images, labels = make_images(20, seed=0)
    labels = labels.astype(np.int32)
    labels[7] = top
    folder = write_idx_folder(tmp_path / "d", (images, labels), make_images(8, seed=1))
    if not refused:
        assert load_idx_split(folder, "train").num_classes == 65_536
        return
    with pytest.raises(DataError) as err:
        load_idx_split(folder, "train")
    message = str(err.value)
    assert str(folder / "train-labels-idx1-ubyte.gz") in message and f"label {top}" in message, message
    assert "65,536" in message and len(message.splitlines()) == 1


# -- dataset folders ------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_load_split_finds_gz_or_plain_files_in_a_folder(tmp_path, gz):
    train, test = make_images(40, seed=0), make_images(12, seed=1)
    folder = write_idx_folder(tmp_path / ("gz" if gz else "plain"), train, test, gz=gz)
    ds = load_split(str(folder), "train")
    assert isinstance(ds, ImageDataset)
    assert ds.images.shape == (40, 1, 8, 8) and ds.images.dtype == torch.uint8
    assert torch.equal(ds.images[:, 0], torch.from_numpy(train[0]))
    assert torch.equal(ds.labels, torch.from_numpy(train[1].astype(np.int64)))
    assert ds.num_classes == NUM_CLASSES and ds.name == folder.name
    t = load_split(str(folder), "test")
    assert len(t) == 12 and torch.equal(t.images[:, 0], torch.from_numpy(test[0]))
    # the images are writable copies, not views of a read-only buffer
    t.images[0, 0, 0, 0] = 7


def test_load_split_errors_name_the_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_idx_split(tmp_path / "missing", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        load_split(str(tmp_path / "empty"), "train")
    assert "empty" in str(err.value) and "train-images-idx3-ubyte" in str(err.value)
    with pytest.raises(DataError, match="split"):
        load_split(str(tmp_path / "empty"), "validation")


def test_prepare_data_limits_and_binarises(idx_folder):
    data = prepare_data(str(idx_folder), None, "static", train_limit=100, test_limit=30)
    assert len(data.train) == 100 and len(data.test) == 30 and not data.dynamic_train
    assert set(data.train.images.unique().tolist()) <= {0, 255}
    assert set(data.test.images.unique().tolist()) <= {0, 255}
    assert data.num_classes == NUM_CLASSES and data.shape.as_tuple() == (1, 8, 8)
    dyn = prepare_data(str(idx_folder), None, "dynamic")
    assert dyn.dynamic_train and len(dyn.train) == N_TRAIN and len(dyn.test) == N_TEST
    assert len(dyn.train.images.unique()) > 2  # training images stay grey: binarised per batch
    assert set(dyn.test.images.unique().tolist()) <= {0, 255}  # one fixed draw of the test set
    again = prepare_data(str(idx_folder), None, "dynamic")
    assert torch.equal(dyn.test.images, again.test.images)
    none = prepare_data(str(idx_folder), None, "none")
    assert torch.equal(none.test.images[:, 0], torch.from_numpy(make_images(N_TEST, 1)[0]))


# -- binarisation ---------------------------------------------------------------------------------

def test_static_binarize_is_deterministic_per_seed_and_gives_0_or_255():
    images = torch.randint(0, 256, (200, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    a, b, c = static_binarize(images, 3), static_binarize(images, 3), static_binarize(images, 4)
    assert a.dtype == torch.uint8 and a.shape == images.shape
    assert set(a.unique().tolist()) <= {0, 255}
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(images, torch.randint(0, 256, (200, 1, 8, 8), generator=torch.Generator().manual_seed(0),
                                             dtype=torch.uint8))  # input untouched
    # 0 stays 0, 255 stays 255, and grey pixels are on with their intensity as probability
    assert torch.all(a[images == 0] == 0) and torch.all(a[images == 255] == 255)
    grey = torch.full((100_000,), 64, dtype=torch.uint8)
    p = 64 / 255
    share = (static_binarize(grey, 0) == 255).double().mean().item()
    assert abs(share - p) < 5 * (p * (1 - p) / 100_000) ** 0.5


def test_to_float_scales_and_dynamic_draws_fresh_binarisations():
    images = torch.tensor([0, 51, 255], dtype=torch.uint8)
    torch.testing.assert_close(to_float(images), torch.tensor([0.0, 0.2, 1.0]))
    many = images.repeat(20_000)
    d1 = to_float(many, dynamic=True, generator=torch.Generator().manual_seed(0))
    d2 = to_float(many, dynamic=True, generator=torch.Generator().manual_seed(1))
    assert set(d1.unique().tolist()) <= {0.0, 1.0} and not torch.equal(d1, d2)
    assert abs(d1.view(-1, 3)[:, 1].mean().item() - 0.2) < 5 * (0.16 / 20_000) ** 0.5


def test_prepare_split_binarises_test_with_its_own_seed():
    ds = ImageDataset(torch.full((50, 1, 4, 4), 128, dtype=torch.uint8), torch.zeros(50, dtype=torch.long), 1, "g")
    assert prepare_split(ds, "dynamic", "train") is ds
    assert prepare_split(ds, "none", "test") is ds
    test = prepare_split(ds, "dynamic", "test")
    assert torch.equal(test.images, static_binarize(ds.images, 1))
    assert torch.equal(prepare_split(ds, "static", "train").images, static_binarize(ds.images, 0))


# -- labelled subsets -----------------------------------------------------------------------------

def test_labelled_subset_is_class_balanced_with_exact_counts():
    labels = torch.arange(1000) % 10
    idx = labelled_subset(labels, 100, 10, seed=0)
    assert len(idx) == 100 and len(set(idx.tolist())) == 100
    assert torch.equal(torch.bincount(labels[idx], minlength=10), torch.full((10,), 10))
    # the remainder goes to the first classes
    idx = labelled_subset(labels, 23, 10, seed=0)
    assert torch.bincount(labels[idx], minlength=10).tolist() == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert torch.equal(idx, idx.sort().values)


def test_labelled_subset_is_reproducible_with_the_seed():
    labels = torch.randint(0, 4, (500,), generator=torch.Generator().manual_seed(0))
    a = labelled_subset(labels, 40, 4, seed=7)
    b = labelled_subset(labels, 40, 4, seed=7)
    c = labelled_subset(labels, 40, 4, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.bincount(labels[c], minlength=4), torch.full((4,), 10))


def test_labelled_subset_refuses_too_few_labels_or_classes():
    labels = torch.arange(100) % 10
    with pytest.raises(DataError, match="9 < 10"):
        labelled_subset(labels, 9, 10)
    with pytest.raises(DataError):
        labelled_subset(labels, 101, 10)
    with pytest.raises(DataError, match="class"):
        labelled_subset(torch.tensor([0, 0, 0, 1]), 4, 2)  # class 1 has one example, two asked


# -- the real Fashion-MNIST (installed by CI via apt: dataset-fashion-mnist) ------------------------

def test_debian_fashion_mnist_loads_in_full():
    train = load_split("fashion-mnist", "train")
    test = load_split("fashion-mnist", "test")
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    assert train.name == test.name == "fashion-mnist"
    assert train.num_classes == test.num_classes == 10
    assert torch.equal(train.labels.unique(), torch.arange(10))
    assert torch.equal(test.labels.unique(), torch.arange(10))
    # Fashion-MNIST is balanced: 6000 / 1000 per class
    assert torch.equal(torch.bincount(train.labels), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(test.labels), torch.full((10,), 1000))
    assert train.images.max() == 255 and train.images.min() == 0
    # and it is read from the Debian folder, gz files included
    direct = load_idx_split(FASHION_MNIST, "test")
    assert torch.equal(direct.images, test.images)
