"""The quality protocol: every variant trained on one budget and evaluated as its paper evaluates it.

Each suite sets a variant against the baseline its paper beats, trained on the same data, network
sizes, optimiser and number of epochs:

  burda  vae and iwae trained with k = 1, 5, 50 samples; test NLL and active units
         (Burda, Grosse & Salakhutdinov 2016, Table 1)
  dvae   the dvae for each corruption against the vae (k=1), both scored on clean test data
         (Im, Ahn, Memisevic & Bengio 2017)
  m2     m2 test accuracy with N labels against a classifier of the same size trained on the N
         labels alone (Kingma, Rezende, Mohamed & Welling 2014, Table 1)
  cvae   conditional NLL of the hidden quadrants given 1, 2 or 3 visible ones, against a
         deterministic network that predicts them (Sohn, Lee & Yan 2015, Table 1)
  zoo    the label-conditioned cvae, so that every variant has a row in the shared table

Every model gets the same test metrics: ELBO, KL and active units on the whole test split, and
the importance-sampled NLL with `nll_samples` samples on its first `nll_examples` images (m2 sums
its 10 labels out exactly, 10x the decoder work, so it uses a tenth of those images).

Results are kept per model in OUT/results/<key>.json, written once the model is evaluated, so an
interrupted benchmark continues where it stopped, and several processes can share one OUT (each
model is claimed by one of them: OUT/results/<key>.lock holds its pid); OUT/quality.json holds the whole table and the
findings, each claim of a paper with whether it holds here and the numbers behind it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.config import RunConfig, parse_override
from core.data import PreparedData, labelled_subset, prepare_data, to_float
from core.evaluation import evaluate, iterate_batches
from core.files import atomic_write_json
from core.likelihoods import Bernoulli
from core.networks import mlp
from core.serialization import load_model, save_model
from core.training import epoch_permutation, train
from pipelines.processes import pid_alive
from variants.cvae import quadrant_mask
from variants.m2 import M2Options

SUITES = ("burda", "dvae", "m2", "cvae", "zoo")
CORRUPTIONS = ("gaussian", "salt_and_pepper", "masking")


@dataclass
class Budget:
    """What every model of one benchmark shares."""

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    epochs: int = 5
    nll_samples: int = 5000
    nll_examples: int = 1000
    iwae_ks: list[int] = field(default_factory=lambda: [1, 5, 50])
    m2_labels: list[int] = field(default_factory=lambda: [100, 600, 1000, 3000])
    train_limit: int | None = None
    test_limit: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # --set, applied to every model's config

    def base_config(self) -> RunConfig:
        raw = RunConfig().to_dict()
        raw["data"].update(dataset=self.dataset, data_dir=self.data_dir, binarize="dynamic",
                           train_limit=self.train_limit, test_limit=self.test_limit)
        # Per-epoch evaluation is only a progress signal here: keep it cheap.
        raw["train"].update(epochs=self.epochs, eval_nll_samples=10, eval_nll_examples=100)
        return RunConfig.from_dict(raw).with_overrides(self.overrides)


@dataclass
class Job:
    key: str
    suite: str
    kind: str                    # "variant", "label_classifier" or "completion_network"
    variant: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    labels: int | None = None    # label_classifier: labelled examples
    visible: int | None = None   # completion_network: visible quadrants


def plan(budget: Budget, suites: list[str]) -> list[Job]:
    jobs: dict[str, Job] = {}

    def add(job: Job) -> None:
        jobs.setdefault(job.key, job)

    for suite in suites:
        if suite == "burda":
            for k in budget.iwae_ks:
                add(Job(f"vae-k{k}", suite, "variant", "vae", {"samples": k}))
                add(Job(f"iwae-k{k}", suite, "variant", "iwae", {"k": k}))
        elif suite == "dvae":
            add(Job("vae-k1", suite, "variant", "vae", {"samples": 1}))
            for corruption in CORRUPTIONS:
                add(Job(f"dvae-{corruption}", suite, "variant", "dvae", {"corruption": corruption}))
        elif suite == "m2":
            for n in budget.m2_labels:
                add(Job(f"m2-n{n}", suite, "variant", "m2", {"num_labels": n}))
                add(Job(f"classifier-n{n}", suite, "label_classifier", labels=n))
        elif suite == "cvae":
            for q in (1, 2, 3):
                add(Job(f"cvae-q{q}", suite, "variant", "cvae", {"condition": "quadrants", "visible_quadrants": q}))
                add(Job(f"network-q{q}", suite, "completion_network", visible=q))
        elif suite == "zoo":
            add(Job("cvae-label", suite, "variant", "cvae", {"condition": "label"}))
        else:
            raise ValueError(f"unknown suite {suite!r}: choose from {', '.join(SUITES)}")
    return list(jobs.values())


# -- baselines --------------------------------------------------------------------------------

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


def train_completion_network(config: RunConfig, data: PreparedData, visible: int) -> tuple[nn.Module, dict[str, float]]:
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
    with torch.no_grad():
        total = sum(float(hidden_pixels_nll(net, b.x, mask).double().sum()) for b in iterate_batches(data.test, 1000))
    return net, {"cond_nll": total / len(data.test)}


# -- running ----------------------------------------------------------------------------------

def job_config(budget: Budget, job: Job) -> RunConfig:
    base = budget.base_config()
    if job.kind != "variant":
        return base
    raw = base.to_dict() | {"variant_name": job.variant, "variant": dict(job.options)}
    return RunConfig.from_dict(raw)


def run_job(job: Job, budget: Budget, data: PreparedData, out: Path, progress: bool) -> dict[str, Any]:
    config = job_config(budget, job)
    if not progress:
        config = config.with_overrides({"train.progress": False})
    started = time.perf_counter()
    result: dict[str, Any] = {"key": job.key, "suite": job.suite, "kind": job.kind, "variant": job.variant,
                              "options": job.options}
    if job.kind == "label_classifier":
        _, metrics = train_label_classifier(config, data, job.labels)
        result.update(metrics, labels=job.labels, train_seconds=round(time.perf_counter() - started, 1))
        return result
    if job.kind == "completion_network":
        net, metrics = train_completion_network(config, data, job.visible)
        (out / "models").mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), out / "models" / f"{job.key}.pt")  # read back weights-only for the figures
        result.update(metrics, visible_quadrants=job.visible, train_seconds=round(time.perf_counter() - started, 1))
        return result

    history: list[dict[str, Any]] = []

    def report(metrics, checkpoint):
        history.append(metrics)
        if progress:
            print(f"  {job.key} epoch {metrics['epoch']}: train bound {metrics.get('train/bound', float('nan')):.2f}, "
                  f"test ELBO {metrics.get('test/elbo', float('nan')):.2f}", file=sys.stderr, flush=True)

    variant = train(config, report=report, data=data)
    train_seconds = time.perf_counter() - started
    examples = budget.nll_examples
    if job.variant == "m2":
        examples = max(1, examples // max(1, data.num_classes))
    started = time.perf_counter()
    metrics = evaluate(variant, data.test, nll_samples=budget.nll_samples, nll_examples=examples, progress=progress)
    save_model(variant, config, out / "models" / job.key, extra={"test_metrics": metrics})
    result.update(metrics, nll_samples=budget.nll_samples, nll_examples=min(examples, len(data.test)),
                  test_examples=len(data.test), train_seconds=round(train_seconds, 1),
                  eval_seconds=round(time.perf_counter() - started, 1),
                  images_per_sec=round(sum(h["train/images_per_sec"] for h in history) / len(history)))
    return result


def _claim(result_path: Path) -> int | None:
    """Claim a model for this process, so that several processes can share one --out (one per
    core, or per machine on shared storage): None when claimed, else the pid of the live process
    that holds it. A lock whose process is gone (killed) is taken over."""
    lock = result_path.with_suffix(".lock")
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        text = lock.read_text().strip() if lock.exists() else ""
        if not text.isdigit():
            return -1  # being created this instant by another process
        if pid_alive(int(text)):
            return int(text)
        lock.unlink(missing_ok=True)
        return _claim(result_path)
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return None


def run(budget: Budget, suites: list[str], out: Path, force: bool = False, progress: bool = True,
        figures: bool = True) -> dict[str, Any]:
    out = Path(out)
    jobs = plan(budget, suites)
    (out / "results").mkdir(parents=True, exist_ok=True)
    budget_file = out / "budget.json"
    if budget_file.exists() and not force:
        previous = json.loads(budget_file.read_text())
        if previous != asdict(budget):
            # Results made under another budget must not be mixed into one table.
            raise ValueError(f"{out} holds results of another budget ({budget_file}); choose another --out or pass --force")
    atomic_write_json(budget_file, asdict(budget))
    d = budget.base_config().data
    data = prepare_data(d.dataset, d.data_dir, d.binarize, d.train_limit, d.test_limit)
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    for i, job in enumerate(jobs, 1):
        path = out / "results" / f"{job.key}.json"
        if path.exists() and not force:
            results[job.key] = json.loads(path.read_text())
            print(f"[{i}/{len(jobs)}] {job.key}: kept from {path}", file=sys.stderr, flush=True)
            continue
        holder = _claim(path)
        if holder is not None:
            print(f"[{i}/{len(jobs)}] {job.key}: being trained by process {holder}, skipped (rerun to include it)",
                  file=sys.stderr, flush=True)
            continue
        try:
            print(f"[{i}/{len(jobs)}] {job.key}: training ({budget.epochs} epochs)", file=sys.stderr, flush=True)
            results[job.key] = run_job(job, budget, data, out, progress)
            atomic_write_json(path, results[job.key])
        finally:
            path.with_suffix(".lock").unlink(missing_ok=True)
    report = {
        "budget": asdict(budget),
        "config": budget.base_config().to_dict(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "results": results,
        "findings": findings(results),
        "seconds_this_call": round(time.perf_counter() - started, 1),
    }
    if figures:
        report["figures"] = [str(p) for p in write_figures(out, data, results)]
    atomic_write_json(out / "quality.json", report)
    return report


# -- the papers' claims -----------------------------------------------------------------------

def findings(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each claim the issue asks the zoo to reproduce, checked on the results present."""
    r = results
    out: list[dict[str, Any]] = []

    def claim(text: str, holds: bool, evidence: str) -> None:
        out.append({"claim": text, "holds": bool(holds), "evidence": evidence})

    iwae = sorted((v["options"]["k"], v) for v in r.values() if v.get("variant") == "iwae")
    if len(iwae) > 1:
        nlls = [v["nll"] for _, v in iwae]
        claim("IWAE test NLL falls as k grows", all(a > b for a, b in zip(nlls, nlls[1:])),
              ", ".join(f"k={k}: {v['nll']:.2f}" for k, v in iwae))
    for k, v in iwae:
        vae = r.get(f"vae-k{k}")
        if vae is None:
            continue
        if k > 1:
            claim(f"IWAE beats the VAE at k={k} (NLL)", v["nll"] < vae["nll"], f"iwae {v['nll']:.2f} vs vae {vae['nll']:.2f}")
        claim(f"IWAE keeps at least as many active units as the VAE at k={k}",
              v["active_units"] >= vae["active_units"], f"iwae {v['active_units']} vs vae {vae['active_units']}")
    for key, v in sorted(r.items()):
        if v.get("variant") == "m2":
            base = r.get(f"classifier-n{v['options']['num_labels']}")
            if base is not None:
                n = v["options"]["num_labels"]
                claim(f"M2 beats the labels-only classifier with {n} labels (test accuracy)",
                      v["accuracy"] > base["accuracy"], f"m2 {v['accuracy']:.4f} vs classifier {base['accuracy']:.4f}")
        if v.get("variant") == "cvae" and v["options"].get("condition") == "quadrants":
            q = v["options"]["visible_quadrants"]
            base = r.get(f"network-q{q}")
            if base is not None:
                claim(f"CVAE beats the deterministic network on conditional NLL with {q} quadrant(s) given",
                      v["cond_nll"] < base["cond_nll"], f"cvae {v['cond_nll']:.2f} vs network {base['cond_nll']:.2f}")
        if v.get("variant") == "dvae" and "vae-k1" in r:
            claim(f"DVAE ({v['options']['corruption']}) has a lower clean-data NLL than the VAE",
                  v["nll"] < r["vae-k1"]["nll"], f"dvae {v['nll']:.2f} vs vae {r['vae-k1']['nll']:.2f}")
    return out


