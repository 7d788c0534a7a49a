"""Kingma, Rezende, Mohamed & Welling (2014): the semi-supervised M2 model.

Adds a classifier q(y|x) and conditions encoder q(z|x,y) and decoder p(x|y,z) on the label, with
a uniform p(y). Labelled examples train on the objective's bound of (x, y) plus alpha times the
classification loss; unlabelled ones sum the label out exactly (core.objectives.LabelEnumerated,
around whichever objective the config names: the ELBO, or the IWAE bound).
"""
import torch
import torch.nn.functional as F
from pydantic import Field

from core.data import labelled_subset
from core.model import VAE
from core.networks import mlp
from core.objectives import LabelEnumerated
from core.registry import register_variant
from core.variant import Batch, Condition, StepOutput, Variant, VariantOptions


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
    uses_labels = True
    encode_needs_labels = False  # unlabelled x is encoded under the classifier's label

    def build_vae(self):
        if self.num_classes < 2:
            raise ValueError("m2 needs a labelled dataset (num_classes >= 2)")
        self.classifier = torch.nn.Sequential(
            torch.nn.Flatten(), mlp([self.shape.numel, *self.model_cfg.hidden_dims, self.num_classes],
                                    self.model_cfg.activation, final_activation=False))
        self.enumerated = LabelEnumerated(self.objective, self.num_classes)
        return VAE(self.model_cfg, self.shape, cond_dim=self.num_classes)

    @property
    def alpha(self) -> float:
        return self.options.alpha if self.options.alpha is not None else 0.1 * self.options.num_labels

    def classify(self, x):
        return self.classifier(x).argmax(-1)

    # -- hooks: the label is the condition; a labelled batch rides beside each batch ---------------
    def label_condition(self, y, dtype=torch.float32):
        return F.one_hot(y, self.num_classes).to(dtype)

    def condition(self, batch):
        """The batch's labels, or the classifier's most likely ones where it has none."""
        y = self.classify(batch.x) if batch.y is None else batch.y
        return Condition(self.label_condition(y, batch.x.dtype))

    def prepare_training(self, source, train_cfg):
        if source.data.labels is None:
            raise ValueError(f"{self.name} needs a labelled dataset; {source.data.name} has no labels")
        self.labelled = labelled_subset(source.data.labels.cpu(), self.options.num_labels, self.num_classes,
                                        seed=train_cfg.seed).to(source.device)

    def draw_batch(self, source, indices):
        batch = source.batch(indices)
        pick = self.labelled[torch.randint(len(self.labelled), (self.options.labelled_batch_size,),
                                           device=self.labelled.device)]
        labelled = source.batch(pick)
        batch.x_labelled, batch.y_labelled = labelled.x, labelled.y
        return batch

    # -- the label summed out ------------------------------------------------------------------------
    def every_label_terms(self, x, k=1, training=False):
        """Terms of each example under every label, label by label: (k, Y*B) rows."""
        y = torch.arange(self.num_classes, device=x.device).repeat_interleave(x.shape[0])
        return self.terms(Batch(x.repeat(self.num_classes, 1, 1, 1), y), k, training=training)

    def unlabelled_bound(self, x, training=False):
        """(bound, reconstruction, log q(y|x)) per example, y summed out in one batched pass."""
        log_qy = F.log_softmax(self.classifier(x), dim=-1).T  # (Y, B)
        terms = self.every_label_terms(x, self.objective.samples, training)
        bound, recon = self.enumerated.unlabelled_bound(terms, log_qy)
        return bound, recon, log_qy

    def losses(self, batch, groups):
        u_bound, u_recon, _ = self.unlabelled_bound(batch.x, training=True)
        labelled = self.terms(Batch(batch.x_labelled, batch.y_labelled), self.objective.samples, training=True)
        l_bound = self.enumerated.labelled_bound(labelled)
        ce = F.cross_entropy(self.classifier(batch.x_labelled), batch.y_labelled)
        loss = -(u_bound.mean() + l_bound.mean()) + self.alpha * ce
        # kl: everything the bound takes off the reconstruction
        metrics = {"bound": u_bound.mean(), "elbo": u_bound.mean(), "kl": (u_recon - u_bound).mean(),
                   "recon": u_recon.mean(), f"labelled_{self.objective.name}": l_bound.mean(),
                   "classification_loss": ce}
        return {"model": StepOutput(loss, metrics)}

    def evaluate(self, batch):
        bound, recon, log_qy = self.unlabelled_bound(batch.x)
        out = {"elbo": bound, "kl": recon - bound, "recon": recon}
        if batch.y is not None:
            out["accuracy"] = (log_qy.argmax(0) == batch.y).to(bound.dtype)
        return out

    def log_weights(self, batch, k):
        """(Y*k, B): for each label y, k samples of z ~ q(z|x,y), weights carrying log p(y)."""
        log_w = self.every_label_terms(batch.x, k).log_w  # (k, Y*B)
        return (log_w + self.enumerated.log_prior_y).view(k * self.num_classes, len(batch))

    def log_weights_per_sample(self):
        return self.num_classes
