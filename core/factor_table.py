"""The generative factors of each row (FactorTable) and DC-IGN's batches: one factor varies, the
rest are held (Kulkarni et al. 2015). Generated data (core/factors.py) fills the table; the
sampler needs only the table."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from core.data import DataError


# -- the factor table -----------------------------------------------------------------------------

@dataclass
class FactorTable:
    """The generative factors of each row: codes[i, f] indexes grids[f]; values[i, f] = grids[f][codes[i, f]].

    `groups` (optional) names the generation group of each row (see grouped_codes): lines, and so
    one-factor batches, then stay inside a group rather than join rows that share codes by chance.
    """

    names: tuple[str, ...]
    grids: tuple[torch.Tensor, ...]   # per factor, its discrete values (float64, sorted)
    codes: torch.Tensor               # (N, F) int64
    groups: torch.Tensor | None = None  # (N,) int64
    _lines: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        if self.codes.ndim != 2 or self.codes.shape[1] != len(self.names) or len(self.grids) != len(self.names):
            raise DataError(f"factor table: codes {tuple(self.codes.shape)} do not match {len(self.names)} factor names")
        if self.groups is not None and self.groups.shape != self.codes.shape[:1]:
            raise DataError(f"factor table: {self.groups.numel()} group ids for {self.codes.shape[0]} rows")

    @property
    def values(self) -> torch.Tensor:
        """(N, F) float32 factor values (a categorical factor such as shape gives its index)."""
        if not len(self):
            return torch.zeros(0, len(self.names))
        return torch.stack([g[c] for g, c in zip(self.grids, self.codes.T)], dim=1).float()

    def __len__(self) -> int:
        return self.codes.shape[0]

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise DataError(f"unknown factor {name!r}: the factors are {', '.join(self.names)}") from None

    def select(self, rows: torch.Tensor | slice) -> "FactorTable":
        groups = None if self.groups is None else self.groups[rows]
        return FactorTable(self.names, self.grids, self.codes[rows], groups)

    def lines(self, name: str) -> list[torch.Tensor]:
        """Row indices of every *line* along a factor: rows that share all other factors' codes
        (and group), with at least two different codes of this one, so the factor varies along it."""
        f = self.index(name)
        if name in self._lines:
            return self._lines[name]
        if not len(self):
            self._lines[name] = []
            return []
        held = [self.codes[:, i] for i in range(len(self.names)) if i != f]
        sizes = [g.numel() for i, g in enumerate(self.grids) if i != f]
        if self.groups is not None:
            held.append(self.groups)
            sizes.append(int(self.groups.max()) + 1)
        if math.prod(sizes) < 2 ** 62:  # one mixed-radix integer per row: a 1-D unique is fast
            mixed = torch.zeros(len(self), dtype=torch.int64)
            for column, size in zip(held, sizes):
                mixed = mixed * size + column
            key = torch.unique(mixed, return_inverse=True)[1]
        else:
            key = torch.from_numpy(np.unique(torch.stack(held, 1).numpy(), axis=0, return_inverse=True)[1].reshape(-1))
        # how many distinct codes of the factor each key holds: a line needs two
        n_f = self.grids[f].numel()
        pairs = torch.unique(key * n_f + self.codes[:, f])
        varies = torch.bincount(pairs // n_f, minlength=int(key.max()) + 1) > 1
        rows = torch.nonzero(varies[key]).flatten()
        order = rows[torch.sort(key[rows], stable=True).indices]
        counts = torch.bincount(key[order])
        self._lines[name] = list(torch.split(order, counts[counts > 0].tolist()))
        return self._lines[name]


# -- DC-IGN batches -------------------------------------------------------------------------------

def _round_robin(rows: torch.Tensor, codes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The rows shuffled, then reordered so that the factor's values take turns (a, b, c, a, b, ...):
    any two leading rows then differ in the factor whenever the line has two values."""
    perm = torch.randperm(rows.numel(), generator=generator)
    rows, codes = rows[perm], codes[perm]
    rank = torch.zeros_like(codes)
    for value in codes.unique():
        where = codes == value
        rank[where] = torch.arange(int(where.sum()))
    return rows[torch.sort(rank, stable=True).indices]


