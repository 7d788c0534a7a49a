"""The processes of this benchmark's Ray session: the local cluster's daemons, actors and workers
all descend from the driver that started it (its GCS and raylet are the driver's children, the
workers the raylet's), so nothing another process or user runs on the machine is counted."""
from __future__ import annotations

import os

ME = os.getpid()


def session_pids() -> list[int]:
    """This process and every process descending from it (up to 10 generations)."""
    parent = {}
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{p}/stat").read()
            parent[int(p)] = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError):
            pass

    def descends(p: int) -> bool:
        for _ in range(10):
            if p == ME:
                return True
            p = parent.get(p, 0)
        return False

    return [p for p in parent if descends(p)]


def has_process(*titles: str) -> bool:
    """Whether a process of the session has a command line (Ray's process title) starting with one of `titles`."""
    for pid in session_pids():
        try:
            if open(f"/proc/{pid}/cmdline").read().startswith(titles):
                return True
        except OSError:
            pass
    return False
