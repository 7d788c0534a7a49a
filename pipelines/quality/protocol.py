"""The protocol: what every model of a benchmark shares (the budget), and the suites planned into
jobs, one per model and seed."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import RunConfig
from core.factors import is_generated

SUITES = ("burda", "dvae", "dvae-small", "m2", "m1m2", "cvae", "zoo", "dcign", "superres", "inpaint")
# The suites `vaezoo quality` runs when none are named (dcign needs data with factors; the
# applications and aae have budgets of their own in the README).
DEFAULT_SUITES = ("burda", "dvae", "dvae-small", "m2", "m1m2", "cvae", "zoo")
CORRUPTIONS = ("gaussian", "salt_and_pepper", "masking")
# dvae-small: Gaussian corruption standard deviations, on a training subset small enough to overfit.
NOISE_LEVELS = (0.05, 0.1, 0.25)
# Where an M1+M2 job finds its M1, relative to the results folder: the vae of the same seed.
M1_RUN = "models/vae-k1-seed{seed}"
# Budget fields of earlier versions that the seeds now carry (dcign_seeds: the dcign suite's
# seeds were range(dcign_seeds), now `seeds`); a results folder that has them still resumes.
RETIRED_FIELDS = ("dcign_seeds",)


@dataclass
class Budget:
    """What every model of one benchmark shares."""

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    epochs: int = 10
    nll_samples: int = 5000
    nll_examples: int = 1000
    iwae_ks: list[int] = field(default_factory=lambda: [1, 5, 50])
    m2_labels: list[int] = field(default_factory=lambda: [100, 600, 1000, 3000])
    train_limit: int | None = None
    test_limit: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # --set, applied to every model's config
    # Every model is trained once per seed (train.seed, and with it m2's label draw); claims are
    # judged over the seeds. Not part of what a results folder must share: more seeds extend it.
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    # m2 options for the m2 and m1m2 suites' models (ablations: alpha, labelled_batch_size).
    m2_options: dict[str, Any] = field(default_factory=dict)
    # dvae-small: where a vae overfits (Im et al.'s mechanism): this many training images, this many epochs.
    small_train_limit: int = 1000
    small_epochs: int = 100

    def base_config(self) -> RunConfig:
        raw = RunConfig().to_dict()
        raw["data"].update(dataset=self.dataset, data_dir=self.data_dir, binarize="dynamic",
                           train_limit=self.train_limit, test_limit=self.test_limit)
        # Per-epoch evaluation is only a progress signal here: keep it cheap.
        raw["train"].update(epochs=self.epochs, eval_nll_samples=10, eval_nll_examples=100)
        return RunConfig.from_dict(raw).with_overrides(self.overrides)

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> "Budget":
        """A results folder's budget.json: a field it lacks (begun before the field existed) holds
        its default; a retired field is dropped. An unknown field raises TypeError."""
        return cls(**{k: v for k, v in saved.items() if k not in RETIRED_FIELDS})


@dataclass
class Job:
    key: str                     # the model, the same at every seed
    suite: str
    kind: str                    # "variant", "label_classifier", "completion_network", "condition_network", "bicubic"
    variant: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    labels: int | None = None    # label_classifier: labelled examples
    visible: int | None = None   # completion_network: visible quadrants
    seed: int = 0                # train.seed of this model
    objective: dict[str, Any] | None = None  # None: the variant's own default
    overrides: dict[str, Any] = field(default_factory=dict)  # config fields this job sets (dotted keys)
    train_limit: int | None = None  # this job's training images (dvae-small), else the budget's
    epochs: int | None = None

    @property
    def run_key(self) -> str:
        """The name of this model at this seed: its results file and model folder."""
        return f"{self.key}-seed{self.seed}"

    @property
    def legacy_keys(self) -> list[str]:
        """Names earlier versions kept this model's results under, read so that their results
        folders resume: main's dcign/superres/inpaint suites named a seed `<key>-s<seed>`, and its
        bicubic baseline (no training, the same at every seed) `<key>`."""
        return [f"{self.key}-s{self.seed}"] + ([self.key] if self.kind == "bicubic" else [])


def model_path(out: Path, key: str, seed: int, suffix: str = "") -> Path:
    """A kept model (a folder, or a `.pt` of a baseline's weights) under OUT/models, under the
    current name or, failing that, an earlier version's (`<key>-s<seed>`)."""
    current = out / "models" / f"{key}-seed{seed}{suffix}"
    legacy = out / "models" / f"{key}-s{seed}{suffix}"
    return legacy if not current.exists() and legacy.exists() else current


def _suite_jobs(budget: Budget, suite: str) -> list[Job]:
    """The suite's models, without their seeds."""
    if suite == "burda":
        return [Job(f"{name}-k{k}", suite, "variant", name, option) for k in budget.iwae_ks
                for name, option in (("vae", {"samples": k}), ("iwae", {"k": k}))]
    if suite == "dvae":
        return [Job("vae-k1", suite, "variant", "vae", {"samples": 1})] + [
            Job(f"dvae-{c}", suite, "variant", "dvae", {"corruption": c}) for c in CORRUPTIONS]
    if suite == "dvae-small":
        small = {"train_limit": budget.small_train_limit, "epochs": budget.small_epochs}
        gaussian = lambda level: {"corruption": "gaussian", "noise_level": level}  # noqa: E731
        return [Job("vae-small", suite, "variant", "vae", {"samples": 1}, **small),
                *[Job(f"dvae-small-{lv}", suite, "variant", "dvae", gaussian(lv), **small) for lv in NOISE_LEVELS],
                Job("iwae-small-k5", suite, "variant", "iwae", {}, objective={"name": "iwae", "k": 5}, **small),
                # Im et al.'s DIWAE: the dvae trained on the IWAE bound
                Job("diwae-small-0.1", suite, "variant", "dvae", gaussian(0.1), objective={"name": "iwae", "k": 5},
                    **small)]
    if suite in ("m2", "m1m2"):
        jobs = [Job("vae-k1", suite, "variant", "vae", {"samples": 1})] if suite == "m1m2" else []  # M1, shared with burda
        extra = {"m1_run": M1_RUN} if suite == "m1m2" else {}
        for n in budget.m2_labels:
            jobs.append(Job(f"{suite}-n{n}", suite, "variant", "m2", {"num_labels": n, **budget.m2_options, **extra}))
            jobs.append(Job(f"classifier-n{n}", suite, "label_classifier", labels=n))
        return jobs
    if suite == "cvae":
        return [job for q in (1, 2, 3) for job in (
            Job(f"cvae-q{q}", suite, "variant", "cvae", {"condition": "quadrants", "visible_quadrants": q}),
            Job(f"network-q{q}", suite, "completion_network", visible=q))]
    if suite == "zoo":
        return [Job("cvae-label", suite, "variant", "cvae", {"condition": "label"})]
    if suite == "dcign":
        if not is_generated(budget.dataset):
            raise ValueError(f"the dcign suite needs data with known factors (e.g. --dataset dsprites), "
                             f"not {budget.dataset!r}")
        conv = {"model.architecture": "conv"}  # the same conv networks for all three
        return [Job("dcign", suite, "variant", "dcign", {}, overrides=conv),
                Job("vae-conv", suite, "variant", "vae", {}, overrides=conv),  # ordinary shuffled batches
                Job("beta4-vae-conv", suite, "variant", "vae", {},
                    overrides=conv | {"objective.name": "elbo", "objective.beta": 4.0})]
    if suite in ("superres", "inpaint"):
        from pipelines.quality.applications import plan_jobs

        return plan_jobs(suite, Job)
    raise ValueError(f"unknown suite {suite!r}: choose from {', '.join(SUITES)}")


def plan(budget: Budget, suites: list[str]) -> list[Job]:
    """Every model of the suites once (a model two suites share, e.g. vae-k1, is trained once),
    at every seed; seed-major, so a partial run holds whole suites at the first seed first."""
    jobs: dict[str, Job] = {}
    for suite in suites:
        for job in _suite_jobs(budget, suite):
            jobs.setdefault(job.key, job)
    return [dataclasses.replace(job, seed=seed) for seed in budget.seeds for job in jobs.values()]


def job_config(budget: Budget, job: Job) -> RunConfig:
    base = budget.base_config().with_overrides({"train.seed": job.seed})
    if job.kind != "variant":
        return base
    # The job's variant brings its own default objective (the base config's is the vae's).
    raw = base.to_dict() | {"variant_name": job.variant, "variant": dict(job.options), "objective": job.objective}
    if job.epochs is not None:
        raw["train"]["epochs"] = job.epochs
    if job.train_limit is not None:
        raw["data"]["train_limit"] = job.train_limit
    config = RunConfig.from_dict(raw)
    return config.with_overrides(job.overrides) if job.overrides else config