def one_factor_batch(factors: FactorTable, factor: str, batch_size: int,
                     generator: torch.Generator) -> torch.Tensor:
    """Row indices of a batch in which only `factor` varies and every other factor holds one value.

    A line along the factor is drawn uniformly; the batch is min(batch_size, line length) distinct
    rows of it, with at least two values of the factor. Deterministic given `generator`.
    """
    if batch_size < 2:
        raise DataError(f"a one-factor batch needs batch_size >= 2 to vary anything, got {batch_size}")
    lines = factors.lines(factor)
    if not lines:
        raise DataError(f"no rows share all factors but {factor!r}: this data has no batches that vary {factor!r} alone")
    rows = lines[int(torch.randint(len(lines), (1,), generator=generator))]
    f = factors.index(factor)
    return _round_robin(rows, factors.codes[rows, f], generator)[:batch_size]


def one_factor_epoch(factors: FactorTable, batch_size: int, generator: torch.Generator,
                     vary: tuple[str, ...] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """One epoch of DC-IGN batches: every line of every factor in `vary` (default: all), cut into
    batches of at most `batch_size` rows, and all of them in one shuffled order, as the paper
    trains (a batch of one factor, then one of another). Yields (factor name, row indices).

    A line longer than batch_size gives several batches, each cut so its factor still varies; a
    piece that would hold one value only (a line dominated by one value) is left out.
    """
    if batch_size < 2:
        raise DataError(f"a one-factor batch needs batch_size >= 2 to vary anything, got {batch_size}")
    batches: list[tuple[str, torch.Tensor]] = []
    for name in vary or factors.names:
        f = factors.index(name)
        for rows in factors.lines(name):
            ordered = _round_robin(rows, factors.codes[rows, f], generator)
            for piece in torch.tensor_split(ordered, math.ceil(ordered.numel() / batch_size)):
                if factors.codes[piece, f].unique().numel() > 1:
                    batches.append((name, piece))
    for i in torch.randperm(len(batches), generator=generator).tolist():
        yield batches[i]


def shuffled_batches(num_rows: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Ordinary shuffled batches over all rows (for the baselines), the last one possibly smaller."""
    if batch_size < 1:
        raise DataError(f"batch_size must be positive, got {batch_size}")
    yield from torch.randperm(num_rows, generator=generator).split(batch_size)


# -- grouped generation of factor codes -----------------------------------------------------------

def grouped_codes(grid_sizes: list[int], num_rows: int, rows_per_group: int, generator: torch.Generator,
                  vary: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(num_rows, F) codes and (num_rows,) group ids, made of groups of `rows_per_group` rows. Group g holds every factor at
    one random code except factor vary[g % len(vary)], which takes distinct codes (all of its grid,
    repeated in a shuffled cycle, when the grid is smaller than the group)."""
    vary = list(range(len(grid_sizes))) if vary is None else vary
    vary = [f for f in vary if grid_sizes[f] > 1]
    if not vary:
        raise DataError("no factor has more than one value to vary")
    num_groups = math.ceil(num_rows / rows_per_group)
    sizes = torch.tensor(grid_sizes)
    base = (torch.rand(num_groups, len(grid_sizes), generator=generator) * sizes).long()
    codes = base.repeat_interleave(rows_per_group, dim=0)
    for g in range(num_groups):
        f = vary[g % len(vary)]
        n = grid_sizes[f]
        cycle = torch.cat([torch.randperm(n, generator=generator) for _ in range(math.ceil(rows_per_group / n))])
        codes[g * rows_per_group:(g + 1) * rows_per_group, f] = cycle[:rows_per_group]
    groups = torch.arange(num_groups).repeat_interleave(rows_per_group)
    return codes[:num_rows], groups[:num_rows]


def full_grid_codes(grid_sizes: list[int]) -> torch.Tensor:
    """Every combination of codes, the last factor fastest (dSprites' own order)."""
    axes = [torch.arange(n) for n in grid_sizes]
    return torch.cartesian_prod(*axes).reshape(-1, len(grid_sizes))
