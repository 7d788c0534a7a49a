"""Where a training step's time goes, in a live loop, and what two of its parts cost (issue #20, item 1).

    python benchmarks/step_parts.py [--batch-sizes 128 512] [--rounds 40] [--steps 25] [--no-save]

The default run of train_throughput.py and peer_paired_epochs.py: the MLP VAE (784-400-20,
Bernoulli), Adam 1e-3 (core.optim.FusedAdam), dynamic binarisation, all 60,000 Fashion-MNIST
training images, torch's default threads. One step here is the body of core.training.train's loop
for a variant with one optimiser group: `draw_batch`, `zero_grad`, `losses` with the loss's
`.item()`, `backward`, the optimiser's `step`.

* `parts_ms`: the median over the timed steps of each part's wall time, read with perf_counter
  around it. Parts are timed where they run, after the previous part: a part that finds its data
  out of the caches pays for it here, as in training (the same draw takes about a third of this
  time in a loop of its own).
  `torch_zero_grad_ms` is the zero_grad part timed the same way with torch's `zero_grad`.
* `compared`: the step as it is (`as_is`) against the same step with one part changed, in one
  process, alternating blocks of `--steps` steps over `--rounds` rounds (each round in the other
  order), judged by benchmarks/_paired.py as "the changed step is at least as fast":
  - `predrawn_bits`: the batch comes from bits drawn once before the run (data.binarize=static's
    uint8 0/255 and its conversion), instead of a fresh Bernoulli draw per batch: what the dynamic
    draw costs;
  - `fixed_words`: the draw as it is, but its 15-bit uniforms are a copy of one fixed buffer:
    what making the random words costs;
  - `per_batch_words`: the uniforms made batch by batch (`core.data.dynamic_binarize`: a seed, an
    SFC64 generator and a numpy call per batch), as before core.data.UniformStream;
  - `torch_zero_grad`: torch's `Optimizer.zero_grad` instead of FusedAdam's plain loop: what
    FusedAdam.zero_grad saves.
  Each side is its own model and optimiser. Two sides with no change differ by up to 2-3% in a
  40-round run here (an A/A check), so a change smaller than that is not resolved by this
  comparison; the part times above measure a small part directly.

Prints one JSON object; unless --no-save it is merged into benchmarks/results.json under
"step_parts".
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from _paired import alternate, judge_ratio  # noqa: E402
from _results import add_save_argument, emit  # noqa: E402

PARTS = ("draw", "zero_grad", "forward", "backward", "optimizer")
CHANGES = ("predrawn_bits", "fixed_words", "per_batch_words", "torch_zero_grad")


def make_step(batch_size: int, change: str | None, data, timings: dict[str, list[float]] | None = None) -> Callable[[], None]:
    """One training step of the default run, with `change` applied (None: as it is); each call
    takes the next batch of a fixed permutation. With `timings`, each part's seconds are appended."""
    import core.data
    from core.batches import Batch, TrainingSource
    from core.serialization import build_variant
    from train_throughput import vaezoo_config

    cfg = vaezoo_config(batch_size, 1, "dynamic", None)
    torch.manual_seed(cfg.train.seed)
    variant = build_variant(cfg, data.shape, data.num_classes)
    optimizers = variant.configure_optimizers(cfg.train)
    (group, optimizer), = optimizers.items()
    source = TrainingSource(data.train, data.dynamic_train, torch.device("cpu"))
    variant.prepare_training(source, cfg.train)
    draw = lambda indices: variant.draw_batch(source, indices)  # noqa: E731
    if change == "predrawn_bits":  # data.binarize=static's bits (uint8 0/255) and its conversion
        bits = core.data.static_binarize(data.train.images)
        draw = lambda indices: Batch(core.data.to_float(bits.index_select(0, indices)))  # noqa: E731
    elif change == "fixed_words":
        words = core.data._uniform_15_bit(torch.Size([batch_size, *data.shape.as_tuple()]), None, torch.device("cpu"))

        def draw(indices):
            images = data.train.images.index_select(0, indices)
            return Batch(core.data.binarize_below(images, words[:len(indices)].clone()))
    elif change == "per_batch_words":
        draw = lambda indices: Batch(core.data.dynamic_binarize(data.train.images.index_select(0, indices)))  # noqa: E731
    zero_grad = ((lambda: torch.optim.Optimizer.zero_grad(optimizer, set_to_none=True)) if change == "torch_zero_grad"
                 else (lambda: optimizer.zero_grad(set_to_none=True)))
    order = torch.randperm(len(source), generator=torch.Generator().manual_seed(0))
    batches = [b for b in order.split(batch_size) if len(b) == batch_size]
    state = {"step": 0}

    def step() -> None:
        indices = batches[state["step"] % len(batches)]
        state["step"] += 1
        marks = [time.perf_counter()]
        batch = draw(indices)
        marks.append(time.perf_counter())
        zero_grad()
        marks.append(time.perf_counter())
        out = variant.losses(batch, (group,))[group]
        out.loss.item()
        marks.append(time.perf_counter())
        out.loss.backward()
        marks.append(time.perf_counter())
        optimizer.step()
        marks.append(time.perf_counter())
        if timings is not None:
            for part, start, end in zip(PARTS, marks, marks[1:]):
                timings[part].append(end - start)
    return step


