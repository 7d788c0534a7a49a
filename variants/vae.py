"""Kingma & Welling (2014): the VAE trained on the ELBO; `beta` weights the KL (Higgins et al. 2017).

`samples` is the number of z draws per example that average the reconstruction term (L in Kingma
& Welling; the "VAE, k samples" rows of Burda et al. Table 1): a lower-variance gradient of the
same ELBO, unlike the iwae, whose bound itself changes with k.
"""
from pydantic import Field

from core.objectives import elbo_analytic
from core.registry import register_variant
from core.variant import StepOutput, Variant, VariantOptions


class VAEOptions(VariantOptions):
    beta: float = Field(1.0, ge=0, description="KL weight; 1 is the ELBO")
    samples: int = Field(1, ge=1, le=10_000, description="z samples per example for the reconstruction term")


@register_variant
class VanillaVAE(Variant):
    name = "vae"
    paper = "Kingma & Welling 2014, Auto-Encoding Variational Bayes (arXiv:1312.6114)"
    description = "Gaussian encoder, unit Gaussian prior, ELBO with analytic KL; optional beta on the KL"
    Options = VAEOptions

    def training_step(self, batch, group):
        terms = self.vae.terms(batch.x, batch.x, k=self.options.samples)
        recon = terms.log_px_z.mean(0)
        elbo = elbo_analytic(terms.log_px_z, terms.kl)
        loss = -(recon - self.options.beta * terms.kl).mean()
        return StepOutput(loss, self._core_metrics(elbo, terms.kl, terms.log_px_z))
