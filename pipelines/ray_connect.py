"""Connecting to Ray: join a cluster, or start a local one that listens on 127.0.0.1 only.

`vaezoo train` (pipelines/ray_train.py) and `vaezoo encode` (pipelines/encode/) both connect
through `connect`.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

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

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def connect(address: str | None, num_cpus: float, log_to_driver: bool = False) -> str:
    """Join `address` (or $RAY_ADDRESS), or start a local cluster with `num_cpus` logical CPUs.
    Returns what happened: "joined", "started", or "existing" when Ray was already initialised
    in this process (tests, notebooks), which is then used as it is.

    A local cluster is "local", never None (None would join whatever cluster `ray start` last
    recorded on this host), has no dashboard (no HTTP job API to submit code to), and listens on
    127.0.0.1 only: nothing on the network can reach its GCS, raylet or workers. Set
    VAEZOO_RAY_BIND=node to have it listen on the node's IP as Ray does by default (for a
    cluster that other machines will join, start it with `ray start --head` instead and pass
    --address). A joined cluster is left as it was started."""
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
    with _loopback_node_ip() if mode == LOOPBACK else contextlib.nullcontext():
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 _system_config={"worker_niceness": 0}, **quiet)
    _started_here = True
    return "started"
