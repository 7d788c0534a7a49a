"""benchmarks/_turns.py: the pipes through which paired benchmarks take turns. Only the side
handed a turn runs, answers come back from the side that was asked, in order, and "end" lets
every side finish."""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from _turns import Coordinator, Turns, make_pipes  # noqa: E402


def side(folder: str, name: str, epochs: int, log: list[str], lock: threading.Lock) -> None:
    turns = Turns(folder, name)
    for epoch in range(epochs):
        turns.wait()
        with lock:
            log.append(f"{name}{epoch}")
        turns.answer(100.0 * (epoch + 1) + (0.5 if name == "b" else 0.0))
    turns.wait()  # "end"


def test_each_turn_runs_one_side_and_returns_its_answer(tmp_path):
    folder = str(tmp_path)
    make_pipes(folder, ("a", "b"))
    log: list[str] = []
    lock = threading.Lock()
    threads = [threading.Thread(target=side, args=(folder, name, 3, log, lock)) for name in ("a", "b")]
    for t in threads:
        t.start()
    coordinator = Coordinator(folder, ("a", "b"))
    answers = [coordinator.turn(name) for name in ("a", "b", "b", "a", "a", "b")]
    coordinator.end()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert log == ["a0", "b0", "b1", "a1", "a2", "b2"]  # exactly the order handed out
    assert answers == [100.0, 100.5, 200.5, 200.0, 300.0, 300.5]


def test_an_answer_from_the_wrong_side_is_refused(tmp_path):
    folder = str(tmp_path)
    make_pipes(folder, ("a",))

    def liar() -> None:
        turns = Turns(folder, "a")
        turns.wait()
        turns.side = "b"
        turns.answer(1.0)
        turns.go.readline()

    thread = threading.Thread(target=liar)
    thread.start()
    coordinator = Coordinator(folder, ("a",))
    with pytest.raises(RuntimeError, match="expected an answer from a"):
        coordinator.turn("a")
    coordinator.end()
    thread.join(timeout=30)
    assert not thread.is_alive()


def test_a_side_whose_coordinator_is_gone_stops_with_an_error(tmp_path):
    folder = str(tmp_path)
    make_pipes(folder, ("a",))
    errors: list[BaseException] = []

    def waiting_side() -> None:
        turns = Turns(folder, "a")
        try:
            turns.wait()
        except RuntimeError as err:
            errors.append(err)

    thread = threading.Thread(target=waiting_side)
    thread.start()
    coordinator = Coordinator(folder, ("a",))
    coordinator.pipes["a"].close()  # gone without handing out a turn or "end"
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert len(errors) == 1 and "coordinator ended" in str(errors[0])
