"""Sohn, Lee & Yan (2015): the conditional VAE.

Recognition q(z|x,c), prior p(z|c) and generation p(x|z,c) all see a condition c: a class label
(one-hot), or the visible quadrants of the image, in which case only the hidden quadrants are
scored (image completion, the paper's MNIST experiment). Reported NLLs are conditional, -log p(x|c).
"""
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from core.model import VAE
from core.objectives import elbo_analytic
from core.registry import register_variant
from core.variant import StepOutput, Variant, VariantOptions


class CVAEOptions(VariantOptions):
    condition: Literal["label", "quadrants"] = "label"
    # Quadrants shown, in reading order (top-left, top-right, bottom-left, bottom-right).
    visible_quadrants: int = Field(1, ge=1, le=3)


def quadrant_mask(channels: int, height: int, width: int, visible: int) -> torch.Tensor:
    """(1, C, H, W) mask, 1 on the first `visible` quadrants in reading order."""
    mask = torch.zeros(1, channels, height, width)
    h, w = height // 2, width // 2
    corners = [(0, h, 0, w), (0, h, w, width), (h, height, 0, w), (h, height, w, width)]
    for top, bottom, left, right in corners[:visible]:
        mask[..., top:bottom, left:right] = 1.0
    return mask


@register_variant
class ConditionalVAE(Variant):
    name = "cvae"
    paper = "Sohn, Lee & Yan 2015, Learning Structured Output Representation using Deep Conditional Generative Models (NeurIPS)"
    description = "Conditions encoder, prior and decoder on a label or on visible quadrants (image completion)"
    Options = CVAEOptions

    def build_vae(self):
        s = self.shape
        if self.options.condition == "label":
            if self.num_classes < 2:
                raise ValueError("cvae with condition=label needs a labelled dataset")
            cond_dim = self.num_classes
        else:
            cond_dim = s.numel
            self.register_buffer("visible_mask", quadrant_mask(s.channels, s.height, s.width, self.options.visible_quadrants))
        return VAE(self.model_cfg, s, cond_dim=cond_dim, conditional_prior=True)

    @property
    def uses_labels(self):
        return self.options.condition == "label"

    def condition(self, x, y):
        """(c, target_mask): what the model is given and which pixels it is scored on."""
        if self.options.condition == "label":
            if y is None:
                raise ValueError("cvae with condition=label needs labels for every example")
            return F.one_hot(y, self.num_classes).to(x.dtype), None
        return x * self.visible_mask, 1.0 - self.visible_mask

    def _terms(self, batch, k=1):
        c, target_mask = self.condition(batch.x, batch.y)
        return self.vae.terms(batch.x, batch.x, k=k, c=c, target_mask=target_mask)

    def training_step(self, batch, group):
        terms = self._terms(batch)
        elbo = elbo_analytic(terms.log_px_z, terms.kl)
        return StepOutput(-elbo.mean(), self._core_metrics(elbo, terms.kl, terms.log_px_z))

    def evaluate(self, batch):
        terms = self._terms(batch)
        log_px_z = terms.log_px_z.mean(0)
        return {"elbo": log_px_z - terms.kl, "kl": terms.kl, "recon": log_px_z}

    def log_weights(self, batch, k):
        return self._terms(batch, k).log_w

    def extra_test_metrics(self, metrics):
        return {"cond_nll": metrics["nll"]} if "nll" in metrics else {}

    def encode(self, x, y=None):
        return self.vae.encode(x, self.condition(x, y)[0])

    @torch.no_grad()
    def sample(self, n, generator=None, y=None):
        if self.options.condition != "label":
            raise ValueError("a quadrant-conditioned cvae generates completions of given images: use complete()")
        device = next(self.parameters()).device
        y = torch.arange(n, device=device) % self.num_classes if y is None else y
        return self.vae.generate(n, c=F.one_hot(y, self.num_classes).float(), generator=generator)

    @torch.no_grad()
    def decode_mean(self, z, y=None):
        """Label-conditioned decoding (class 0 unless `y` is given)."""
        if self.options.condition != "label":
            raise ValueError("a quadrant-conditioned cvae decodes only together with visible quadrants")
        y = torch.zeros(z.shape[0], dtype=torch.long, device=z.device) if y is None else y
        return self.vae.likelihood.mean(self.vae.decode(z, F.one_hot(y, self.num_classes).to(z.dtype)))

    @torch.no_grad()
    def reconstruct(self, batch):
        c, _ = self.condition(batch.x, batch.y)
        mean, _ = self.vae.encode(batch.x, c)
        return self.vae.likelihood.mean(self.vae.decode(mean, c))

    @torch.no_grad()
    def complete(self, x, generator=None):
        """Quadrant completion: keep the visible pixels, fill the rest from z ~ p(z|c)."""
        c, hidden = self.condition(x, None)
        guess = self.vae.generate(x.shape[0], c=c, generator=generator)
        return x * self.visible_mask + guess * hidden
