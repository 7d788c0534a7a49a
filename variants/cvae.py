"""Sohn, Lee & Yan (2015): the conditional VAE.

Recognition q(z|x,c), prior p(z|c) and generation p(x|z,c) all see a condition c. Conditions:

- `label`: a class label (one-hot);
- `quadrants`: the visible quadrants of the image, only the hidden ones scored (image completion,
  the paper's MNIST experiment);
- `mask`: inpainting; `mask` names the family of visible pixels (a centre square hidden, random
  blocks hidden, random pixels hidden at `mask_rate`, or quadrants as above); only the hidden
  pixels are scored. A random family gives c the mask too (x*m and m), since a black pixel shown
  and a hidden one would otherwise look alike;
- `lowres`: super-resolution; c is the image average-pooled by `lowres_factor` (2: 14x14, 4: 7x7
  from 28x28) and every pixel of the full image, "the high-resolution pixels", is scored.

Reported NLLs are conditional, -log p(x|c) (of the scored pixels only).
"""
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from core.model import VAE
from core.registry import register_variant
from core.variant import Batch, Condition, Variant, VariantOptions

MASK_FAMILIES = ("centre", "blocks", "pixels", "quadrants")


class CVAEOptions(VariantOptions):
    condition: Literal["label", "quadrants", "mask", "lowres"] = "label"
    # Quadrants shown, in reading order (top-left, top-right, bottom-left, bottom-right).
    visible_quadrants: int = Field(1, ge=1, le=3)
    # condition=mask: which pixels are hidden. centre: a square of side mask_size in the middle;
    # blocks: mask_blocks squares of side mask_size (None: half the shorter side for centre, a
    # quarter for blocks) at random places; pixels: each pixel hidden with probability mask_rate;
    # quadrants: all but visible_quadrants.
    mask: Literal["centre", "blocks", "pixels", "quadrants"] = "centre"
    mask_size: int | None = Field(None, ge=1)
    mask_blocks: int = Field(3, ge=1)
    mask_rate: float = Field(0.5, gt=0.0, lt=1.0)
    # Random masks: fresh per training batch from the trainer's RNG; at evaluation drawn from a
    # generator seeded with mask_seed, so every evaluation of a batch sees the same masks.
    mask_seed: int = 0
    # condition=lowres: the average-pooling factor (28x28 -> 14x14 or 7x7).
    lowres_factor: Literal[2, 4] = 2


def quadrant_mask(channels: int, height: int, width: int, visible: int) -> torch.Tensor:
    """(1, C, H, W) mask, 1 on the first `visible` quadrants in reading order."""
    mask = torch.zeros(1, channels, height, width)
    h, w = height // 2, width // 2
    corners = [(0, h, 0, w), (0, h, w, width), (h, height, 0, w), (h, height, w, width)]
    for top, bottom, left, right in corners[:visible]:
        mask[..., top:bottom, left:right] = 1.0
    return mask


def centre_mask(channels: int, height: int, width: int, size: int) -> torch.Tensor:
    """(1, C, H, W) visible mask: 0 on the size x size square in the middle, 1 elsewhere."""
    if size > min(height, width):
        raise ValueError(f"variant.mask_size {size} is larger than the {height}x{width} image")
    mask = torch.ones(1, channels, height, width)
    top, left = (height - size) // 2, (width - size) // 2
    mask[..., top:top + size, left:left + size] = 0.0
    return mask


def block_masks(n: int, channels: int, height: int, width: int, size: int, blocks: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, C, H, W) visible masks, each with `blocks` squares of side `size` hidden at random places."""
    if size > min(height, width):
        raise ValueError(f"variant.mask_size {size} is larger than the {height}x{width} image")
    tops = torch.randint(0, height - size + 1, (n, blocks), generator=generator)
    lefts = torch.randint(0, width - size + 1, (n, blocks), generator=generator)
    rows, cols = torch.arange(height), torch.arange(width)
    # (n, blocks, H, 1) & (n, blocks, 1, W): inside each block; hidden where inside any block.
    inside_rows = (rows >= tops[..., None]) & (rows < tops[..., None] + size)
    inside_cols = (cols >= lefts[..., None]) & (cols < lefts[..., None] + size)
    hidden = (inside_rows[..., :, None] & inside_cols[..., None, :]).any(1)
    return (~hidden).float()[:, None].expand(n, channels, height, width).contiguous()


def pixel_masks(n: int, channels: int, height: int, width: int, rate: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, C, H, W) visible masks, each pixel (all its channels) hidden with probability `rate`."""
    hidden = torch.rand((n, 1, height, width), generator=generator) < rate
    return (~hidden).float().expand(n, channels, height, width).contiguous()


def downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """The image average-pooled over factor x factor blocks: (B, C, H/f, W/f)."""
    return F.avg_pool2d(x, factor)


