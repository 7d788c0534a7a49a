"""Dynamic binarisation draws each pixel's bit with the stated probability: x / 255 up to the
15-bit resolution of its uniform draw (core.data.dynamic_binarize), exactly per threshold and
measured per grey level over many draws."""
from __future__ import annotations

import math

import torch

from core.batches import TrainingSource
from core.data import (ImageDataset, UniformStream, _thresholds_less_one, _uniform_15_bit, binarize_below,
                       dynamic_binarize, dynamic_one_probability, to_float)

DRAWS_PER_LEVEL = 20_000


def test_the_stated_probability_is_x_over_255_within_half_a_15_bit_step():
    for level in range(256):
        assert abs(dynamic_one_probability(level) - level / 255) <= 2**-16
    assert dynamic_one_probability(0) == 0.0 and dynamic_one_probability(255) == 1.0


def test_each_threshold_admits_exactly_the_stated_share_of_the_15_bit_draws():
    # u <= t for u uniform in {0, ..., 2**15 - 1} happens (t + 1) / 2**15 of the time.
    thresholds = _thresholds_less_one(torch.arange(256, dtype=torch.uint8)).tolist()
    assert [(t + 1) / 2**15 for t in thresholds] == [dynamic_one_probability(x) for x in range(256)]


def test_any_shape_and_the_given_generator():
    images = torch.randint(0, 256, (3, 1, 5, 5), dtype=torch.uint8)  # 75 pixels: not whole 64-bit words
    first = dynamic_binarize(images, torch.Generator().manual_seed(1))
    assert first.shape == images.shape and torch.equal(first, dynamic_binarize(images, torch.Generator().manual_seed(1)))
    assert torch.equal(first[images == 0], torch.zeros(int((images == 0).sum())))
    assert torch.equal(first[images == 255], torch.ones(int((images == 255).sum())))


def test_the_frequency_of_ones_per_grey_level_matches_the_stated_probability():
    levels = torch.arange(256, dtype=torch.uint8)
    images = levels.repeat(DRAWS_PER_LEVEL, 1).reshape(DRAWS_PER_LEVEL, 1, 16, 16)  # every level in every image
    bits = dynamic_binarize(images, torch.Generator().manual_seed(0))
    assert bits.dtype == torch.float32 and set(bits.unique().tolist()) <= {0.0, 1.0}
    ones = bits.reshape(DRAWS_PER_LEVEL, 256).sum(0).double()
    for level in range(256):
        p = dynamic_one_probability(level)
        # Five binomial standard deviations (a false alarm about once in 10**4 runs of all 256
        # levels; the seed is fixed).
        bound = 5 * math.sqrt(DRAWS_PER_LEVEL * p * (1 - p))
        assert abs(ones[level].item() - DRAWS_PER_LEVEL * p) <= bound, (level, ones[level].item(), DRAWS_PER_LEVEL * p)
    # The ends are certain (a draw of x / 256 would leave about 78 zeros at level 255) ...
    assert ones[0] == 0 and ones[255] == DRAWS_PER_LEVEL
    # ... and over all levels together, five standard deviations are about 0.5 of x / 255 - x / 256.
    expected = [DRAWS_PER_LEVEL * dynamic_one_probability(x) for x in range(256)]
    spread = math.sqrt(sum(e * (1 - e / DRAWS_PER_LEVEL) for e in expected))
    assert abs(ones.sum().item() - sum(expected)) <= 5 * spread
    assert abs(sum(DRAWS_PER_LEVEL * x / 256 for x in range(256)) - sum(expected)) > 10 * spread


def test_training_batches_draw_fresh_bits_from_the_torch_generator():
    images = torch.full((64, 1, 4, 4), 128, dtype=torch.uint8)
    source = TrainingSource(ImageDataset(images, None, 0, "grey"), dynamic=True, device=torch.device("cpu"))
    idx = torch.arange(64)
    torch.manual_seed(5)
    source.start_epoch()
    first, second = source.batch(idx).x, source.batch(idx).x
    torch.manual_seed(5)
    assert not torch.equal(source.batch(idx).x, first)  # mid-epoch the stream goes on ...
    source.start_epoch()
    assert torch.equal(source.batch(idx).x, first)  # ... and from an epoch's start it follows from the seed
    assert not torch.equal(first, second)  # a new draw per batch
    assert torch.equal(to_float(images), images.float() / 255)  # without dynamic: the grey levels


def test_the_uniform_stream_hands_out_one_draw_in_order_each_uniform_once():
    torch.manual_seed(3)
    stream = UniformStream()
    sizes = [1000, 7, UniformStream.CHUNK - 1007, 10]  # the last one no longer fits the first chunk
    taken = [stream.take(n) for n in sizes]
    assert [len(t) for t in taken] == sizes
    torch.manual_seed(3)
    chunk = _uniform_15_bit(torch.Size([UniformStream.CHUNK]), None, torch.device("cpu"))
    assert torch.equal(torch.cat(taken[:3]), chunk)  # the first chunk exactly, in order, none twice
    assert taken[3].min() >= 0 and not torch.equal(taken[3], chunk[:10])  # 15 bits: no sign bit; a new draw
    # a take larger than a chunk is one draw of its own size
    torch.manual_seed(4)
    stream.restart()
    big = stream.take(UniformStream.CHUNK + 5)
    torch.manual_seed(4)
    assert torch.equal(big, _uniform_15_bit(torch.Size([UniformStream.CHUNK + 5]), None, torch.device("cpu")))


def test_binarize_below_is_dynamic_binarize_given_its_uniforms():
    images = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8)
    bits = dynamic_binarize(images, torch.Generator().manual_seed(9))
    uniform = _uniform_15_bit(images.shape, torch.Generator().manual_seed(9), images.device)
    assert torch.equal(binarize_below(images, uniform), bits)
