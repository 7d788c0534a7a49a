"""The contract between a variant and the trainer (Zoo v2).

A variant is an nn.Module built from the shared model config, the data shape, its own options and
an objective (core/objectives.py). The trainer owns the steps: it draws batches, runs a forward
pass per phase, backpropagates each optimiser group's loss and steps it. A variant changes only
what its paper changes by overriding hooks:

| hook                | when the trainer calls it                          | who overrides it      |
|---------------------|----------------------------------------------------|-----------------------|
| `condition`         | every forward pass: c given to encoder, prior and  | cvae, m2              |
|                     | decoder, and which pixels are scored               |                       |
| `encoder_input`     | training forward passes: what the encoder sees     | dvae                  |
| `transform_latents` | training forward passes: sampled z before decoding | dcign                 |
| `prepare_training`  | once before the first epoch                        | m2, dcign             |
| `epoch_batches`     | each epoch: the global batches' indices            | dcign                 |
| `draw_batch`        | each step: indices to a Batch                      | m2, dcign             |
| `configure_optimizers`, `phases` | optimiser groups and the order they step | (AAE)             |
| `losses`            | each phase: one StepOutput per group of the phase  | m2                    |
|                     | from one shared forward pass                       |                       |
| `latent_groups`     | evaluation on data with factors: each factor's     | dcign                 |
|                     | assigned latents (None: best single latent)        |                       |

Capability flags say what a variant can do (`uses_labels`, `has_likelihood`), so no caller guesses.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from core.batches import Batch
from core.config import ModelConfig, ObjectiveConfig, TrainConfig
from core.model import VAE, Terms
from core.networks import DataShape
from core.objectives import Objective, make_objective
from core.optim import adam

if TYPE_CHECKING:
    from core.batches import TrainingSource

__all__ = ["Batch", "Condition", "StepOutput", "Variant", "VariantOptions"]


class VariantOptions(BaseModel):
    """Base of every variant's options: unknown keys are rejected with their name."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


@dataclass
class Condition:
    """What a conditional model is given (c, flattened into encoder, prior and decoder) and which
    pixels it is scored on (`target_mask`, 1 = scored; None scores every pixel)."""
    c: torch.Tensor | None = None
    target_mask: torch.Tensor | None = None


@dataclass
class StepOutput:
    loss: torch.Tensor            # scalar to minimise for this optimiser group
    metrics: dict[str, torch.Tensor]  # batch means, in nats per example where they are bounds