def part_times(batch_size: int, steps: int, data, change: str | None = None) -> dict[str, float]:
    timings: dict[str, list[float]] = {part: [] for part in PARTS}
    step = make_step(batch_size, change, data, timings)
    for _ in range(30):  # warm-up: the optimiser's state, the allocator, the caches
        step()
    for part in PARTS:
        timings[part].clear()
    for _ in range(steps):
        step()
    return {part: round(statistics.median(times) * 1e3, 3) for part, times in timings.items()}


def compare(batch_size: int, rounds: int, steps: int, data) -> dict[str, dict]:
    sides = {name: make_step(batch_size, None if name == "as_is" else name, data) for name in ("as_is", *CHANGES)}
    for step in sides.values():
        for _ in range(30):
            step()
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for round_index in range(rounds):
        for name in alternate(list(sides), round_index):
            start = time.perf_counter()
            for _ in range(steps):
                sides[name]()
            seconds[name].append((time.perf_counter() - start) / steps)
    compared: dict[str, dict] = {name: {"step_ms_median": round(statistics.median(s) * 1e3, 3)} for name, s in seconds.items()}
    for name in CHANGES:  # rates (steps/s), so a ratio above 1 means the changed step is the faster one
        pairs = [(1 / changed, 1 / as_is) for changed, as_is in zip(seconds[name], seconds["as_is"])]
        compared[name]["changed_against_as_is"] = judge_ratio(pairs, 1.0)
    return compared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--steps", type=int, default=25, help="steps per block in the comparison; steps timed x 8 for the parts")
    add_save_argument(parser)
    args = parser.parse_args()
    from core.datasets import prepare_data

    data = prepare_data("fashion-mnist", None, "dynamic", None, 500)
    rows = []
    for batch_size in args.batch_sizes:
        parts = part_times(batch_size, args.steps * 8, data)
        torch_zero_grad = part_times(batch_size, args.steps * 8, data, "torch_zero_grad")["zero_grad"]
        print(f"[step_parts] batch {batch_size}: {parts} ms; torch's zero_grad {torch_zero_grad} ms",
              file=sys.stderr, flush=True)
        rows.append({"batch_size": batch_size, "parts_ms": parts, "step_ms": round(sum(parts.values()), 3),
                     "torch_zero_grad_ms": torch_zero_grad, "compared": compare(batch_size, args.rounds, args.steps, data)})
    emit("step_parts", {"benchmark": "step_parts", "torch_threads": torch.get_num_threads(), "rounds": args.rounds,
                        "steps_per_block": args.steps, "results": rows}, args.save)


if __name__ == "__main__":
    main()
