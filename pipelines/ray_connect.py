"""Connecting to Ray: join a cluster, or start a local one that listens on 127.0.0.1 only.

`vaezoo train` (pipelines/ray_train.py), `vaezoo encode` (pipelines/encode/) and `vaezoo
complete` connect through `connect` and leave through `disconnect`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from typing import Iterator

from pipelines.replaced import replaced

# How long the Ray worker processes of a local cluster get to exit after ray.shutdown() before
# they are killed (they normally exit within a second or two, once their raylet is gone).
WORKER_EXIT_GRACE_S = 10.0

BIND_ENV = "VAEZOO_RAY_BIND"
LOOPBACK, NODE = "loopback", "node"
_started_here = False  # this process started the local cluster it is connected to


def started_local_cluster() -> bool:
    """True while this process is connected to a local cluster it started through `connect`
    (so the cluster is this one machine and serves this process alone)."""
    import ray

    return _started_here and ray.is_initialized()


def bind_mode() -> str:
    """$VAEZOO_RAY_BIND: `loopback` (the default) or `node`; anything else is refused."""
    mode = (os.environ.get(BIND_ENV) or LOOPBACK).strip().lower()
    if mode in ("127.0.0.1", "localhost"):
        mode = LOOPBACK
    if mode not in (LOOPBACK, NODE):
        raise ValueError(f"${BIND_ENV} must be '{LOOPBACK}' (the default) or '{NODE}', got {os.environ[BIND_ENV]!r}")
    return mode


@contextlib.contextmanager
def _loopback_node_ip() -> Iterator[None]:
    """Make a local `ray.init` take 127.0.0.1 as this node's address.

    Ray 2.60 binds its GCS, raylet, object manager, workers, runtime-env and dashboard agents to
    the node's IP (or to every interface), and offers no public switch to change that for a
    cluster `ray.init` starts: `_node_ip_address="127.0.0.1"` is mapped back to the node's
    routable IP (services.resolve_ip_for_localhost). What does work is the setting Ray uses on
    Windows and macOS, where a local cluster is loopback-only: with
    `ray_constants.ENABLE_RAY_CLUSTER` false, services.get_node_ip_address() answers 127.0.0.1
    and every process binds there. Its environment variable is read once, when Ray is imported, so
    the module attribute is set for the duration of the `ray.init` call (afterwards Ray asks the
    started node for its address, not this constant) and restored, leaving later `ray.init`s in
    this process as Ray would have them. Private API: tests/test_reliability.py lists the
    sockets a started cluster listens on, and fails if a Ray upgrade changes this."""
    from ray._private import ray_constants

    with replaced((ray_constants, "ENABLE_RAY_CLUSTER", False)):
        yield


# Housekeeping timers of a local cluster this process starts, against Ray 2.60's defaults in the
# comments. Each wakes a Ray daemon on the cores a training worker computes on, and what it serves
# is absent or idle on one node that serves one command (benchmarks/ray_paired_epochs.py).
LOCAL_HOUSEKEEPING = {
    "task_events_report_interval_ms": 0,  # 1000: task events feed the dashboard's State API (none here)
    "metrics_report_interval_ms": 60_000,  # 10000: metrics feed a dashboard or Prometheus
    "local_fs_monitor_interval_ms": 1000,  # 100: the object store's disk-full check
    "raylet_check_gc_period_milliseconds": 1000,  # 100: the memory-pressure check for a global GC
    "kill_idle_workers_interval_ms": 1000,  # 200: an idle worker is ended up to 0.8 s later
}
# The head-node services Ray starts beside the GCS and raylet that a local cluster does without: the
# autoscaler's monitor (a local cluster has a fixed size), and the log monitor unless worker logs go
# to the driver. The API server stays although it serves only usage statistics here: without it a
# State API call (Ray Train's placement-group cleaner makes them) waits 10 s instead of failing.
HEAD_SERVICES = ("start_monitor",)
LOG_MONITOR = "start_log_monitor"


@contextlib.contextmanager
def _without_head_services(names: tuple[str, ...]) -> Iterator[None]:
    """Make a local `ray.init` start the node without the services `names` (Node's start methods).

    Private API, like _loopback_node_ip: the methods are replaced on Ray's Node class for the
    duration of the call, which is where the node is started. tests/test_ray_helpers.py lists the
    processes of a started cluster."""
    from ray._private.node import Node

    with replaced(*((Node, name, lambda self, *args, **kwargs: None) for name in names)):
        yield


def connect(address: str | None, num_cpus: float, log_to_driver: bool = False, idle_workers: bool = True,
            object_store_bytes: int | None = None) -> str:
    """Join `address` (or $RAY_ADDRESS), or start a local cluster with `num_cpus` logical CPUs.
    Returns what happened: "joined", "started", or "existing" when Ray was already initialised
    in this process (tests, notebooks), which is then used as it is.

    A local cluster is "local", never None (None would join whatever cluster `ray start` last
    recorded on this host), has no dashboard (no HTTP job API to submit code to), and listens on
    127.0.0.1 only: nothing on the network can reach its GCS, raylet or workers. Set
    VAEZOO_RAY_BIND=node to have it listen on the node's IP as Ray does by default (for a
    cluster that other machines will join, start it with `ray start --head` instead and pass
    --address). A joined cluster is left as it was started.

    `idle_workers=False` starts a local cluster without the idle Python workers Ray starts ahead
    of the first driver's tasks (one per CPU). Ray Train never uses them (its actors carry a
    runtime environment, so each gets a fresh process), and each wakes about 150 times a second
    beside the training worker (benchmarks/ray_paired_epochs.py measures what that costs).
    `object_store_bytes` sizes a local cluster's object store (None: Ray's default, 30% of memory).

    A local cluster also runs without the head services it has no use for (HEAD_SERVICES, and the
    log monitor when `log_to_driver` is False: nothing would read what it forwards) and with
    LOCAL_HOUSEKEEPING's slower timers."""
    import ray

    global _started_here
    if ray.is_initialized():
        return "existing"
    _started_here = False
    address = address or os.environ.get("RAY_ADDRESS") or None
    mode = bind_mode()  # a bad value fails before anything starts
    # Ray's own loggers at ERROR in this job's processes: without a dashboard (no State API) Ray
    # Train's placement-group cleaner would log a warning every second.
    quiet = {"logging_level": logging.WARNING, "log_to_driver": log_to_driver,
             "logging_config": ray.LoggingConfig(log_level="ERROR")}
    if address:
        ray.init(address=address, **quiet)
        return "joined"
    # Ray runs its workers at niceness 15 (worker_niceness) so that its own daemons stay
    # responsive; on a machine shared with other work that starves a training worker (the same
    # loop in-process runs at niceness 0). A local cluster is this command's own: its workers run
    # at the driver's priority, as a Ray job's driver does (Ray's job manager sets 0 for it).
    skipped = HEAD_SERVICES + (() if log_to_driver else (LOG_MONITOR,))
    with _loopback_node_ip() if mode == LOOPBACK else contextlib.nullcontext(), _without_head_services(skipped):
        system = ({"worker_niceness": 0} | LOCAL_HOUSEKEEPING
                  | ({} if idle_workers else {"prestart_worker_first_driver": False}))
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _system_config=system,
                 object_store_memory=object_store_bytes, **quiet)
    _started_here = True
    return "started"


