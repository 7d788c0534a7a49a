"""Ending the Ray worker processes that outlive their local cluster (pipelines/ray_connect.py):
Ray 2.60's worker can hang forever in its exit handler, an orphan holding its memory. Real
processes stand in for the workers; no Ray cluster is started here (test_ray_helpers.py checks
that a real run leaves no Ray process behind)."""
from __future__ import annotations

import os
import subprocess
import sys

from pipelines.ray_connect import _stat, descendant_processes, end_stragglers

SLEEP = [sys.executable, "-c", "import time; time.sleep(120)"]


def entry(pid: int) -> tuple[int, int, str]:
    return pid, _stat(pid)[2], "ray::Stand-in"


def test_a_process_still_running_after_the_grace_is_killed_and_one_that_exited_is_not():
    hung = subprocess.Popen(SLEEP)
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    processes = [entry(hung.pid), entry(exited.pid)]
    exited.wait()
    try:
        assert end_stragglers(processes, grace_s=0.2) == [hung.pid]
        assert hung.wait(timeout=30) == -9  # SIGKILL
    finally:
        hung.kill()


def test_a_reused_pid_is_left_alone():
    other = subprocess.Popen(SLEEP)
    try:
        pid, started, title = entry(other.pid)
        assert end_stragglers([(pid, started - 1, title)], grace_s=0.0) == []  # another process's start time
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_descendants_are_children_and_their_children_and_nothing_else():
    spawn_grandchild = ("import subprocess, sys, time; "
                        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)', 'grandchild']); "
                        "print('started', flush=True); time.sleep(120)")
    child = subprocess.Popen([sys.executable, "-c", spawn_grandchild, "child"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "started"
        found = {pid: cmdline for pid, _, cmdline in descendant_processes()}
        assert found[child.pid].endswith(" child")
        grandchildren = [pid for pid, cmdline in found.items() if cmdline.endswith(" grandchild")]
        assert len(grandchildren) == 1
        assert _stat(grandchildren[0])[0] == child.pid
        assert os.getpid() not in found and os.getppid() not in found and 1 not in found
    finally:
        for pid, _, _ in descendant_processes(child.pid):
            subprocess.run(["kill", "-9", str(pid)])
        child.kill()
        child.wait()
