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
from core.registry import register_variant
from core.variant import Batch, Condition, Variant, VariantOptions


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
    nll_metric = "cond_nll"  # -log p(x|c): not comparable with an unconditional model's nll

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

    def condition(self, batch):
        """A label: its one-hot code. Quadrants: the visible pixels, and only the hidden ones scored."""
        if self.options.condition == "label":
            if batch.y is None:
                raise ValueError("cvae with condition=label needs labels for every example")
            return Condition(F.one_hot(batch.y, self.num_classes).to(batch.x.dtype))
        return Condition(batch.x * self.visible_mask, 1.0 - self.visible_mask)

    def label_condition(self, y, dtype=torch.float32):
        if self.options.condition != "label":
            raise ValueError("a quadrant-conditioned cvae generates and decodes only given visible quadrants: "
                             "use complete()")
        return F.one_hot(y, self.num_classes).to(dtype)

    @torch.no_grad()
    def complete(self, x, generator=None):
        """Quadrant completion: keep the visible pixels, fill the rest from z ~ p(z|c)."""
        cond = self.condition(Batch(x))
        guess = self.vae.generate(x.shape[0], c=cond.c, generator=generator)
        return x * self.visible_mask + guess * cond.target_mask
