"""Kulkarni, Whitney, Kohli & Tenenbaum (2015): the Deep Convolutional Inverse Graphics Network.

A convolutional VAE whose latent is split into named groups, one per generative factor
(`groups`: factor name -> number of dimensions, in that order from dimension 0), and the rest,
the intrinsic (identity) group. It trains on one-factor batches (core.factor_table: one factor
varies, every other is held), of every factor, shuffled together as the paper does. In the
forward pass every latent outside the varying factor's group is clamped to the batch mean; on the
backward pass their gradient is replaced by `invariance_strength * (z - mean)`, which pulls them
towards invariance; the varying group keeps its true gradient. A batch that varies a factor
without a group frees the intrinsic group (the paper's identity batches).

We clamp to the batch *mean*, as the paper's text says; the authors' code clamps to the first
sample of the batch. The replacement gradient is per example and does not scale with the loss
(the loss is a batch mean), as in the authors' code.

Data parallel: each worker clamps to the mean of its own share of the global batch. A share in
which no factor varies (a line cut so that one worker's rows hold one value of the factor, or a
single row) holds every factor: there every latent, intrinsic group included, is clamped.
"""
from __future__ import annotations

import torch
from pydantic import Field, field_validator

from core.factor_table import one_factor_epoch
from core.registry import register_variant
from core.variant import Variant, VariantOptions

# Batch.varying_factor of a worker's share in which every factor is held.
NO_FACTOR_VARIES = "(none)"


class DCIGNOptions(VariantOptions):
    # dsprites' continuous factors one dimension each; shape, with no group, is intrinsic.
    groups: dict[str, int] = Field(default_factory=lambda: {"scale": 1, "orientation": 1, "x": 1, "y": 1},
                                   description="factor name -> latent dimensions, assigned from dimension 0 in order")
    invariance_strength: float = Field(1.0, ge=0, description="clamped latents' gradient is strength * (z - mean)")

    @field_validator("groups")
    @classmethod
    def _positive(cls, groups: dict[str, int]) -> dict[str, int]:
        bad = {k: v for k, v in groups.items() if v < 1}
        if bad:
            raise ValueError(f"every latent group needs at least one dimension, got {bad}")
        return groups


class ClampToMean(torch.autograd.Function):
    """Forward: z (..., B, D) with the dims where `free` is False replaced by their mean over the
    batch (dim -2). Backward: the free dims get the incoming gradient; the clamped dims get
    strength * (z - mean) in place of their true gradient."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, free: torch.Tensor, strength: float) -> torch.Tensor:
        mean = z.mean(dim=-2, keepdim=True)
        ctx.save_for_backward(z, free)
        ctx.strength = strength
        return torch.where(free, z, mean.expand_as(z))

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        z, free = ctx.saved_tensors
        pull = ctx.strength * (z - z.mean(dim=-2, keepdim=True))
        return torch.where(free, grad_out, pull.to(grad_out.dtype)), None, None


def clamp_to_mean(z: torch.Tensor, free: torch.Tensor, strength: float) -> torch.Tensor:
    return ClampToMean.apply(z, free, strength)


@register_variant
class DCIGN(Variant):
    name = "dcign"
    paper = "Kulkarni, Whitney, Kohli & Tenenbaum 2015, Deep Convolutional Inverse Graphics Network (NeurIPS)"
    description = ("Conv VAE with a latent group per generative factor, trained on one-factor batches: latents "
                   "outside the varying group are clamped to the batch mean, their gradient pulls to invariance")
    Options = DCIGNOptions

    def build_vae(self):
        if self.model_cfg.architecture != "conv":
            raise ValueError("dcign: the paper's networks are convolutional; set model.architecture=conv")
        assigned = sum(self.options.groups.values())
        if assigned >= self.model_cfg.latent_dim:
            raise ValueError(f"dcign: the groups take {assigned} latent dimensions of model.latent_dim="
                             f"{self.model_cfg.latent_dim}; at least one must stay intrinsic")
        return super().build_vae()

    def latent_groups(self) -> dict[str, list[int]]:
        groups, start = {}, 0
        for factor, size in self.options.groups.items():
            groups[factor] = list(range(start, start + size))
            start += size
        return groups

    def free_dims(self, varying_factor: str) -> torch.Tensor:
        """(D,) bool: the latents that keep their values and gradient when `varying_factor` varies."""
        free = torch.zeros(self.model_cfg.latent_dim, dtype=torch.bool)
        groups = self.latent_groups()
        if varying_factor in groups:
            free[groups[varying_factor]] = True
        elif varying_factor != NO_FACTOR_VARIES:  # a factor without a group: the intrinsic group varies
            free[sum(len(d) for d in groups.values()):] = True
        return free

    # -- hooks -----------------------------------------------------------------------------------
    def prepare_training(self, source, train_cfg):
        factors = source.data.factors
        if factors is None:
            raise ValueError(f"dcign trains on one-factor batches: {source.data.name} has no generative factors "
                             "(use data with known factors, e.g. dsprites)")
        for factor in self.options.groups:
            factors.index(factor)  # names the factors when a group's name is unknown

    def epoch_batches(self, source, batch_size, seed, epoch):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        return [rows.to(source.device) for _, rows in one_factor_epoch(source.data.factors, batch_size, generator)]

    def draw_batch(self, source, indices):
        batch = source.batch(indices)
        factors = source.data.factors
        codes = factors.codes[indices.cpu()]
        varying = [name for name, column in zip(factors.names, codes.T) if column.unique().numel() > 1]
        if len(varying) > 1:
            raise ValueError(f"dcign: not a one-factor batch, factors {', '.join(varying)} all vary")
        batch.varying_factor = varying[0] if varying else NO_FACTOR_VARIES
        return batch

    def transform_latents(self, z, batch):
        if batch.varying_factor is None:
            raise ValueError("dcign: the batch does not say which factor varies (draw it with the variant's draw_batch)")
        free = self.free_dims(batch.varying_factor).to(z.device)
        return clamp_to_mean(z, free, self.options.invariance_strength)
