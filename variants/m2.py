"""Kingma, Rezende, Mohamed & Welling (2014): the semi-supervised M2 model.

Adds a classifier q(y|x) and conditions encoder q(z|x,y) and decoder p(x|y,z) on the label, with
a uniform p(y). The objective is the paper's eq. 9,

    J_alpha = sum_{(x,y) labelled} L(x,y) + sum_{x unlabelled} U(x) + alpha * E_labelled[log q(y|x)],
    alpha = 0.1 N,

where L is the objective's bound of (x, y) (+ log p(y)), U sums the label out exactly
(core.objectives.LabelEnumerated, around whichever objective the config names: the ELBO, or the
IWAE bound), and N is the number of training examples. Per-example scaling (J divided by N, as the
authors' code, learn_yz_x_ss.py, divides its minibatch sums by n_tot):

    loss = -(N_l / N) mean_labelled L - ((N - N_l) / N) mean_unlabelled U + (alpha / N) mean_labelled CE

so each term is weighted by how often it occurs, and `alpha` is given per example (option
`alpha`, default 0.1: alpha = 0.1 N).

Ablation, not the paper's (option `labelled_weight`, default None = eq. 9's N_l / N): a float w
replaces the labelled weight and gives the unlabelled mean weight 1,

    loss = -w mean_labelled L - mean_unlabelled U + (alpha / N) mean_labelled CE,

so w = 1 weighs the two batches' means equally, as many reimplementations do. (Eq. 9 gives the
labelled bound (N_l / N) / ((N - N_l) / N) = 1/79 of the unlabelled one at 100 labels of 8,000.) A step draws one batch of the unlabelled data (the whole
training split; the labels of its labelled examples are not used there) and a labelled batch of
`labelled_batch_size` examples beside it; the weights make the step an unbiased estimate of J_alpha
whatever the ratio of the two batch sizes.

M1+M2 (the paper's Table 1, its best rows): option `m1_run` names a trained unconditional model
folder (a vae, `vaezoo train --output DIR`); its encoder is kept frozen inside this model, and M2
models the M1 posterior means E_q[z1|x] instead of the pixels, with a Gaussian likelihood (learned
diagonal variance, as the authors' type_px='gaussian'). The classifier reads the same means. Its
NLL is then a density of M1's latents, not of images, and is named `m1_latent_nll`; samples are
decoded through M1's decoder.
"""
import torch
import torch.nn.functional as F
from pydantic import Field

from core.data import labelled_subset
from core.model import VAE
from core.networks import DataShape, mlp
from core.objectives import LabelEnumerated
from core.registry import register_variant
from core.variant import Batch, Condition, StepOutput, Variant, VariantOptions


class M2Options(VariantOptions):
    num_labels: int = Field(100, ge=1, description="labelled training examples, class-balanced")
    # alpha / N, the per-example weight of the mean labelled cross-entropy (eq. 9, alpha = 0.1 N);
    # None is the paper's 0.1.
    alpha: float | None = Field(None, ge=0, description="alpha / N of eq. 9 (None: the paper's 0.1)")
    labelled_batch_size: int = Field(64, ge=1)
    # An ablation: the labelled mean bound's weight against the unlabelled mean's 1 (None: eq. 9)
    labelled_weight: float | None = Field(None, ge=0, description="weight of the mean labelled bound, the "
                                          "unlabelled mean weighing 1 (None: eq. 9's N_l/N and (N-N_l)/N)")
    m1_run: str | None = Field(None, description="M1+M2: a trained vae model folder whose encoder means M2 models")


