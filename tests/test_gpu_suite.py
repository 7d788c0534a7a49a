"""benchmarks/gpu_suite.py: the one GPU command covers what issue #20 asks of it, and its --dry-run
stays on the CPU and saves nothing (no GPU figure may be written by a CPU check)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_suite  # noqa: E402


def flag(cmd: list[str], name: str) -> str | None:
    """The last value given to `name` (argparse keeps the last)."""
    values = [cmd[i + 1] for i, arg in enumerate(cmd[:-1]) if arg == name]
    return values[-1] if values else None


def test_the_gpu_suite_runs_fp32_bf16_compile_and_the_k5000_nll_on_cuda():
    commands = [cmd for _, cmd in gpu_suite.suite(dry_run=False)]
    assert all(flag(cmd, "--device") == "cuda" for cmd in commands)
    assert all("--no-save" not in cmd for cmd in commands)
    train = [cmd for cmd in commands if cmd[1].endswith("train_throughput.py")]
    # fp32, bf16 autocast and compile; each trains vaezoo with the data resident on the device
    # against the reference recipe (train_throughput.py --device cuda does both).
    assert sorted((flag(cmd, "--autocast") or "off", "--compile" in cmd) for cmd in train) == [
        ("bf16", False), ("off", False), ("off", True)]
    nll = [cmd for cmd in commands if cmd[1].endswith("nll_throughput.py")]
    assert len(nll) == 1 and flag(nll[0], "--k") == "5000" and flag(nll[0], "--images") == "10000"


def test_the_dry_run_is_the_same_steps_on_the_cpu_small_and_unsaved():
    real, dry = gpu_suite.suite(dry_run=False), gpu_suite.suite(dry_run=True)
    assert [name for name, _ in real] == [name for name, _ in dry]
    for (_, cmd), (_, dry_cmd) in zip(real, dry):
        assert dry_cmd[1] == cmd[1]
        assert flag(dry_cmd, "--device") == "cpu" and "--no-save" in dry_cmd
        assert flag(dry_cmd, "--autocast") == flag(cmd, "--autocast") and ("--compile" in dry_cmd) == ("--compile" in cmd)
    assert flag(dry[-1][1], "--k") == "50"