class Variant(nn.Module):
    name: ClassVar[str]
    paper: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type[VariantOptions]] = VariantOptions
    # Objectives it trains on (config `objective.name`); empty for a variant with losses of its own.
    objectives: ClassVar[tuple[str, ...]] = ("elbo", "iwae")
    default_objective: ClassVar[dict[str, Any]] = {"name": "elbo"}
    # Objective fields that configs written before Zoo v2 kept among this variant's options.
    objective_options_in_variant: ClassVar[tuple[str, ...]] = ()
    # Optimiser groups stepped together after one forward pass, phase after phase; None is one
    # phase of every group. A variant whose paper steps in phases (AAE) lists them.
    phases: ClassVar[tuple[tuple[str, ...], ...] | None] = None
    # Capability: p(x) has a likelihood, so the importance-sampled NLL applies (a deterministic
    # adversarial autoencoder has none).
    has_likelihood: ClassVar[bool] = True

    def __init__(self, model_cfg: ModelConfig, shape: DataShape, num_classes: int, options: VariantOptions,
                 objective: Objective | None = None):
        super().__init__()
        self.model_cfg, self.shape, self.num_classes, self.options = model_cfg, shape, num_classes, options
        if objective is None and self.objectives:
            objective = make_objective(ObjectiveConfig.model_validate(self.default_objective))
        self.objective = objective
        self.vae = self.build_vae()

    @property
    def uses_labels(self) -> bool:
        """Capability: encode/condition read a batch's labels (cvae's label condition, m2)."""
        return False

    @property
    def encode_needs_labels(self) -> bool:
        """Capability: q(z|x) cannot be evaluated without the label (a label-conditioned cvae), so
        its active units are conditional; m2 encodes unlabelled data through its classifier."""
        return self.uses_labels

    # The name of -log p(x) in test metrics; a conditional model's is -log p(x|c), `cond_nll`.
    nll_metric: ClassVar[str] = "nll"

    @classmethod
    def kind(cls, options: dict[str, Any]) -> str:
        """The variant with what changes the meaning of its NLL (cvae's condition), for registered
        model names and for which champions compare."""
        return cls.name

    @classmethod
    def nll_metric_of(cls, options: dict[str, Any]) -> str:
        """The name of the test NLL a model with these options reports."""
        return cls.nll_metric

    # -- hooks -----------------------------------------------------------------------------------
    def build_vae(self) -> VAE:
        return VAE(self.model_cfg, self.shape)

    def condition(self, batch: Batch) -> Condition:
        """The condition of a batch (none for an unconditional model)."""
        return Condition()

    def encoder_input(self, batch: Batch) -> torch.Tensor:
        """What the encoder sees in training (evaluation always encodes the clean x)."""
        return batch.x

    def transform_latents(self, z: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Sampled latents (k, B, D) as the decoder receives them in training."""
        return z

    def prepare_training(self, source: "TrainingSource", train_cfg: TrainConfig) -> None:
        """Called once before training: select what the batch hooks need (m2: its labelled subset)."""

    def epoch_batches(self, source: "TrainingSource", batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
        """The epoch's global batches of training indices, identical on every rank."""
        return source.shuffled_batches(batch_size, seed, epoch)

    def draw_batch(self, source: "TrainingSource", indices: torch.Tensor) -> Batch:
        """This rank's share of a global batch as a Batch (m2 adds a labelled batch here)."""
        return source.batch(indices)

    def configure_optimizers(self, train_cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
        """One optimiser per group; the default is one Adam over every parameter."""
        return {"model": adam(self.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay,
                              fused=train_cfg.fused_adam)}

    def losses(self, batch: Batch, groups: tuple[str, ...]) -> dict[str, StepOutput]:
        """The loss of each optimiser group in `groups` (one phase), from one forward pass."""
        terms = self.terms(batch, self.objective.samples, training=True)
        bound = self.objective.train_bound(terms)
        return {"model": StepOutput(-bound.mean(), self.objective.metrics(terms, bound))}

    def latent_groups(self) -> dict[str, list[int]] | None:
        """Factor name -> the latent dimensions assigned to it (DC-IGN); None where the model
        assigns none, so disentanglement is read from the best single latent of each factor."""
        return None

    def label_condition(self, y: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
        """The condition that generation decodes with for labels y; None for a model without labels."""
        return None

    def networks(self) -> list[nn.Module]:
        """The networks train.compile compiles in place."""
        return [self.vae.encoder, self.vae.decoder]

    # -- the shared forward pass -----------------------------------------------------------------
    def terms(self, batch: Batch, k: int = 1, *, training: bool = False, condition: Condition | None = None) -> Terms:
        """Encode (the hooked input in training), draw k latents, transform them (training), decode,
        and score the batch's clean x under the condition of the batch."""
        cond = self.condition(batch) if condition is None else condition
        x_in = self.encoder_input(batch) if training else batch.x
        transform = (lambda z: self.transform_latents(z, batch)) if training else None
        return self.vae.terms(x_in, batch.x, k, c=cond.c, target_mask=cond.target_mask, transform=transform)

    # -- evaluation (clean data, no corruption, labels used only where the model is conditional) -
    def evaluate(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Per-example ELBO, KL and reconstruction term, shape (B,) each."""
        terms = self.terms(batch)
        log_px_z = terms.log_px_z.mean(0)
        return {"elbo": log_px_z - terms.kl, "kl": terms.kl, "recon": log_px_z}

    def log_weights(self, batch: Batch, k: int) -> torch.Tensor:
        """(k', B) importance log-weights for the importance-sampled log-likelihood."""
        return self.terms(batch, k).log_w

    def log_weights_per_sample(self) -> int:
        """How many log-weights `log_weights` returns per sample of z (m2 enumerates its labels)."""
        return 1

    def extra_test_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Variant-specific names for final metrics (cvae reports its NLL as conditional)."""
        return {}

    # -- use -------------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic: posterior mean and log-variance."""
        return self.vae.encode(x, self.condition(Batch(x, y)).c)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        """Images from the generative model (decoder means), shape (n, C, H, W) in [0, 1] for images;
        label-conditioned models cycle through the classes unless `y` is given."""
        device = next(self.parameters()).device
        y = torch.arange(n, device=device) % max(self.num_classes, 1) if y is None else y
        return self.vae.generate(n, c=self.label_condition(y), generator=generator)

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean image of p(x | z) for latents z (B, D): latent walks and manifolds (class 0 unless
        `y` is given, for label-conditioned models)."""
        y = torch.zeros(z.shape[0], dtype=torch.long, device=z.device) if y is None else y
        return self.vae.likelihood.mean(self.vae.decode(z, self.label_condition(y, z.dtype)))

    @torch.no_grad()
    def reconstruct(self, batch: Batch) -> torch.Tensor:
        c = self.condition(batch).c
        mean, _ = self.vae.encode(batch.x, c)
        return self.vae.likelihood.mean(self.vae.decode(mean, c))
