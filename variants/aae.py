"""Makhzani, Shlens, Jaitly, Goodfellow & Frey (2016): the adversarial autoencoder.

The KL term of the VAE is replaced by a discriminator that matches the aggregated posterior q(z)
to an imposed prior p(z). Each mini-batch is trained in phases, each its own forward pass after
the previous phase's update, as in the paper (section 2):

1. `reconstruction` (encoder + decoder): minimise -log p(x | z) of the code z.
2. `discriminator`: learn prior samples = real (1), codes = fake (0).
3. `generator` (the encoder): make the discriminator call the codes real.
4. `supervised` (semi-supervised only, section 5): cross-entropy of q(y | x) on a labelled batch.

Loss scales, and why they can be chosen independently: each phase has its own Adam optimiser, and
Adam's steps do not depend on the scale of the loss (up to its epsilon), so no phase's loss is
weighed against another's, unlike a single summed loss of which public implementations mix a
pixel sum with a batch mean without saying so.

* reconstruction: -log p(x | z) summed over pixels, mean over the batch (nats per example, the
  zoo's convention; `recon` is logged as log p(x | z), like every variant's);
* discriminator: binary cross-entropy averaged over the 2B examples (B prior samples, B codes),
  so chance is log 2 = 0.693; in the semi-supervised model the two discriminators' losses
  (category, style) are added, each such a mean;
* generator: the non-saturating loss -log D(code), mean over the batch (GAN practice; the paper's
  minimax form saturates early); semi-supervised: the category and style terms added;
* supervised: cross-entropy mean over the labelled batch.

Options (`variant.*`): `encoder` deterministic (the paper's results: the code is the posterior
mean) or gaussian (z = mean + sigma eps, and then, where the prior has a density, the
importance-sampled NLL applies); `prior` gaussian, mixture (10 Gaussians on a circle in 2-D) or
swiss_roll; `label_conditioned_prior` (Figure 4: the label picks the prior's component, and the
discriminator sees a one-hot label beside the code); `semi_supervised_labels` N (section 5: a
categorical head y matched to a uniform categorical prior and a style code z matched to `prior`,
each by its own discriminator, decoder p(x | y, z), N class-balanced labels as in m2);
`adversarial_lr` (2e-4) is Adam's rate in the discriminator and generator phases, train.lr in the
others (the paper steps the phases with their own rates as well).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from core import optim
from core.data import labelled_subset
from core.model import VAE
from core.networks import Decoder, mlp
from core.objectives import gaussian_log_prob
from core.priors import make_prior
from core.registry import register_variant
from core.variant import Batch, StepOutput, Variant, VariantOptions


class AAEOptions(VariantOptions):
    encoder: Literal["deterministic", "gaussian"] = "deterministic"
    prior: Literal["gaussian", "mixture", "swiss_roll"] = "gaussian"
    label_conditioned_prior: bool = False
    discriminator_hidden: list[int] = Field(default_factory=lambda: [256, 256])
    # Adam's learning rate in the discriminator and generator phases (the reconstruction and
    # supervised phases use train.lr). 2e-4 is the usual GAN rate (Radford et al. 2016); with
    # train.lr = 1e-3 here the adversarial game was unstable (README, "Adversarial autoencoder").
    adversarial_lr: float = Field(2e-4, gt=0)
    semi_supervised_labels: int | None = Field(None, ge=1)
    labelled_batch_size: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _coherent(self) -> "AAEOptions":
        if self.label_conditioned_prior and self.prior == "gaussian":
            raise ValueError("label_conditioned_prior: needs a prior with components (mixture or swiss_roll)")
        if self.label_conditioned_prior and self.semi_supervised_labels is not None:
            raise ValueError("label_conditioned_prior: not with semi_supervised_labels (there y is inferred)")
        if any(h < 1 for h in self.discriminator_hidden):
            raise ValueError("discriminator_hidden: must hold positive integers")
        return self


def bce_real(logits: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


def bce_fake(logits: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))


@register_variant
class AdversarialAutoencoder(Variant):
    name = "aae"
    paper = "Makhzani, Shlens, Jaitly, Goodfellow & Frey 2016, Adversarial Autoencoders (arXiv:1511.05644)"
    description = "A discriminator matches the codes to an imposed prior instead of the KL; phased training"
    Options = AAEOptions
    objectives = ()  # losses of its own, one optimiser group per phase

    def build_vae(self):
        o, latent = self.options, self.model_cfg.latent_dim
        self.semi_supervised = o.semi_supervised_labels is not None
        self.prior = make_prior(o.prior, latent)
        if o.label_conditioned_prior and not 1 <= self.num_classes <= self.prior.components:
            raise ValueError(f"variant.label_conditioned_prior: needs 1 to {self.prior.components} classes "
                             f"(one per prior component), the data has {self.num_classes}")
        if self.semi_supervised and self.num_classes < 2:
            raise ValueError("variant.semi_supervised_labels: needs a labelled dataset (num_classes >= 2)")
        act = self.model_cfg.activation
        label_dim = self.num_classes if o.label_conditioned_prior else 0
        self.discriminator = mlp([latent + label_dim, *o.discriminator_hidden, 1], act, final_activation=False)
        vae = VAE(self.model_cfg, self.shape)
        if self.semi_supervised:
            # q(y | x) as m2's classifier (the size of the labels-only baseline); p(x | y, z)
            self.classifier = torch.nn.Sequential(
                torch.nn.Flatten(), mlp([self.shape.numel, *self.model_cfg.hidden_dims, self.num_classes], act,
                                        final_activation=False))
            self.category_discriminator = mlp([self.num_classes, *o.discriminator_hidden, 1], act,
                                              final_activation=False)
            vae.decoder = Decoder(self.model_cfg, self.shape, vae.likelihood.params_per_pixel, cond_dim=self.num_classes)
        return vae

    # -- capabilities and phases ---------------------------------------------------------------------
    @property
    def has_likelihood(self) -> bool:
        """A Gaussian encoder under a prior with a density has p(x) = E_q[p(x|z) p(z) / q(z|x)]; a
        deterministic one (a point mass q) or the swiss roll (no closed-form density) has none."""
        return self.options.encoder == "gaussian" and self.prior.has_density and not self.semi_supervised

    @property
    def phases(self):
        base = (("reconstruction",), ("discriminator",), ("generator",))
        return base + (("supervised",),) if self.semi_supervised else base

    def configure_optimizers(self, train_cfg):
        def adam(params, lr):
            return optim.adam(params, lr=lr, weight_decay=train_cfg.weight_decay, fused=train_cfg.fused_adam)

        adversarial_lr = self.options.adversarial_lr
        encoder = list(self.vae.encoder.parameters())
        if self.semi_supervised:
            encoder += list(self.classifier.parameters())
        discriminators = list(self.discriminator.parameters())
        if self.semi_supervised:
            discriminators += list(self.category_discriminator.parameters())
        optimizers = {"reconstruction": adam(encoder + list(self.vae.decoder.parameters()), train_cfg.lr),
                      "discriminator": adam(discriminators, adversarial_lr),
                      "generator": adam(encoder, adversarial_lr)}
        if self.semi_supervised:
            optimizers["supervised"] = adam(self.classifier.parameters(), train_cfg.lr)
        return optimizers

    def networks(self):
        nets = [self.vae.encoder, self.vae.decoder, self.discriminator]
        return nets + ([self.classifier, self.category_discriminator] if self.semi_supervised else [])

    # -- batches: labels where the prior or the supervised phase needs them ---------------------------
    def prepare_training(self, source, train_cfg):
        needs_labels = self.options.label_conditioned_prior or self.semi_supervised
        if needs_labels and source.data.labels is None:
            raise ValueError(f"{self.name}: the options chosen need labels; {source.data.name} has none")
        if self.semi_supervised:
            self.labelled = labelled_subset(source.data.labels.cpu(), self.options.semi_supervised_labels,
                                            self.num_classes, seed=train_cfg.seed).to(source.device)

    def draw_batch(self, source, indices):
        batch = source.batch(indices)
        if self.semi_supervised:
            pick = self.labelled[torch.randint(len(self.labelled), (self.options.labelled_batch_size,),
                                               device=self.labelled.device)]
            labelled = source.batch(pick)
            batch.x_labelled, batch.y_labelled = labelled.x, labelled.y
        return batch

    # -- the codes and the discriminators' inputs -----------------------------------------------------
    def codes(self, x: torch.Tensor, sample: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(style code z, class probabilities q(y|x) or None): z is the posterior mean for the
        deterministic encoder, a reparameterised draw for the Gaussian one when `sample`."""
        mean, logvar = self.vae.encode(x)
        z = self.vae.sample_latent(mean, logvar)[0] if sample and self.options.encoder == "gaussian" else mean
        y_prob = F.softmax(self.classifier(x).float(), dim=-1) if self.semi_supervised else None
        return z, y_prob

    def _discriminate(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if self.options.label_conditioned_prior:
            if y is None:
                raise ValueError("label_conditioned_prior: the batch has no labels")
            z = torch.cat([z, F.one_hot(y, self.num_classes).to(z.dtype)], dim=-1)
        return self.discriminator(z).float().squeeze(-1)

    def prior_sample(self, n: int, y: torch.Tensor | None, device, generator: torch.Generator | None = None):
        component = y if self.options.label_conditioned_prior else None
        return self.prior.sample(n, component, generator=generator, device=device)

    # -- the losses of each phase ---------------------------------------------------------------------
    def losses(self, batch: Batch, groups: tuple[str, ...]) -> dict[str, StepOutput]:
        return {group: getattr(self, f"_{group}_loss")(batch) for group in groups}

    def _reconstruction_loss(self, batch):
        z, y_prob = self.codes(batch.x, sample=True)
        log_px_z = self.vae.likelihood.log_prob(self.vae.decode(z, y_prob), batch.x)
        return StepOutput(-log_px_z.mean(), {"recon": log_px_z.mean()})

    def _discriminator_loss(self, batch):
        with torch.no_grad():  # the codes are data here: only the discriminators learn
            z, y_prob = self.codes(batch.x, sample=True)
        d_real = self._discriminate(self.prior_sample(len(batch), batch.y, z.device).to(z.dtype), batch.y)
        d_fake = self._discriminate(z, batch.y)
        loss = 0.5 * (bce_real(d_real) + bce_fake(d_fake))
        accuracy = 0.5 * ((d_real > 0).float().mean() + (d_fake < 0).float().mean())
        metrics = {"loss": loss.detach(), "accuracy": accuracy}
        if self.semi_supervised:
            real_y = F.one_hot(torch.randint(self.num_classes, (len(batch),), device=z.device), self.num_classes)
            c_real = self.category_discriminator(real_y.to(y_prob.dtype)).float().squeeze(-1)
            c_fake = self.category_discriminator(y_prob).float().squeeze(-1)
            category_loss = 0.5 * (bce_real(c_real) + bce_fake(c_fake))
            metrics |= {"style_loss": loss.detach(), "category_loss": category_loss.detach(),
                        "category_accuracy": 0.5 * ((c_real > 0).float().mean() + (c_fake < 0).float().mean())}
            loss = loss + category_loss
            metrics["loss"] = loss.detach()
        return StepOutput(loss, metrics)

    def _generator_loss(self, batch):
        z, y_prob = self.codes(batch.x, sample=True)
        d_fake = self._discriminate(z, batch.y)
        loss = bce_real(d_fake)
        metrics = {"loss": loss.detach(), "fooled": (d_fake > 0).float().mean()}
        if self.semi_supervised:
            category_loss = bce_real(self.category_discriminator(y_prob).float().squeeze(-1))
            metrics |= {"style_loss": loss.detach(), "category_loss": category_loss.detach()}
            loss = loss + category_loss
            metrics["loss"] = loss.detach()
        return StepOutput(loss, metrics)

    def _supervised_loss(self, batch):
        logits = self.classifier(batch.x_labelled).float()
        ce = F.cross_entropy(logits, batch.y_labelled)
        return StepOutput(ce, {"classification_loss": ce.detach(),
                               "accuracy": (logits.argmax(-1) == batch.y_labelled).float().mean()})

    # -- evaluation and use ---------------------------------------------------------------------------
    def evaluate(self, batch):
        """log p(x | z) at the posterior-mean code (`recon`), and the test accuracy of q(y|x)."""
        z, y_prob = self.codes(batch.x, sample=False)
        recon = self.vae.likelihood.log_prob(self.vae.decode(z, y_prob), batch.x)
        out = {"recon": recon}
        if self.semi_supervised and batch.y is not None:
            out["accuracy"] = (y_prob.argmax(-1) == batch.y).to(recon.dtype)
        return out

    def log_weights(self, batch, k):
        """(k, B) log p(x|z) + log p(z) - log q(z|x), z ~ q(z|x), for the Gaussian encoder."""
        if not self.has_likelihood:
            raise ValueError(f"aae with encoder={self.options.encoder}, prior={self.options.prior} has no likelihood")
        mean, logvar = self.vae.encode(batch.x)
        z = self.vae.sample_latent(mean, logvar, k)
        log_px_z = self.vae.likelihood.log_prob(self.vae.decode(z), batch.x)
        return log_px_z + self.prior.log_prob(z) - gaussian_log_prob(z, mean, logvar)

    def label_condition(self, y, dtype=torch.float32):
        return F.one_hot(y, self.num_classes).to(dtype) if self.semi_supervised else None

    @torch.no_grad()
    def sample(self, n, generator=None, y=None):
        """Decoded prior samples; y picks the prior component (label-conditioned prior) or the
        category (semi-supervised), cycling through the classes unless given."""
        device = next(self.parameters()).device
        if y is None and self.num_classes:
            y = torch.arange(n, device=device) % self.num_classes
        conditioned = self.options.label_conditioned_prior or self.semi_supervised
        z = self.prior_sample(n, y if conditioned else None, device, generator)
        return self.vae.likelihood.mean(self.vae.decode(z, self.label_condition(y) if self.semi_supervised else None))

    @torch.no_grad()
    def reconstruct(self, batch):
        z, y_prob = self.codes(batch.x, sample=False)
        return self.vae.likelihood.mean(self.vae.decode(z, y_prob))
