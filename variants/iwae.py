"""Burda, Grosse & Salakhutdinov (2016): the importance-weighted autoencoder.

Only the objective changes, so this is a preset: the vae trained on the k-sample bound
log (1/k) sum_i w_i (core.objectives.IWAEBound; default k=5). `--variant iwae --set objective.k=50`
and `--variant vae --set objective.name=iwae --set objective.k=50` train the same model. Configs
written before Zoo v2 kept `k` among the iwae's options: it is read into the objective.
"""
from core.registry import register_variant
from core.variant import Variant


@register_variant
class IWAE(Variant):
    name = "iwae"
    paper = "Burda, Grosse & Salakhutdinov 2016, Importance Weighted Autoencoders (arXiv:1509.00519)"
    description = "Trains on the k-sample importance-weighted bound, tighter than the ELBO as k grows"
    default_objective = {"name": "iwae", "k": 5}
    objective_options_in_variant = ("k",)
