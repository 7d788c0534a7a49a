"""This machine's fp32 matrix-multiply peak and the matmul FLOPs of the MLP VAE, shared by the
benchmark scripts that report a share of the peak (train_throughput.py, nll_throughput.py).

FLOPs are counted as 2 per multiply-accumulate of the linear layers only: bias adds, activations,
the reparameterisation, the likelihood and the optimiser are elementwise and not counted (they
are overhead the share of the peak makes visible, not useful work).
"""
from __future__ import annotations

import time

import torch


def synchronize(device: str) -> None:
    """Wait for the GPU's queued work before reading a clock (a no-op on the CPU)."""
    if device != "cpu":
        torch.cuda.synchronize()


def matmul_peak_flops(n: int = 2048, repeats: int = 10, device: str = "cpu", dtype: torch.dtype = torch.float32) -> float:
    """Best-of-`repeats` FLOP/s of one n x n matrix product: fp32 with torch's current threads on
    the CPU; on a GPU `dtype` (fp32, or bf16 for the autocast rows) with n = 8192, timed with a
    synchronize after each product. On a CPU a non-fp32 dtype is timed on 512 x 512 products."""
    if device != "cpu":
        n = max(n, 8192)
    elif dtype != torch.float32:  # a CPU without bf16 instructions does a 2048^3 bf16 product in minutes
        n, repeats = min(n, 512), min(repeats, 3)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):  # warm-up: thread pool, page faults, MKL's (or cuBLAS's) dispatch
        a @ b
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def _linear_flops(sizes: list[int]) -> list[int]:
    return [2 * a * b for a, b in zip(sizes[:-1], sizes[1:])]


def encoder_layer_flops(pixels: int, hidden: list[int], latent: int) -> list[int]:
    """Per image: the body pixels -> hidden..., then one head to mean and log-variance (2 * latent)."""
    return _linear_flops([pixels, *hidden]) + _linear_flops([hidden[-1] if hidden else pixels, 2 * latent])


def decoder_layer_flops(pixels: int, hidden: list[int], latent: int) -> list[int]:
    """Per latent sample: latent -> reversed(hidden)... -> pixels (one logit per pixel, Bernoulli)."""
    return _linear_flops([latent, *reversed(hidden), pixels])


def forward_flops(pixels: int, hidden: list[int], latent: int) -> int:
    """One image through encoder and decoder with one latent sample."""
    return sum(encoder_layer_flops(pixels, hidden, latent)) + sum(decoder_layer_flops(pixels, hidden, latent))


def train_flops_per_image(pixels: int, hidden: list[int], latent: int) -> int:
    """Forward + backward of one image (one latent sample). The backward pass computes, for every
    linear layer, the weight gradient (as many FLOPs as its forward) and, for every layer but the
    encoder's first, the gradient of its input (as many again): the images need no gradient."""
    fwd = forward_flops(pixels, hidden, latent)
    first = encoder_layer_flops(pixels, hidden, latent)[0]
    return 3 * fwd - first


def nll_flops(images: int, k: int, pixels: int, hidden: list[int], latent: int) -> int:
    """Useful matmul FLOPs of the k-sample importance-sampled NLL over `images` images: the encoder
    once per image, the decoder once per latent sample (k per image). An implementation that
    re-encodes an image for every chunk of samples does more work than this; it is not credited."""
    return images * (sum(encoder_layer_flops(pixels, hidden, latent))
                     + k * sum(decoder_layer_flops(pixels, hidden, latent)))
