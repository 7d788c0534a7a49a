"""Turn-taking between benchmark processes that are all alive at once (ray_paired_epochs.py,
peer_paired_epochs.py): a coordinator writes "go" on one side's pipe, that side trains one epoch
and answers its images/s on the shared pipe, and the next turn starts. Whichever side is not
training waits on a pipe read, asleep: no wake-ups, no CPU. Each pair of turns in a round is
measured seconds apart, so this VM's speed phases (minutes long) weigh on both sides alike."""
from __future__ import annotations

import os


def make_pipes(folder: str, sides: tuple[str, ...]) -> None:
    """The named pipes: go_<side> for each side, and done, shared by every side's answers."""
    for side in sides:
        os.mkfifo(f"{folder}/go_{side}")
    os.mkfifo(f"{folder}/done")


class Turns:
    """One side's end of the pipes: wait for "go" before each epoch, answer the epoch's images/s."""

    def __init__(self, folder: str, side: str):
        self.go = open(f"{folder}/go_{side}")  # opened in this order by every side and the coordinator
        self.done = open(f"{folder}/done", "w")
        self.side = side

    def wait(self) -> None:
        if self.go.readline().strip() not in ("go", "end"):
            raise RuntimeError("the coordinator ended before handing out the next turn")

    def answer(self, images_per_sec: float) -> None:
        self.done.write(f"{self.side} {images_per_sec}\n")
        self.done.flush()


class Coordinator:
    """The coordinator's end: open every side's pipe (each open waits for that side), hand out turns."""

    def __init__(self, folder: str, sides: tuple[str, ...]):
        self.pipes = {side: open(f"{folder}/go_{side}", "w") for side in sides}
        self.answers = open(f"{folder}/done")

    def turn(self, side: str) -> float:
        """One epoch of `side`; returns its images/s."""
        self.pipes[side].write("go\n")
        self.pipes[side].flush()
        line = self.answers.readline().split()
        if len(line) != 2 or line[0] != side:
            raise RuntimeError(f"expected an answer from {side}, got {line}")
        return float(line[1])

    def end(self) -> None:
        for pipe in self.pipes.values():
            pipe.write("end\n")
            pipe.close()


def train_in_turns(folder: str, side: str, config, data=None, *, train=None, report=None, **kwargs):
    """`train(config, report=..., data=data, **kwargs)` (default: core.training.train) as `side`:
    each epoch waits for its turn, then calls `report(metrics, checkpoint)` if given (a Ray run's
    checkpoint report) and answers the images/s the loop logs; the last wait takes the
    coordinator's "end"."""
    if train is None:
        from core.training import train

    turns = Turns(folder, side)
    turns.wait()

    def report_then_wait(metrics, checkpoint):
        if report is not None:
            report(metrics, checkpoint)
        turns.answer(metrics["train/images_per_sec"])
        turns.wait()

    return train(config, report=report_then_wait, data=data, **kwargs)