def disconnect() -> list[int]:
    """ray.shutdown(), and after a local cluster this process started, end those of its Ray worker
    processes that outlive it: returns their pids (normally none).

    Ray 2.60's worker process can deadlock in its exit handler: shutting down the core worker's
    event loop destroys a pubsub publisher that posts back to that same loop and waits on its lock
    forever. The process is then an orphan that never exits (seen as a `ray::TrainController`
    holding 0.8 GB and waking 100 times a second, long after its run). Such a process has
    finished everything it did for the run; it is killed once WORKER_EXIT_GRACE_S has passed."""
    global _started_here
    import ray

    workers = [p for p in descendant_processes() if p[2].startswith("ray::")] if started_local_cluster() else []
    ray.shutdown()
    _started_here = False
    killed = end_stragglers(workers, WORKER_EXIT_GRACE_S)
    if killed:
        print(f"vaezoo: killed {len(killed)} Ray worker process(es) still running {WORKER_EXIT_GRACE_S:g} s "
              f"after the local cluster stopped (a Ray exit hang): pids {killed}", file=sys.stderr)
    return killed


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time in clock ticks) of a process, None when it is gone."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[0], int(fields[19])


def descendant_processes(root: int | None = None) -> list[tuple[int, int, str]]:
    """(pid, start time, command line) of every live process descending from `root` (default:
    this process). A local Ray cluster's daemons are children of the process that started it and
    its workers the raylet's children, so this is the whole local cluster and nothing else."""
    root = os.getpid() if root is None else root
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (stat := _stat(int(name))) is not None:
            stats[int(name)] = stat
    out = []
    for pid, (ancestor, state, started) in stats.items():
        while ancestor > 1 and ancestor != root:
            ancestor = stats.get(ancestor, (0,))[0]
        if ancestor == root and state != "Z":
            try:
                cmdline = open(f"/proc/{pid}/cmdline").read().replace("\0", " ").strip()
            except OSError:
                continue
            out.append((pid, started, cmdline))
    return out


def end_stragglers(processes: list[tuple[int, int, str]], grace_s: float) -> list[int]:
    """Wait up to `grace_s` for `processes` ((pid, start time, ...)) to exit, then SIGKILL those
    still running; a pid now held by another process (another start time) is left alone.
    Returns the killed pids."""
    def running() -> list[int]:
        out = []
        for pid, started, *_ in processes:
            stat = _stat(pid)
            if stat is not None and stat[2] == started and stat[1] != "Z":
                out.append(pid)
        return out

    deadline = time.monotonic() + grace_s
    while (alive := running()) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return alive
