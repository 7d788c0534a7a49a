"""Encoder and decoder networks shaped from the data: MLP or convolutional, optionally conditioned.

A conditioning vector `c` (a one-hot label, a masked image, ...) is concatenated to the encoder's
features and to the decoder's latent input; variants that need no conditioning pass none.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from core.config import ModelConfig

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU}


@dataclass(frozen=True)
class DataShape:
    channels: int
    height: int
    width: int

    @property
    def numel(self) -> int:
        return self.channels * self.height * self.width

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


def mlp(sizes: list[int], activation: str, final_activation: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if final_activation or i < len(sizes) - 2:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def _conv_out(size: int) -> int:
    # kernel 4, stride 2, padding 1 halves the size (rounding down)
    return (size + 2 - 4) // 2 + 1


class _ConvFeatures(nn.Module):
    def __init__(self, shape: DataShape, channels: list[int], activation: str):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, sizes = shape.channels, [(shape.height, shape.width)]
        for c_out in channels:
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), _ACTIVATIONS[activation]()]
            h, w = sizes[-1]
            if min(h, w) < 2:
                raise ValueError(f"image {shape.height}x{shape.width} is too small for {len(channels)} conv layers")
            sizes.append((_conv_out(h), _conv_out(w)))
            c_in = c_out
        self.net = nn.Sequential(*layers)
        self.sizes = sizes  # spatial size before each layer and after the last
        self.out_channels = c_in
        self.out_dim = c_in * sizes[-1][0] * sizes[-1][1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


class GaussianEncoder(nn.Module):
    """q(z | x [, c]): a diagonal Gaussian given by its mean and log-variance."""

    def __init__(self, cfg: ModelConfig, shape: DataShape, cond_dim: int = 0):
        super().__init__()
        if cfg.architecture == "conv":
            self.features: nn.Module = _ConvFeatures(shape, cfg.conv_channels, cfg.activation)
            feat_dim = self.features.out_dim
        else:
            self.features = nn.Flatten()
            feat_dim = shape.numel
        sizes = [feat_dim + cond_dim, *cfg.hidden_dims]
        self.body = mlp(sizes, cfg.activation)
        # One linear layer yields mean and log-variance together: one matmul instead of two.
        self.head = nn.Linear(sizes[-1], 2 * cfg.latent_dim)
        self.cond_dim = cond_dim

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        if self.cond_dim:
            h = torch.cat([h, c.flatten(1).to(h.dtype)], dim=1)
        mean, logvar = self.head(self.body(h)).chunk(2, dim=-1)
        return mean, logvar


class Decoder(nn.Module):
    """p(x | z [, c]) parameters: `params_per_pixel` maps per data element (logits; mean and log-variance; ...)."""

    def __init__(self, cfg: ModelConfig, shape: DataShape, params_per_pixel: int, cond_dim: int = 0):
        super().__init__()
        self.shape, self.params_per_pixel, self.cond_dim = shape, params_per_pixel, cond_dim
        sizes = [cfg.latent_dim + cond_dim, *reversed(cfg.hidden_dims)]
        self.body = mlp(sizes, cfg.activation)
        out_channels = shape.channels * params_per_pixel
        if cfg.architecture == "conv":
            conv = _ConvFeatures(shape, cfg.conv_channels, cfg.activation)  # only to learn the sizes
            self._sizes = conv.sizes
            h, w = conv.sizes[-1]
            self._start = (conv.out_channels, h, w)
            self.to_grid = nn.Sequential(nn.Linear(sizes[-1], conv.out_dim), _ACTIVATIONS[cfg.activation]())
            chans = list(reversed(cfg.conv_channels))
            outs = chans[1:] + [out_channels]
            self.deconvs = nn.ModuleList(nn.ConvTranspose2d(ci, co, 4, stride=2, padding=1) for ci, co in zip(chans, outs))
            self.act = _ACTIVATIONS[cfg.activation]()
            self.out = None
        else:
            self.out = nn.Linear(sizes[-1], shape.numel * params_per_pixel)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        lead = z.shape[:-1]  # (k, B) or (B,)
        z = z.reshape(-1, z.shape[-1])
        if self.cond_dim:
            c = c.flatten(1).to(z.dtype)
            c = c.expand(math.prod(lead) // c.shape[0], *c.shape).reshape(-1, c.shape[-1]) if len(lead) > 1 else c
            z = torch.cat([z, c], dim=-1)
        h = self.body(z)
        s = self.shape
        if self.out is not None:
            out = self.out(h)
        else:
            out = self.to_grid(h).view(-1, *self._start)
            sizes = list(reversed(self._sizes[:-1]))
            for i, deconv in enumerate(self.deconvs):
                out = deconv(out, output_size=sizes[i])
                if i < len(self.deconvs) - 1:
                    out = self.act(out)
        return out.view(*lead, s.channels * self.params_per_pixel, s.height, s.width)
