"""Priors an adversarial autoencoder imposes on its codes (Makhzani et al. 2016, Figures 2-4).

Each prior draws samples (what the discriminator calls "real") and, where it has one in closed
form, gives its log-density (what an importance-sampled log-likelihood needs). A prior with
components can be told which component each sample comes from (the label-conditioned setting of
the paper's Figure 4).
"""
from __future__ import annotations

import math

import torch

from core.objectives import gaussian_log_prob


class Prior:
    name: str = ""
    components: int = 0  # > 0: `sample` can be told each sample's component

    def __init__(self, dim: int):
        self.dim = dim

    def sample(self, n: int, component: torch.Tensor | None = None, *, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> torch.Tensor:
        raise NotImplementedError

    def log_prob(self, z: torch.Tensor) -> torch.Tensor | None:
        """log p(z) summed over the last dim; None where the density has no closed form."""
        return None

    @property
    def has_density(self) -> bool:
        return type(self).log_prob is not Prior.log_prob


class UnitGaussian(Prior):
    name = "gaussian"

    def sample(self, n, component=None, *, generator=None, device="cpu"):
        return torch.randn((n, self.dim), generator=generator, device=device)

    def log_prob(self, z):
        return gaussian_log_prob(z)


def _need_2d(name: str, dim: int) -> None:
    if dim != 2:
        raise ValueError(f"model.latent_dim: the {name} prior is 2-D (got {dim})")


class GaussianMixtureCircle(Prior):
    """K Gaussians with means evenly spaced on a circle of `radius`, each stretched along its
    radius (std `radial_std`) and thin across it (`tangential_std`): the paper's 10-petal prior."""
    name = "mixture"

    def __init__(self, dim: int, components: int = 10, radius: float = 4.0, radial_std: float = 1.0,
                 tangential_std: float = 0.25):
        _need_2d(self.name, dim)
        super().__init__(dim)
        self.components, self.radius = components, radius
        self.radial_std, self.tangential_std = radial_std, tangential_std

    def _angles(self, device) -> torch.Tensor:
        return 2 * math.pi * torch.arange(self.components, device=device) / self.components

    def sample(self, n, component=None, *, generator=None, device="cpu"):
        if component is None:
            component = torch.randint(self.components, (n,), generator=generator, device=device)
        component = component.to(device) % self.components
        eps = torch.randn((n, 2), generator=generator, device=device)
        radial = self.radius + self.radial_std * eps[:, 0]
        tangential = self.tangential_std * eps[:, 1]
        angle = self._angles(device)[component]
        cos, sin = angle.cos(), angle.sin()
        return torch.stack([radial * cos - tangential * sin, radial * sin + tangential * cos], dim=-1)

    def log_prob(self, z):
        angle = self._angles(z.device).to(z.dtype)
        cos, sin = angle.cos(), angle.sin()  # (K,)
        x, y = z[..., :1], z[..., 1:]  # (..., 1) against (K,)
        radial = x * cos + y * sin - self.radius     # coordinates in each component's frame
        tangential = -x * sin + y * cos
        log_comp = (-0.5 * (radial / self.radial_std) ** 2 - 0.5 * (tangential / self.tangential_std) ** 2
                    - math.log(2 * math.pi * self.radial_std * self.tangential_std))
        return torch.logsumexp(log_comp, dim=-1) - math.log(self.components)


class SwissRoll(Prior):
    """A swiss roll in 2-D: position t along the roll uniform in [0, 1], radius growing with the
    angle, plus small Gaussian noise. Its density has no closed form (`log_prob` is None). With
    components, the roll is cut into that many equal stretches and `component` picks the stretch."""
    name = "swiss_roll"

    def __init__(self, dim: int, components: int = 10, turns: float = 1.5, scale: float = 0.5, noise: float = 0.1):
        _need_2d(self.name, dim)
        super().__init__(dim)
        self.components, self.turns, self.scale, self.noise = components, turns, scale, noise

    def sample(self, n, component=None, *, generator=None, device="cpu"):
        u = torch.rand(n, generator=generator, device=device)
        if component is not None:
            u = ((component.to(device) % self.components) + u) / self.components
        angle = 2 * math.pi * self.turns * (0.15 + 0.85 * u.sqrt())  # sqrt: evenly spread along the arc
        radius = self.scale * angle
        z = torch.stack([radius * angle.cos(), radius * angle.sin()], dim=-1)
        return z + self.noise * torch.randn((n, 2), generator=generator, device=device)


PRIORS: dict[str, type[Prior]] = {p.name: p for p in (UnitGaussian, GaussianMixtureCircle, SwissRoll)}


def make_prior(name: str, dim: int, **kwargs) -> Prior:
    try:
        cls = PRIORS[name]
    except KeyError:
        raise ValueError(f"unknown prior {name!r} (known: {', '.join(sorted(PRIORS))})") from None
    return cls(dim, **kwargs)
