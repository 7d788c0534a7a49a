"""How much M2's generative model uses the label: if L(x, y) hardly changes with y, the unlabelled
term of eq. 9 (sum_y q(y|x) L(x, y) + H(q(y|x))) gives the classifier no signal about the label.

For test images x with true labels y*: the margin L(x, y*) - max_{y != y*} L(x, y) (nats; positive
when the decoder prefers the true label), and the accuracy of the "generative classifier"
argmax_y L(x, y), beside q(y|x)'s."""
from __future__ import annotations

import torch

from core.variant import Batch
from variants.m2 import M2


@torch.no_grad()
def label_bounds(m2: M2, x: torch.Tensor, samples: int = 10, batch_size: int = 250) -> torch.Tensor:
    """(B, Y): the ELBO L(x, y) + log p(y) of each image under each label, its Monte Carlo estimate
    averaged over `samples` draws of z ~ q(z|x,y)."""
    m2.eval()
    rows = []
    for start in range(0, len(x), batch_size):
        chunk = m2.represent(x[start:start + batch_size])
        terms = m2.every_label_terms(chunk, samples)  # (k, Y*b), label by label
        bound = m2.enumerated.labelled_bound(terms)  # the mean over the k draws, + log p(y)
        rows.append(bound.view(m2.num_classes, len(chunk)).T)
    return torch.cat(rows)


def label_use(bounds: torch.Tensor, labels: torch.Tensor, classifier_logits: torch.Tensor | None = None) -> dict:
    """Summaries of `label_bounds` against the true labels: the mean and median margin
    L(x, y*) - max_{y != y*} L(x, y), the spread of L over labels (max - min), and the generative
    classifier's accuracy (with q(y|x)'s, given its logits)."""
    if bounds.ndim != 2 or len(bounds) != len(labels):
        raise ValueError(f"bounds must be (B, Y) for B={len(labels)} labels, got {tuple(bounds.shape)}")
    true = bounds.gather(1, labels[:, None]).squeeze(1)
    others = bounds.scatter(1, labels[:, None], float("-inf")).amax(1)
    margin = (true - others).double()
    out = {"examples": len(labels), "margin_mean": margin.mean().item(), "margin_median": margin.median().item(),
           "label_spread_mean": (bounds.amax(1) - bounds.amin(1)).double().mean().item(),
           "generative_accuracy": (bounds.argmax(1) == labels).double().mean().item()}
    if classifier_logits is not None:
        out["classifier_accuracy"] = (classifier_logits.argmax(1) == labels).double().mean().item()
    return out
