"""Im, Ahn, Memisevic & Bengio (2017): denoising criterion for variational auto-encoding.

Only the encoder's input in training changes: it sees a corrupted x~ ~ p(x~|x) and the decoder
is scored on the clean x. Evaluation, encoding and sampling use clean data. Any objective applies:
`--set objective.name=iwae` is Im et al.'s DIWAE.
"""
from typing import Literal

import torch
from pydantic import Field, model_validator

from core.registry import register_variant
from core.variant import Variant, VariantOptions


def gaussian_noise(x, level):
    return x + level * torch.randn_like(x)


def salt_and_pepper(x, level):
    hit = torch.rand_like(x) < level
    return torch.where(hit, (torch.rand_like(x) < 0.5).to(x.dtype), x)


def masking(x, level):
    return x * (torch.rand_like(x) >= level).to(x.dtype)


CORRUPTIONS = {"gaussian": gaussian_noise, "salt_and_pepper": salt_and_pepper, "masking": masking}


class DVAEOptions(VariantOptions):
    corruption: Literal["gaussian", "salt_and_pepper", "masking"] = "gaussian"
    # Gaussian: noise standard deviation; salt-and-pepper and masking: the share of pixels hit.
    noise_level: float = Field(0.25, ge=0)

    @model_validator(mode="after")
    def _probability(self):
        if self.corruption != "gaussian" and self.noise_level > 1:
            raise ValueError(f"noise_level: must be a probability in [0, 1] for {self.corruption} (got {self.noise_level})")
        return self


@register_variant
class DenoisingVAE(Variant):
    name = "dvae"
    paper = "Im, Ahn, Memisevic & Bengio 2017, Denoising Criterion for Variational Auto-Encoding Framework (arXiv:1511.06406)"
    description = "Encodes a corrupted input (Gaussian, salt-and-pepper or masking) and reconstructs the clean one"
    Options = DVAEOptions

    def encoder_input(self, batch):
        return CORRUPTIONS[self.options.corruption](batch.x, self.options.noise_level)
