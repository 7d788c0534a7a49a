"""benchmarks/results.json: the last result of each benchmark script, kept beside the scripts.

Every script takes `--save` (the default) / `--no-save`. With `--save` it merges its printed JSON
into `benchmarks/results.json` under its own name, with the exact command line, the UTC date and
the machine (CPU count, torch threads, torch version, ...); other scripts' entries are kept. The
file is rewritten atomically (a temporary file in the same folder, then os.replace) under an
exclusive lock on the folder, so two scripts finishing at once both land and a killed write never
leaves a half-written file.

    {"train_throughput": {"command": "python benchmarks/train_throughput.py --batch-sizes 128 512",
                          "date_utc": "2025-01-01T12:00:00Z", "machine": {...}, "result": {...}},
     "nll_throughput": {...}, ...}
"""
from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results.json"


def add_save_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--save", action=argparse.BooleanOptionalAction, default=True,
                        help=f"merge the result into {RESULTS.parent.name}/{RESULTS.name} under this script's "
                             "name (default: on; --no-save to only print)")


def command_line() -> str:
    """The command as typed, relative to the working directory it ran in: `python benchmarks/x.py --k 5000`."""
    return shlex.join(["python", *sys.argv])


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    try:
        info["cpus_available"] = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        pass
    if "torch" in sys.modules:  # report what the benchmark ran with; never import torch just for this
        torch = sys.modules["torch"]
        info.update({"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                     "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()})
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def save_result(name: str, result: dict[str, Any], path: Path = RESULTS) -> Path:
    """Merge `result` into `path` under `name` (replacing that name's previous entry only)."""
    entry = {"command": command_line(), "cwd": os.getcwd(),
             "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
             "machine": machine_info(), "result": result}
    folder = path.parent
    lock = os.open(folder, os.O_RDONLY)  # a lock on the folder: the file itself is replaced, not rewritten
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                data = {}
        except FileNotFoundError:
            data = {}
        except json.JSONDecodeError:  # never silently drop the other scripts' entries
            backup = path.with_name(path.name + ".corrupt")
            os.replace(path, backup)
            print(f"warning: {path} was not valid JSON; moved to {backup}", file=sys.stderr)
            data = {}
        data[name] = entry
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(dict(sorted(data.items())), f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    finally:
        os.close(lock)  # releases the lock
    return path


def emit(name: str, result: dict[str, Any], save: bool) -> None:
    """Print the result as JSON on stdout and, with `save`, merge it into results.json."""
    print(json.dumps(result, indent=2), flush=True)
    if save:
        saved = save_result(name, result)
        print(f"saved under {name!r} in {saved}", file=sys.stderr)
