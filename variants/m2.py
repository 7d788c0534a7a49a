"""Kingma, Rezende, Mohamed & Welling (2014): the semi-supervised M2 model.

Adds a classifier q(y|x) and conditions encoder q(z|x,y) and decoder p(x|y,z) on the label, with
a uniform p(y). Labelled examples train on ELBO(x, y) plus alpha times the classification loss;
unlabelled ones sum the label out exactly: sum_y q(y|x) ELBO(x, y) + H(q(y|x)).
"""
import math

import torch
import torch.nn.functional as F
from pydantic import Field

from core.model import VAE
from core.networks import mlp
from core.objectives import enumerated_elbo, gaussian_kl
from core.registry import register_variant
from core.variant import StepOutput, Variant, VariantOptions


class M2Options(VariantOptions):
    num_labels: int = Field(100, ge=1, description="labelled training examples, class-balanced")
    # Weight of the classification loss. Kingma et al. sum over the data set with alpha = 0.1 N;
    # rescaled to per-example batch means that is about 0.1 * num_labels, the default (None).
    alpha: float | None = Field(None, ge=0)
    labelled_batch_size: int = Field(64, ge=1)


@register_variant
class M2(Variant):
    name = "m2"
    paper = "Kingma, Rezende, Mohamed & Welling 2014, Semi-Supervised Learning with Deep Generative Models (NeurIPS)"
    description = "Semi-supervised: classifier q(y|x), label summed out on unlabelled data, alpha-weighted classification loss"
    Options = M2Options
    semi_supervised = True
    uses_labels = True

    def build_vae(self):
        if self.num_classes < 2:
            raise ValueError("m2 needs a labelled dataset (num_classes >= 2)")
        self.classifier = torch.nn.Sequential(
            torch.nn.Flatten(), mlp([self.shape.numel, *self.model_cfg.hidden_dims, self.num_classes],
                                    self.model_cfg.activation, final_activation=False))
        return VAE(self.model_cfg, self.shape, cond_dim=self.num_classes)

    def num_labelled(self):
        return self.options.num_labels

    @property
    def alpha(self) -> float:
        return self.options.alpha if self.options.alpha is not None else 0.1 * self.options.num_labels

    def _log_prior_y(self) -> float:
        return -math.log(self.num_classes)

    def _onehot(self, y, dtype):
        return F.one_hot(y, self.num_classes).to(dtype)

    def labelled_elbo(self, x, y):
        """ELBO(x, y) = E_q(z|x,y)[log p(x|y,z)] - KL(q(z|x,y) || p(z)) + log p(y), per example."""
        terms = self.vae.terms(x, x, c=self._onehot(y, x.dtype))
        recon = terms.log_px_z.mean(0)
        return recon - terms.kl + self._log_prior_y(), recon, terms.kl

    def unlabelled_terms(self, x):
        """Label summed out exactly: (bound, recon, kl, log q(y|x)) per example; one batched pass over all y."""
        n_cls, b = self.num_classes, x.shape[0]
        log_qy = F.log_softmax(self.classifier(x), dim=-1).T  # (Y, B)
        x_rep = x.repeat(n_cls, 1, 1, 1)
        y_rep = torch.arange(n_cls, device=x.device).repeat_interleave(b)
        elbo_y, recon_y, kl_y = (t.view(n_cls, b) for t in self.labelled_elbo(x_rep, y_rep))
        bound = enumerated_elbo(elbo_y, log_qy)
        qy = log_qy.exp()
        recon = (qy * recon_y).sum(0)
        return bound, recon, recon - bound, log_qy  # kl: everything the bound takes off the reconstruction

    def training_step(self, batch, group):
        u_bound, u_recon, u_kl, _ = self.unlabelled_terms(batch.x)
        l_elbo, _, _ = self.labelled_elbo(batch.x_labelled, batch.y_labelled)
        ce = F.cross_entropy(self.classifier(batch.x_labelled), batch.y_labelled)
        loss = -(u_bound.mean() + l_elbo.mean()) + self.alpha * ce
        metrics = self._core_metrics(u_bound, u_kl, u_recon)
        metrics.update(labelled_elbo=l_elbo.mean(), classification_loss=ce)
        return StepOutput(loss, metrics)

    def evaluate(self, batch):
        bound, recon, kl, log_qy = self.unlabelled_terms(batch.x)
        out = {"elbo": bound, "kl": kl, "recon": recon}
        if batch.y is not None:
            out["accuracy"] = (log_qy.argmax(0) == batch.y).to(bound.dtype)
        return out

    def log_weights(self, batch, k):
        """(Y*k, B): for each label y, k samples of z ~ q(z|x,y), weights carrying log p(y)."""
        x, n_cls, b = batch.x, self.num_classes, batch.x.shape[0]
        x_rep = x.repeat(n_cls, 1, 1, 1)
        y_rep = torch.arange(n_cls, device=x.device).repeat_interleave(b)
        log_w = self.vae.terms(x_rep, x_rep, k=k, c=self._onehot(y_rep, x.dtype)).log_w  # (k, Y*B)
        return (log_w + self._log_prior_y()).view(k * n_cls, b)

    def log_weights_per_sample(self):
        return self.num_classes

    def classify(self, x):
        return self.classifier(x).argmax(-1)

    def encode(self, x, y=None):
        """Posterior of z given x and its label; without a label, the classifier's most likely one."""
        y = self.classify(x) if y is None else y
        return self.vae.encode(x, self._onehot(y, x.dtype))

    @torch.no_grad()
    def sample(self, n, generator=None, y=None):
        device = next(self.parameters()).device
        y = torch.arange(n, device=device) % self.num_classes if y is None else y
        return self.vae.generate(n, c=self._onehot(y, torch.float32), generator=generator)

    @torch.no_grad()
    def decode_mean(self, z, y=None):
        """Decoding for a given label (class 0 unless `y` is given): z carries the style."""
        y = torch.zeros(z.shape[0], dtype=torch.long, device=z.device) if y is None else y
        return self.vae.likelihood.mean(self.vae.decode(z, self._onehot(y, z.dtype)))

    @torch.no_grad()
    def reconstruct(self, batch):
        y = self.classify(batch.x)
        c = self._onehot(y, batch.x.dtype)
        mean, _ = self.vae.encode(batch.x, c)
        return self.vae.likelihood.mean(self.vae.decode(mean, c))
