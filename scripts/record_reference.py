"""Record the zoo's reference outputs before the Zoo v2 refactor (issue 13, part 5).

For every case in tests/reference_outputs.py (each variant and option set, 1 epoch on 2,000
Fashion-MNIST images), trains in this process and on Ray Train with 2 CPU workers, and writes the
sha256 of the trained weights and the last epoch's metrics (wall-clock ones left out) to
tests/reference/zoo_v1_outputs.json. tests/test_reference_outputs*.py assert that later code
reproduces them bit for bit.

Run from the repository root, on a commit whose core/, variants/ and pipelines/ are committed:

    PYTHONPATH=$PWD python scripts/record_reference.py [--output FILE] [--modes in_process,ray_train_2_workers]

`--repeats 2` trains each case twice in this process and fails, naming the case, unless both
runs agree exactly (run the script twice into two files to check across processes too).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the shared definitions live beside the tests that use them

import torch  # noqa: E402

from reference_outputs import (  # noqa: E402
    CASES, IN_PROCESS, RAY, REFERENCE_FILE, RAY_WORKERS, TORCH_THREADS, case_config, train_in_process, train_on_ray,
)
from ray_cluster import local_ray_cluster  # noqa: E402

CODE_DIRS = ("core", "variants", "pipelines")


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def record(modes: list[str], repeats: int, cases: list[str] | None = None) -> list[dict]:
    entries = []

    def run_case(mode: str, name: str, train_once) -> None:
        config = case_config(name)
        results = []
        for _ in range(repeats):
            started = time.perf_counter()
            results.append(train_once(config))
            print(f"{mode:>20} {name:<22} {results[-1][0][:16]}  {time.perf_counter() - started:5.1f} s", flush=True)
        sha, metrics = results[0]
        for again in results[1:]:
            if again != results[0]:
                raise SystemExit(f"{mode} {name}: not deterministic; two runs gave\n{results[0]}\n{again}")
        entries.append({"case": name, "mode": mode, "config": config.to_dict(), "sha256": sha, "metrics": metrics})

    if IN_PROCESS in modes:
        for name in cases or CASES:
            run_case(IN_PROCESS, name, train_in_process)
    if RAY in modes:
        with local_ray_cluster(), tempfile.TemporaryDirectory(prefix="vaezoo-reference-") as tmp:
            runs = iter(range(10**6))  # a fresh run folder for every training
            for name in cases or CASES:
                run_case(RAY, name, lambda config: train_on_ray(config, Path(tmp) / f"run-{next(runs)}"))
    return entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=REFERENCE_FILE)
    parser.add_argument("--modes", default=f"{IN_PROCESS},{RAY}", help="comma-separated: in_process, ray_train_2_workers")
    parser.add_argument("--cases", help="comma-separated cases to record (default all); copy the entries of a "
                                        "deliberately changed case into the reference file by hand")
    parser.add_argument("--repeats", type=int, default=1, help="train each case this many times; all must agree")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="record although core/, variants/ or pipelines/ have uncommitted changes")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - {IN_PROCESS, RAY}
    if unknown or not modes:
        parser.error(f"--modes: unknown {sorted(unknown)}; choose from {IN_PROCESS}, {RAY}")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    dirty = git("status", "--porcelain", "--", *CODE_DIRS)
    if dirty and not args.allow_dirty:
        parser.error(f"uncommitted changes in the code being recorded (the commit would not name it):\n{dirty}")

    torch.set_num_threads(TORCH_THREADS)
    started = time.perf_counter()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()] if args.cases else None
    if cases and set(cases) - set(CASES):
        parser.error(f"--cases: unknown {sorted(set(cases) - set(CASES))}; choose from {', '.join(CASES)}")
    entries = record(modes, args.repeats, cases)
    document = {
        "description": "Zoo v1 reference outputs (issue 13, part 5): sha256 of the weights and the last epoch's "
                       "metrics after 1 epoch, per case and mode. Written by scripts/record_reference.py, "
                       "checked by tests/test_reference_outputs.py and tests/test_reference_outputs_ray.py.",
        "git_commit": git("rev-parse", "HEAD"),
        "code_dirty": bool(dirty),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": {"machine": platform.machine(), "cpu": cpu_model(), "torch_threads": TORCH_THREADS,
                     "ray_workers": RAY_WORKERS},
        "entries": entries,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(f".{args.output.name}.tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(tmp, args.output)  # never a half-written reference
    print(f"wrote {len(entries)} entries to {args.output} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