@register_variant
class M2(Variant):
    name = "m2"
    paper = "Kingma, Rezende, Mohamed & Welling 2014, Semi-Supervised Learning with Deep Generative Models (NeurIPS)"
    description = "Semi-supervised: classifier q(y|x), label summed out on unlabelled data, alpha-weighted classification loss"
    Options = M2Options
    uses_labels = True
    encode_needs_labels = False  # unlabelled x is encoded under the classifier's label

    @classmethod
    def kind(cls, options):
        return "m1m2" if options.get("m1_run") else cls.name

    @classmethod
    def nll_metric_of(cls, options):
        return "m1_latent_nll" if options.get("m1_run") else cls.nll_metric

    def build_vae(self):
        if self.num_classes < 2:
            raise ValueError("m2 needs a labelled dataset (num_classes >= 2)")
        model_cfg, shape = self.model_cfg, self.shape
        self.m1: VAE | None = None
        if self.options.m1_run is not None:
            model_cfg, shape = self._load_m1(self.options.m1_run)
        self.feature_shape = shape
        self.classifier = torch.nn.Sequential(
            torch.nn.Flatten(), mlp([shape.numel, *model_cfg.hidden_dims, self.num_classes],
                                    model_cfg.activation, final_activation=False))
        self.enumerated = LabelEnumerated(self.objective, self.num_classes)
        return VAE(model_cfg, shape, cond_dim=self.num_classes)

    def _load_m1(self, folder):
        """M1+M2: M1's VAE (frozen; its weights travel in this model's state), and the model config
        and shape M2 gets over M1's latent means."""
        from core.serialization import load_model  # a model folder: loaded when this model is built

        m1, _ = load_model(folder)
        if m1.uses_labels or m1.vae.prior is not None:
            raise ValueError(f"variant.m1_run: {folder} holds a conditional model ({m1.name}); M1 is an unconditional vae")
        if m1.shape != self.shape:
            raise ValueError(f"variant.m1_run: {folder} models {m1.shape.as_tuple()} images, the data are "
                             f"{self.shape.as_tuple()}")
        self.m1 = m1.vae.requires_grad_(False)
        self.nll_metric = "m1_latent_nll"  # a density of M1's latents, never an image NLL
        cfg = self.model_cfg.model_copy(update={"likelihood": "gaussian", "architecture": "mlp"})
        return cfg, DataShape(1, 1, m1.model_cfg.latent_dim)

    def represent(self, x):
        """What M2 models: the images, or (M1+M2) M1's posterior means as (B, 1, 1, D)."""
        if self.m1 is None or x.shape[1:] == self.feature_shape.as_tuple():
            return x
        with torch.no_grad():
            mean, _ = self.m1.encode(x)
        return mean.view(-1, *self.feature_shape.as_tuple())

    @property
    def alpha_per_example(self) -> float:
        """alpha / N of eq. 9."""
        return self.options.alpha if self.options.alpha is not None else 0.1

    num_train: int | None = None  # N, set by prepare_training

    def term_weights(self) -> tuple[float, float]:
        """(N_l / N, (N - N_l) / N): how often a labelled and an unlabelled example occur; or
        (labelled_weight, 1) when that ablation is set."""
        if self.options.labelled_weight is not None:
            return self.options.labelled_weight, 1.0
        if self.num_train is None:
            raise RuntimeError("m2: call prepare_training first (eq. 9 weights its terms by the training set's size)")
        n, n_l = self.num_train, self.options.num_labels
        return n_l / n, (n - n_l) / n

    def classify(self, x):
        return self.classifier(self.represent(x)).argmax(-1)

    def encode(self, x, y=None):
        return super().encode(self.represent(x), y)

    @torch.no_grad()
    def sample(self, n, generator=None, y=None):
        out = super().sample(n, generator=generator, y=y)
        if self.m1 is None:
            return out
        return self.m1.likelihood.mean(self.m1.decode(out.view(n, -1)))  # M1 latents to images

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
        self.num_train = len(source)

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
        x = self.represent(x)
        log_qy = F.log_softmax(self.classifier(x), dim=-1).T  # (Y, B)
        terms = self.every_label_terms(x, self.objective.samples, training)
        bound, recon = self.enumerated.unlabelled_bound(terms, log_qy)
        return bound, recon, log_qy

    def losses(self, batch, groups):
        u_bound, u_recon, _ = self.unlabelled_bound(batch.x, training=True)
        x_labelled = self.represent(batch.x_labelled)
        labelled = self.terms(Batch(x_labelled, batch.y_labelled), self.objective.samples, training=True)
        l_bound = self.enumerated.labelled_bound(labelled)
        ce = F.cross_entropy(self.classifier(x_labelled), batch.y_labelled)
        w_labelled, w_unlabelled = self.term_weights()
        loss = -(w_labelled * l_bound.mean() + w_unlabelled * u_bound.mean()) + self.alpha_per_example * ce
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
        log_w = self.every_label_terms(self.represent(batch.x), k).log_w  # (k, Y*B)
        return (log_w + self.enumerated.log_prior_y).view(k * self.num_classes, len(batch))

    def log_weights_per_sample(self):
        return self.num_classes
