"""Burda, Grosse & Salakhutdinov (2016): the importance-weighted bound with k samples.

Only the objective changes: the same model is trained on log (1/k) sum_i w_i, and the logged
training `bound` is exactly that number (ELBO, KL and reconstruction come from the same samples).
"""
from pydantic import Field

from core.objectives import elbo_analytic, iwae_bound
from core.registry import register_variant
from core.variant import StepOutput, Variant, VariantOptions


class IWAEOptions(VariantOptions):
    k: int = Field(5, ge=1, le=10_000, description="importance samples per example")


@register_variant
class IWAE(Variant):
    name = "iwae"
    paper = "Burda, Grosse & Salakhutdinov 2016, Importance Weighted Autoencoders (arXiv:1509.00519)"
    description = "Trains on the k-sample importance-weighted bound, tighter than the ELBO as k grows"
    Options = IWAEOptions

    def training_step(self, batch, group):
        terms = self.vae.terms(batch.x, batch.x, k=self.options.k)
        bound = iwae_bound(terms.log_w)
        metrics = self._core_metrics(elbo_analytic(terms.log_px_z, terms.kl), terms.kl, terms.log_px_z)
        metrics["bound"] = bound.mean()
        return StepOutput(-bound.mean(), metrics)