@register_variant
class ConditionalVAE(Variant):
    name = "cvae"
    paper = "Sohn, Lee & Yan 2015, Learning Structured Output Representation using Deep Conditional Generative Models (NeurIPS)"
    description = ("Conditions encoder, prior and decoder on a label, on visible pixels (quadrant completion, "
                   "inpainting) or on a low-resolution image (super-resolution)")
    Options = CVAEOptions
    nll_metric = "cond_nll"  # -log p(x|c): not comparable with an unconditional model's nll

    @classmethod
    def kind(cls, options):
        """cvae-label, cvae-quadrants2, cvae-lowres4, cvae-mask-centre: each scores other pixels."""
        condition = options.get("condition", "label")
        detail = {"quadrants": options.get("visible_quadrants"), "lowres": options.get("lowres_factor"),
                  "mask": f"-{options.get('mask')}"}.get(condition, "")
        return f"cvae-{condition}{detail}"

    def build_vae(self):
        s, o = self.shape, self.options
        if o.condition == "label":
            if self.num_classes < 2:
                raise ValueError("cvae with condition=label needs a labelled dataset")
            cond_dim = self.num_classes
        elif o.condition == "lowres":
            if s.height % o.lowres_factor or s.width % o.lowres_factor:
                raise ValueError(f"variant.lowres_factor {o.lowres_factor} does not divide the "
                                 f"{s.height}x{s.width} images")
            cond_dim = s.numel // o.lowres_factor ** 2
        elif self.random_mask:
            cond_dim = 2 * s.numel  # the shown pixels and the mask itself
            if o.mask == "blocks":
                centre_mask(s.channels, s.height, s.width, self.mask_size)  # the size check, at build time
        else:
            cond_dim = s.numel
            if o.condition == "quadrants" or o.mask == "quadrants":
                fixed = quadrant_mask(s.channels, s.height, s.width, o.visible_quadrants)
            else:
                fixed = centre_mask(s.channels, s.height, s.width, self.mask_size)
            self.register_buffer("visible_mask", fixed)
        return VAE(self.model_cfg, s, cond_dim=cond_dim, conditional_prior=True)

    @property
    def uses_labels(self):
        return self.options.condition == "label"

    @property
    def task(self) -> str | None:
        """What the condition makes of the model: "superres", "inpaint" or None (labels)."""
        return {"lowres": "superres", "quadrants": "inpaint", "mask": "inpaint"}.get(self.options.condition)

    @property
    def mask_size(self) -> int:
        side = min(self.shape.height, self.shape.width)
        if self.options.mask_size is not None:
            return self.options.mask_size
        return max(1, side // 2 if self.options.mask == "centre" else side // 4)

    @property
    def random_mask(self) -> bool:
        return self.options.condition == "mask" and self.options.mask in ("blocks", "pixels")

    def draw_visible(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Visible masks for n images, (n or 1, C, H, W) on the model's device: the fixed mask, or
        n random ones from `generator` (the global RNG when None)."""
        if not self.random_mask:
            return self.visible_mask
        s, o = self.shape, self.options
        device = next(self.parameters()).device
        if o.mask == "blocks":
            masks = block_masks(n, s.channels, s.height, s.width, self.mask_size, o.mask_blocks, generator)
        else:
            masks = pixel_masks(n, s.channels, s.height, s.width, o.mask_rate, generator)
        return masks.to(device)

    def condition_given(self, x: torch.Tensor, visible: torch.Tensor | None = None) -> Condition:
        """The condition of full images x: pooled (lowres), or the pixels `visible` shows, with only
        the hidden ones scored (mask, quadrants; `visible` defaults to the model's draw)."""
        if self.options.condition == "lowres":
            return Condition(downsample(x, self.options.lowres_factor))
        if visible is None and self.random_mask:
            generator = None if self.training else torch.Generator().manual_seed(self.options.mask_seed)
            visible = self.draw_visible(x.shape[0], generator)
        elif visible is None:
            visible = self.visible_mask
        if self.random_mask:
            visible = visible.to(x.dtype)
            return Condition(torch.cat([(x * visible).flatten(1), visible.expand_as(x).flatten(1)], 1), 1.0 - visible)
        return Condition(x * visible, 1.0 - visible)

    def condition(self, batch):
        """A label: its one-hot code. Otherwise what condition_given makes of the batch's images."""
        if self.options.condition == "label":
            if batch.y is None:
                raise ValueError("cvae with condition=label needs labels for every example")
            return Condition(F.one_hot(batch.y, self.num_classes).to(batch.x.dtype))
        return self.condition_given(batch.x)

    def label_condition(self, y, dtype=torch.float32):
        if self.options.condition != "label":
            raise ValueError(f"a cvae conditioned on {self.options.condition} generates and decodes only given "
                             f"its condition: use complete()")
        return F.one_hot(y, self.num_classes).to(dtype)

    @torch.no_grad()
    def complete(self, x, generator=None, visible: torch.Tensor | None = None):
        """One completion per image from z ~ p(z|c) (decoder means): the visible pixels kept and
        the hidden ones filled (inpainting), or the whole image (super-resolution)."""
        cond = self.condition_given(x, visible)
        guess = self.vae.generate(x.shape[0], c=cond.c, generator=generator)
        if cond.target_mask is None:
            return guess
        return x * (1.0 - cond.target_mask) + guess * cond.target_mask
