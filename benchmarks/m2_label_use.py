"""Does a trained M2 decoder use the label? Prints pipelines.quality.label_use's summary of a model
folder on the first test images of its own data config (as JSON; --out also writes it).

    python benchmarks/m2_label_use.py runs/m2abl-a0.1/models/m2-n100-seed0 --examples 2000 --samples 10
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from core.data import to_float  # noqa: E402
from core.datasets import prepare_run_data  # noqa: E402
from core.serialization import load_model  # noqa: E402
from pipelines.quality.label_use import label_bounds, label_use  # noqa: E402
from variants.m2 import M2  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="+", help="m2 model folders")
    p.add_argument("--examples", type=int, default=2000, help="first test images scored")
    p.add_argument("--samples", type=int, default=10, help="draws of z per ELBO estimate")
    p.add_argument("--out", help="JSON file for the results")
    args = p.parse_args(argv)
    results = {}
    for folder in args.model:
        model, config = load_model(folder)
        if not isinstance(model, M2):
            raise SystemExit(f"{folder}: a {model.name} model, not m2")
        test = prepare_run_data(config).test
        x, y = to_float(test.images[:args.examples]), test.labels[:args.examples]
        torch.manual_seed(0)
        bounds = label_bounds(model, x, args.samples)
        with torch.no_grad():
            logits = model.classifier(model.represent(x))
        results[folder] = {**label_use(bounds, y, logits), "samples": args.samples,
                           "options": model.options.model_dump()}
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        from core.files import atomic_write_text
        atomic_write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
