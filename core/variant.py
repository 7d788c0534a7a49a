"""The contract between a variant and the trainer.

A variant is an nn.Module built from the shared model config, the data shape and its own options.
The trainer only ever calls the methods below, so a variant with a second optimiser (an
adversarial autoencoder) plugs in by returning two optimisers and computing each one's loss.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from core.config import ModelConfig, TrainConfig
from core.model import VAE
from core.networks import DataShape
from core.objectives import elbo_analytic


class VariantOptions(BaseModel):
    """Base of every variant's options: unknown keys are rejected with their name."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


@dataclass
class Batch:
    x: torch.Tensor                       # (B, C, H, W) float, binarised as configured
    y: torch.Tensor | None = None         # (B,) int64 labels where the dataset has them
    x_labelled: torch.Tensor | None = None  # semi-supervised: a labelled batch drawn beside x
    y_labelled: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device) -> "Batch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return replace(self, x=move(self.x), y=move(self.y), x_labelled=move(self.x_labelled),
                       y_labelled=move(self.y_labelled))


@dataclass
class StepOutput:
    loss: torch.Tensor            # scalar to minimise for this optimiser group
    metrics: dict[str, torch.Tensor]  # batch means, in nats per example where they are bounds


class Variant(nn.Module):
    name: ClassVar[str]
    paper: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type[VariantOptions]] = VariantOptions
    # Set by semi-supervised variants: the trainer then draws a labelled batch beside each batch.
    semi_supervised: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = False
    # Capability: p(x) has a likelihood, so the importance-sampled NLL applies (a deterministic
    # adversarial autoencoder has none).
    has_likelihood: ClassVar[bool] = True

    @property
    def uses_labels(self) -> bool:
        """Capability: encode/condition read a batch's labels (cvae's label condition, m2)."""
        return False

    def __init__(self, model_cfg: ModelConfig, shape: DataShape, num_classes: int, options: VariantOptions):
        super().__init__()
        self.model_cfg, self.shape, self.num_classes, self.options = model_cfg, shape, num_classes, options
        self.vae = self.build_vae()

    # -- construction ---------------------------------------------------------------------------
    def build_vae(self) -> VAE:
        return VAE(self.model_cfg, self.shape)

    def num_labelled(self) -> int | None:
        """Semi-supervised variants: how many training labels to keep (a class-balanced subset)."""
        return None

    # -- training ------------------------------------------------------------------------------
    def configure_optimizers(self, train_cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
        """One optimiser per group, stepped in this order each batch; the default is one Adam."""
        return {"model": torch.optim.Adam(self.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay,
                                          fused=train_cfg.fused_adam or None)}

    def training_step(self, batch: Batch, group: str) -> StepOutput:
        """The loss for optimiser `group` on `batch` (the default: the negative ELBO)."""
        terms = self.vae.terms(batch.x, batch.x)
        elbo = elbo_analytic(terms.log_px_z, terms.kl)
        return StepOutput(-elbo.mean(), self._core_metrics(elbo, terms.kl, terms.log_px_z))

    @staticmethod
    def _core_metrics(elbo, kl, log_px_z) -> dict[str, torch.Tensor]:
        # `bound` is the number the variant maximises when it is a bound (the ELBO unless overridden).
        return {"bound": elbo.mean(), "elbo": elbo.mean(), "kl": kl.mean(), "recon": log_px_z.mean()}

    # -- evaluation (clean data, no corruption, labels used only where the model is conditional) -
    def evaluate(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Per-example ELBO, KL and reconstruction term, shape (B,) each."""
        terms = self.vae.terms(batch.x, batch.x)
        log_px_z = terms.log_px_z.mean(0)
        return {"elbo": log_px_z - terms.kl, "kl": terms.kl, "recon": log_px_z}

    def log_weights(self, batch: Batch, k: int) -> torch.Tensor:
        """(k', B) importance log-weights for the importance-sampled log-likelihood."""
        return self.vae.terms(batch.x, batch.x, k).log_w

    def log_weights_per_sample(self) -> int:
        """How many log-weights `log_weights` returns per sample of z (m2 enumerates its labels)."""
        return 1

    def extra_test_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Variant-specific names for final metrics (cvae reports its NLL as conditional)."""
        return {}

    # -- use -------------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic: posterior mean and log-variance."""
        return self.vae.encode(x)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        """Images from the generative model (decoder means), shape (n, C, H, W) in [0, 1] for images."""
        return self.vae.generate(n, generator=generator)

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean image of p(x | z) for latents z (B, D): latent walks and manifolds."""
        return self.vae.likelihood.mean(self.vae.decode(z))

    @torch.no_grad()
    def reconstruct(self, batch: Batch) -> torch.Tensor:
        mean, _ = self.encode(batch.x, batch.y)
        return self.vae.likelihood.mean(self.vae.decode(mean))
