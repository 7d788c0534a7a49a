"""Kingma & Welling (2014): the VAE, trained on the ELBO (the base every other variant builds on).

Everything lives in core: the Gaussian encoder, unit prior and decoder of core/model.py, the
objective of the config (`objective.name: elbo` with `beta` (Higgins et al. 2017) and `samples`,
Kingma & Welling's L; or `iwae`). Configs written before Zoo v2 kept `beta` and `samples` among
the vae's options: they are read into the objective.
"""
from core.registry import register_variant
from core.variant import Variant


@register_variant
class VanillaVAE(Variant):
    name = "vae"
    paper = "Kingma & Welling 2014, Auto-Encoding Variational Bayes (arXiv:1312.6114)"
    description = "Gaussian encoder, unit Gaussian prior, ELBO with analytic KL; optional beta on the KL"
    objective_options_in_variant = ("beta", "samples")