# -- pictures ---------------------------------------------------------------------------------

@torch.no_grad()
def write_figures(out: Path, data: PreparedData, results: dict[str, dict[str, Any]]) -> list[Path]:
    """Prior samples of the marginal models, class-conditional samples, quadrant completions."""
    from pipelines.images import save_grid

    folder = out / "figures"
    written: list[Path] = []
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731  the same draws for every model
    models = {key: out / "models" / key for key in results if (out / "models" / key / "config.json").exists()}
    for key in ("vae-k1", "iwae-k50", "vae-k50", "dvae-gaussian"):
        if key in models:
            variant, _ = load_model(models[key])
            written.append(save_grid(variant.sample(64, generator=gen()), folder / f"samples-{key}.png", nrow=8))
    classes = data.num_classes
    for key in [k for k in models if k.startswith("m2-")][-1:] + (["cvae-label"] if "cvae-label" in models else []):
        variant, _ = load_model(models[key])
        y = torch.arange(classes).repeat_interleave(10)  # one row per class
        written.append(save_grid(variant.sample(len(y), generator=gen(), y=y), folder / f"samples-{key}-by-class.png", nrow=10))
    test_x = next(iterate_batches(data.test, 10)).x
    for q in (1, 2, 3):
        key = f"cvae-q{q}"
        if key not in models:
            continue
        variant, config = load_model(models[key])
        mask = variant.visible_mask
        rows = [test_x, test_x * mask]  # truth, what the models see
        network_file = out / "models" / f"network-q{q}.pt"
        if network_file.exists():
            net = completion_network(config, data.shape)
            net.load_state_dict(torch.load(network_file, weights_only=True))
            net.eval()
            rows.append(test_x * mask + torch.sigmoid(net(test_x * mask).view_as(test_x)) * (1 - mask))
        g = gen()
        rows += [variant.complete(test_x, generator=g) for _ in range(3)]
        written.append(save_grid(torch.cat(rows), folder / f"completions-q{q}.png", nrow=len(test_x)))
    return written


