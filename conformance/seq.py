"""`Terms`: a sequence of terms stored as runs, behaving like the tuple it stands for.

The spec's WALs are sequences of terms (one per entry), and an implementation's WAL holds
thousands of entries in a handful of runs (each leader writes one term).  As plain tuples,
every appended entry would copy the whole WAL and every invariant would walk it, so replaying
a long trace would be quadratic.  `Terms` keeps the runs `((term, count), ...)`: appending,
taking a prefix, comparing and checking monotonicity cost O(runs), not O(entries).

It equals (and hashes like) the tuple of its entries, so the machine reads as the spec does
(`wal[: n]`, `wal + (t,)`, `len(wal)`, `wal[i]`), and a TLC state's tuple compares equal.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

__all__ = ["Terms"]


class Terms(Sequence[int]):
    __slots__ = ("runs", "_len", "_hash")

    def __init__(self, items: Iterable[int] = ()) -> None:
        runs: list[list[int]] = []
        for term in items:
            if runs and runs[-1][0] == term:
                runs[-1][1] += 1
            else:
                runs.append([term, 1])
        self._set(tuple((t, n) for t, n in runs))

    @classmethod
    def from_runs(cls, runs: Iterable[Sequence[int]]) -> Terms:
        """From `[(term, count), ...]`; adjacent runs of one term merge, empty ones vanish."""
        merged: list[tuple[int, int]] = []
        total = 0
        for term, count in runs:
            if count <= 0:
                continue
            total += count
            if merged and merged[-1][0] == term:
                merged[-1] = (term, merged[-1][1] + count)
            else:
                merged.append((term, count))
        return cls._of(tuple(merged), total)

    @classmethod
    def _of(cls, runs: tuple[tuple[int, int], ...], length: int) -> Terms:
        """From runs already merged (no empty run, no two adjacent of one term) and their length."""
        seq = cls.__new__(cls)
        seq.runs = runs
        seq._len = length
        seq._hash = None
        return seq

    def _set(self, runs: tuple[tuple[int, int], ...]) -> None:
        self.runs = runs
        self._len = sum(n for _, n in runs)
        self._hash: int | None = None

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[int]:
        for term, count in self.runs:
            for _ in range(count):
                yield term

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._len)
            if start != 0 or step != 1:
                return tuple(self)[index]
            return self._prefix(stop)
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError(index)
        for term, count in self.runs:
            if index < count:
                return term
            index -= count
        raise AssertionError("unreachable")

    def _prefix(self, n: int) -> Terms:
        if n >= self._len:
            return self
        runs = []
        left = n
        for term, count in self.runs:
            if left <= 0:
                break
            runs.append((term, min(count, left)))
            left -= count
        return Terms._of(tuple(runs), max(n, 0))

    def __add__(self, other: Iterable[int]) -> Terms:
        more = other if isinstance(other, Terms) else Terms(other)
        if not more.runs:
            return self
        if self.runs and self.runs[-1][0] == more.runs[0][0]:
            (term, a), (_, b) = self.runs[-1], more.runs[0]
            runs = self.runs[:-1] + ((term, a + b),) + more.runs[1:]
        else:
            runs = self.runs + more.runs
        return Terms._of(runs, self._len + more._len)

    def starts_with(self, prefix: Terms, n: int | None = None) -> bool:
        """Whether prefix[: n] (all of `prefix` by default) is a prefix of this sequence
        (IsPrefix(prefix[: n], self)), run by run and without building the slice."""
        if n is not None:
            n = slice(n).indices(prefix._len)[1]  # what prefix[: n] keeps
        else:
            n = prefix._len
        if n > self._len:
            return False
        mine = self.runs
        left = n
        for i, (term, count) in enumerate(prefix.runs):
            if left <= 0:
                return True
            t, c = mine[i]
            if t != term:
                return False
            if count >= left:  # the slice's last run: it may stop inside ours
                return c >= left
            if c != count:  # a whole run of the slice, followed by another term
                return False
            left -= count
        return True

    def segment(self, begin: int, end: int) -> Terms:
        """The entries at 0-based positions begin..end-1 that exist (self[begin:end] for
        begin >= 0), run by run."""
        runs = []
        pos = length = 0
        for term, count in self.runs:
            lo, hi = max(begin, pos), min(end, pos + count)
            if hi > lo:
                runs.append((term, hi - lo))
                length += hi - lo
            pos += count
            if pos >= end:
                break
        # The runs kept are consecutive runs of ours, so already merged.
        return Terms._of(tuple(runs), length)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Terms):
            return self.runs == other.runs
        if isinstance(other, tuple):
            return len(other) == self._len and tuple(self) == other
        return NotImplemented

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(tuple(self))
        return self._hash

    def __repr__(self) -> str:
        return "Terms[" + ",".join(f"{t}*{n}" for t, n in self.runs) + "]"
