"""The protocol: what every model of a benchmark shares (the budget), and the suites planned into jobs."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from core.config import RunConfig


SUITES = ("burda", "dvae", "dvae-small", "m2", "m1m2", "cvae", "zoo")
# dvae-small: Gaussian corruption standard deviations, on a training subset small enough to overfit.
NOISE_LEVELS = (0.05, 0.1, 0.25)
# Where an M1+M2 job finds its M1, relative to the results folder: the vae of the same seed.
M1_RUN = "models/vae-k1-seed{seed}"
CORRUPTIONS = ("gaussian", "salt_and_pepper", "masking")


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
    # judged on the seed means. Not part of what a results folder must share: more seeds extend it.
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


@dataclass
class Job:
    key: str
    suite: str
    kind: str                    # "variant", "label_classifier" or "completion_network"
    variant: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    labels: int | None = None    # label_classifier: labelled examples
    visible: int | None = None   # completion_network: visible quadrants
    seed: int = 0
    objective: dict[str, Any] | None = None  # None: the variant's own default
    train_limit: int | None = None  # this job's training images (dvae-small), else the budget's
    epochs: int | None = None

    @property
    def run_key(self) -> str:
        """The name of this model at this seed: its results file and model folder."""
        return f"{self.key}-seed{self.seed}"


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
        elif suite == "dvae-small":
            small = {"train_limit": budget.small_train_limit, "epochs": budget.small_epochs}
            add(Job("vae-small", suite, "variant", "vae", {"samples": 1}, **small))
            for level in NOISE_LEVELS:
                add(Job(f"dvae-small-{level}", suite, "variant", "dvae", {"corruption": "gaussian", "noise_level": level},
                        **small))
            add(Job("iwae-small-k5", suite, "variant", "iwae", {}, objective={"name": "iwae", "k": 5}, **small))
            add(Job("diwae-small-0.1", suite, "variant", "dvae", {"corruption": "gaussian", "noise_level": 0.1},
                    objective={"name": "iwae", "k": 5}, **small))  # Im et al.'s DIWAE
        elif suite == "m2":
            for n in budget.m2_labels:
                add(Job(f"m2-n{n}", suite, "variant", "m2", {"num_labels": n, **budget.m2_options}))
                add(Job(f"classifier-n{n}", suite, "label_classifier", labels=n))
        elif suite == "m1m2":  # M2 on the latent means of the seed's vae (trained first, shared with burda)
            add(Job("vae-k1", suite, "variant", "vae", {"samples": 1}))
            for n in budget.m2_labels:
                add(Job(f"m1m2-n{n}", suite, "variant", "m2", {"num_labels": n, **budget.m2_options, "m1_run": M1_RUN}))
                add(Job(f"classifier-n{n}", suite, "label_classifier", labels=n))
        elif suite == "cvae":
            for q in (1, 2, 3):
                add(Job(f"cvae-q{q}", suite, "variant", "cvae", {"condition": "quadrants", "visible_quadrants": q}))
                add(Job(f"network-q{q}", suite, "completion_network", visible=q))
        elif suite == "zoo":
            add(Job("cvae-label", suite, "variant", "cvae", {"condition": "label"}))
        else:
            raise ValueError(f"unknown suite {suite!r}: choose from {', '.join(SUITES)}")
    # Seed-major: a partial run holds whole suites at the first seed before any second seed.
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
    return RunConfig.from_dict(raw)
