"""The processes of this benchmark's Ray session: the local cluster's daemons, actors and workers
all descend from the driver that started it (its GCS and raylet are the driver's children, the
workers the raylet's), so nothing another process or user runs on the machine is counted."""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.ray_connect import descendant_processes  # noqa: E402 (no torch, no Ray)

ME = os.getpid()


def session_pids(root: int = ME) -> list[int]:
    """`root` (default: this process) and every process descending from it."""
    return [root] + [pid for pid, _, _ in descendant_processes(root)]


def has_process(*titles: str) -> bool:
    """Whether a process of the session has a command line (Ray's process title) starting with one of `titles`."""
    return any(cmdline.startswith(titles) for _, _, cmdline in descendant_processes(ME))


def signal_all(pids: list[int], signum: int) -> None:
    """Send `signum` to each of `pids` that is still there (SIGSTOP / SIGCONT a group of the session)."""
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