# -- tables -----------------------------------------------------------------------------------

def markdown(report: dict[str, Any]) -> str:
    """The README tables: one per suite, then every model, then the claims."""
    r, b = report["results"], report["budget"]
    lines: list[str] = []

    def table(header: list[str], rows: list[list[Any]]) -> None:
        if not rows:
            return
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        lines.extend("| " + " | ".join(str(c) for c in row) + " |" for row in rows)
        lines.append("")

    def f(v, digits=2):
        return "" if v is None else f"{v:.{digits}f}"

    def get(key, metric):
        return r.get(key, {}).get(metric)

    ks = [k for k in b["iwae_ks"] if f"iwae-k{k}" in r or f"vae-k{k}" in r]
    table(["k", "VAE NLL", "IWAE NLL", "VAE active units", "IWAE active units"],
          [[k, f(get(f"vae-k{k}", "nll")), f(get(f"iwae-k{k}", "nll")), get(f"vae-k{k}", "active_units") or "",
            get(f"iwae-k{k}", "active_units") or ""] for k in ks])
    table(["model", "corruption", "clean test NLL", "ELBO"],
          [[key, r[key]["options"].get("corruption", "none (vae)"), f(r[key]["nll"]), f(r[key]["elbo"])]
           for key in ["vae-k1"] + [f"dvae-{c}" for c in CORRUPTIONS] if key in r and any(k.startswith("dvae") for k in r)])
    table(["labels", "M2 accuracy", "labels-only classifier accuracy", "M2 error %", "classifier error %"],
          [[n, f(get(f"m2-n{n}", "accuracy"), 4), f(get(f"classifier-n{n}", "accuracy"), 4),
            f(100 * (1 - get(f"m2-n{n}", "accuracy")), 2) if f"m2-n{n}" in r else "",
            f(100 * (1 - get(f"classifier-n{n}", "accuracy")), 2) if f"classifier-n{n}" in r else ""]
           for n in b["m2_labels"] if f"m2-n{n}" in r or f"classifier-n{n}" in r])
    table(["quadrants given", "CVAE conditional NLL", "deterministic network conditional NLL"],
          [[q, f(get(f"cvae-q{q}", "cond_nll")), f(get(f"network-q{q}", "cond_nll"))]
           for q in (1, 2, 3) if f"cvae-q{q}" in r or f"network-q{q}" in r])

    models = [v for v in r.values() if v["kind"] == "variant"]
    if models:
        lines.append(f"Every model: NLL with k={b['nll_samples']} on the first {b['nll_examples']} test images "
                     f"(m2: {max(1, b['nll_examples'] // 10)}; cvae: conditional); ELBO, KL and active units on "
                     f"the whole test split; training seconds on this machine.\n")
        table(["model", "options", "NLL", "ELBO", "KL", "active units", "accuracy", "train s"],
              [[v["key"], ", ".join(f"{k}={x}" for k, x in v["options"].items()),
                f(v.get("cond_nll", v.get("nll"))), f(v["elbo"]), f(v["kl"]),
                v["active_units"], f(v.get("accuracy"), 4), v["train_seconds"]] for v in models])
    for finding in report["findings"]:
        lines.append(f"- {'holds' if finding['holds'] else '**does not hold**'}: {finding['claim']} ({finding['evidence']})")
    return "\n".join(lines) + "\n"


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag}: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"{flag}: expected positive integers, got {text!r}")
    return values


def budget_from_args(args: argparse.Namespace) -> Budget:
    overrides = dict(parse_override(s) for s in args.set)
    for key in overrides:
        if key.split(".")[0] in ("variant", "variant_name"):
            raise ValueError(f"--set {key}: the suites choose each model's variant options; --set is for model.*, data.*, train.*")
    for flag in ("epochs", "nll_samples", "nll_examples"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1")
    return Budget(dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs, nll_samples=args.nll_samples,
                  nll_examples=args.nll_examples, iwae_ks=_int_list(args.iwae_k, "--iwae-k"),
                  m2_labels=_int_list(args.m2_labels, "--m2-labels"), train_limit=args.train_limit,
                  test_limit=args.test_limit, overrides=overrides)


def command(args: argparse.Namespace) -> int:
    budget = budget_from_args(args)
    budget.base_config()  # a bad --set fails here, naming the field, before any training
    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    plan(budget, suites)
    report = run(budget, suites, Path(args.out), force=args.force, progress=not args.no_progress,
                 figures=not args.no_figures)
    print(markdown(report) if args.markdown else json.dumps(report, indent=2, sort_keys=True))
    return 0
