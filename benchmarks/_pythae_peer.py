"""The peer in benchmarks/train_throughput.py: pythae 0.1.2 (the `bench` extra) training the same
MLP 784-400-20 Bernoulli VAE with Adam 1e-3 at the same batch size on the same images.

What is timed: pythae's own `BaseTrainer.train_step(epoch)`, one call per epoch, which is the
training half of `BaseTrainer.train()` (its DataLoader over a `BaseDataset`, the model's forward
and loss, zero_grad / backward / Adam step, the loss's .item() and its progress-bar callback).
`train()` itself also runs an evaluation pass, logging and checkpoint bookkeeping each epoch; we
leave those out, as the vaezoo rows time only their training steps. Calling its trainer rather
than re-writing its loop keeps the per-sample dataset and collate overhead a pythae user meets.

The network as pythae expresses it: a `BaseEncoder` returning (embedding, log_covariance) and a
`BaseDecoder` whose output goes through a sigmoid (as pythae's default MLP decoder does), scored
by `reconstruction_loss="bce"` (binary cross-entropy on probabilities, summed over pixels, mean
over the batch), the same objective vaezoo's Bernoulli likelihood computes on logits.
"""
from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

HIDDEN, LATENT, PIXELS = 400, 20, 784


def pythae_version() -> str | None:
    """pythae's version when it is installed (pip install '.[bench]'), else None."""
    try:
        import pythae  # noqa: F401
        from importlib.metadata import version
    except ImportError:
        return None
    return version("pythae")


def pythae_throughput(x: torch.Tensor, batch_size: int, epochs: int, device: str = "cpu",
                      before_epoch: Callable[[], None] | None = None,
                      after_epoch: Callable[[float], None] | None = None) -> float:
    """Images per second of pythae's training steps on `x` (N, 1, 28, 28) floats in [0, 1], the mean
    over the epochs after the first (a warm-up). `before_epoch()` runs before each epoch's timer
    starts and `after_epoch(images_per_sec)` after it stops (benchmarks/peer_paired_epochs.py)."""
    from pythae.data.datasets import BaseDataset
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.trainers import BaseTrainer, BaseTrainerConfig

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.hidden, self.mu, self.log_var = nn.Linear(PIXELS, HIDDEN), nn.Linear(HIDDEN, LATENT), nn.Linear(HIDDEN, LATENT)

        def forward(self, x):
            h = F.relu(self.hidden(x.reshape(-1, PIXELS)))
            return ModelOutput(embedding=self.mu(h), log_covariance=self.log_var(h))

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.hidden, self.out = nn.Linear(LATENT, HIDDEN), nn.Linear(HIDDEN, PIXELS)

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.out(F.relu(self.hidden(z)))).reshape(-1, 1, 28, 28))

    model = VAE(VAEConfig(input_dim=(1, 28, 28), latent_dim=LATENT, reconstruction_loss="bce"),
                encoder=Encoder(), decoder=Decoder())
    rates = []
    with tempfile.TemporaryDirectory(prefix="vaezoo-bench-pythae-") as tmp, contextlib.redirect_stdout(sys.stderr):
        config = BaseTrainerConfig(output_dir=tmp, per_device_train_batch_size=batch_size, num_epochs=epochs,
                                   learning_rate=1e-3, no_cuda=device == "cpu")
        trainer = BaseTrainer(model, BaseDataset(x, torch.zeros(len(x))), training_config=config)
        trainer.prepare_training()  # what train() does first: seed, Adam, output folder, callbacks
        for epoch in range(1, epochs + 1):
            if before_epoch is not None:
                before_epoch()
            started = time.perf_counter()
            trainer.train_step(epoch)  # one pass over the data; .item() of each loss syncs the device
            rates.append(len(x) / (time.perf_counter() - started))
            if after_epoch is not None:
                after_epoch(rates[-1])
            trainer.callback_handler.on_epoch_end(training_config=config)  # closes its progress bar
    return sum(rates[1:]) / len(rates[1:])
