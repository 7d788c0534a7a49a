"""`vaezoo quality`: the budget from the command line, the run, the report."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.config import parse_override
from pipelines.quality.jobs import run
from pipelines.quality.protocol import Budget, plan
from pipelines.quality.report import markdown


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag}: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"{flag}: expected positive integers, got {text!r}")
    return values


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--seeds: expected comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"--seeds: expected distinct non-negative integers, got {text!r}")
    return seeds


def budget_from_args(args: argparse.Namespace) -> Budget:
    overrides = dict(parse_override(s) for s in args.set)
    for key in overrides:
        if key.split(".")[0] in ("variant", "variant_name"):
            raise ValueError(f"--set {key}: the suites choose each model's variant options; --set is for model.*, data.*, train.*")
    for flag in ("epochs", "nll_samples", "nll_examples", "small_train_limit", "small_epochs"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1")
    return Budget(dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs, nll_samples=args.nll_samples,
                  nll_examples=args.nll_examples, iwae_ks=_int_list(args.iwae_k, "--iwae-k"),
                  m2_labels=_int_list(args.m2_labels, "--m2-labels"), train_limit=args.train_limit,
                  test_limit=args.test_limit, overrides=overrides, seeds=_seeds(args.seeds),
                  m2_options=dict(parse_override(s) for s in args.m2_set),
                  small_train_limit=args.small_train_limit, small_epochs=args.small_epochs)


def command(args: argparse.Namespace) -> int:
    budget = budget_from_args(args)
    budget.base_config()  # a bad --set fails here, naming the field, before any training
    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    # The aae suite has a protocol of its own (Parzen windows, MMD to the prior: pipelines/quality/aae.py).
    with_aae = "aae" in suites
    suites = [s for s in suites if s != "aae"]
    plan(budget, suites)
    report = run(budget, suites, Path(args.out), force=args.force, progress=not args.no_progress,
                 figures=not args.no_figures) if suites else {"results": {}, "findings": []}
    if with_aae:
        from pipelines.quality.aae import AAEBudget, run_aae_suite, run_semi_supervised

        aae_budget = AAEBudget(dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs, seeds=budget.seeds,
                               **({"train_limit": args.train_limit} if args.train_limit else {}))
        report["aae"] = run_aae_suite(aae_budget, Path(args.out) / "aae", log=lambda *a: None)
        report["aae_semi_supervised"] = run_semi_supervised(aae_budget, Path(args.out) / "aae", log=lambda *a: None)
        report["findings"] = report["findings"] + report["aae"]["findings"] + report["aae_semi_supervised"]["findings"]
    if getattr(args, "mlflow", False):
        from pipelines.tracking import log_quality

        report["mlflow_run_id"] = log_quality(Path(args.out), report)
    print(markdown(report) if args.markdown else json.dumps(report, indent=2, sort_keys=True))
    return 0
