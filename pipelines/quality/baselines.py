"""The baselines the papers beat: a classifier on the labels alone (m2), a deterministic network
that predicts hidden quadrants (cvae)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.config import RunConfig
from core.data import PreparedData, labelled_subset, to_float
from core.evaluation import iterate_batches
from core.likelihoods import Bernoulli
from core.networks import mlp
from core.training import epoch_permutation
from variants.cvae import quadrant_mask
from variants.m2 import M2Options


def label_classifier(config: RunConfig, shape, num_classes: int) -> nn.Module:
    """The same network as m2's classifier q(y|x)."""
    return nn.Sequential(nn.Flatten(), mlp([shape.numel, *config.model.hidden_dims, num_classes],
                                           config.model.activation, final_activation=False))


def train_label_classifier(config: RunConfig, data: PreparedData, num_labels: int) -> tuple[nn.Module, dict[str, float]]:
    """Supervised only: m2's labelled examples (the same class-balanced subset, same seed), the
    same number of labelled batches m2 draws (one per unlabelled batch), Adam at the same rate."""
    t = config.train
    torch.manual_seed(t.seed)
    net = label_classifier(config, data.shape, data.num_classes)
    chosen = labelled_subset(data.train.labels, num_labels, data.num_classes, seed=t.seed)
    labelled_batch = M2Options().labelled_batch_size
    opt = torch.optim.Adam(net.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    steps = t.epochs * -(-len(data.train) // t.batch_size)
    gen = torch.Generator().manual_seed(t.seed + 1)
    net.train()
    for _ in range(steps):
        pick = chosen[torch.randint(len(chosen), (labelled_batch,), generator=gen)]
        x = to_float(data.train.images[pick], data.dynamic_train, generator=gen)
        loss = F.cross_entropy(net(x), data.train.labels[pick])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net, {"accuracy": classifier_accuracy(net, data.test)}


@torch.no_grad()
def classifier_accuracy(net: nn.Module, test) -> float:
    net.eval()
    correct = sum(int((net(b.x).argmax(-1) == b.y).sum()) for b in iterate_batches(test, 1000))
    return correct / len(test)


def completion_network(config: RunConfig, shape) -> nn.Module:
    """Deterministic baseline: visible pixels in, Bernoulli logits of every pixel out, through the
    hidden sizes the cvae's networks use."""
    return nn.Sequential(nn.Flatten(), mlp([shape.numel, *config.model.hidden_dims, shape.numel],
                                           config.model.activation, final_activation=False))


def hidden_pixels_nll(net: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """-log p(hidden pixels | visible ones) per example, in nats: the cvae's Bernoulli likelihood,
    scored on the hidden pixels only, as the cvae's conditional NLL is."""
    return -Bernoulli().log_prob(net(x * mask).view_as(x), x, 1.0 - mask)


def train_completion_network(config: RunConfig, data: PreparedData, visible: int,
                             nll_examples: int | None = None) -> tuple[nn.Module, dict[str, float]]:
    """Trained as the cvae is; scored on the first `nll_examples` test images (all when None), the
    images the cvae's conditional NLL averages over."""
    t, s = config.train, data.shape
    torch.manual_seed(t.seed)
    net = completion_network(config, s)
    mask = quadrant_mask(s.channels, s.height, s.width, visible)
    opt = torch.optim.Adam(net.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    n = len(data.train)
    net.train()
    for epoch in range(1, t.epochs + 1):
        perm = epoch_permutation(n, t.seed, epoch)
        for start in range(0, n, t.batch_size):
            x = to_float(data.train.images[perm[start:start + t.batch_size]], data.dynamic_train)
            loss = hidden_pixels_nll(net, x, mask).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    n = len(data.test) if nll_examples is None else min(nll_examples, len(data.test))
    with torch.no_grad():
        total = sum(float(hidden_pixels_nll(net, b.x, mask).double().sum())
                    for b in iterate_batches(data.test, 1000, torch.arange(n)))
    return net, {"cond_nll": total / n, "nll_examples": n, "test_examples": len(data.test)}
