"""Samples, statistics and the result rows every measurement produces."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Stat:
    """A median with its min and max over ``n`` samples (seconds, or any unit)."""

    median: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stat:
        return cls(statistics.median(samples), min(samples), max(samples), len(samples))


@dataclass
class Row:
    """One line of the table: a measured value, optionally beside its reference.

    ``unit`` is ``"s"`` for times (printed in ms), else printed as is. ``ratio`` is
    ``value.median / reference.median``; ``target`` is the largest ratio that passes.
    """

    backend: str
    metric: str
    value: Stat
    unit: str = "s"
    reference: Stat | None = None
    reference_name: str = ""
    target: float | None = None
    note: str = ""
    ratio: float | None = field(default=None)

    def __post_init__(self) -> None:
        if self.ratio is None and self.reference is not None and self.reference.median > 0:
            self.ratio = self.value.median / self.reference.median

    @property
    def verdict(self) -> str:
        if self.target is None or self.ratio is None:
            return ""
        return "ok" if self.ratio <= self.target else "MISS"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["verdict"] = self.verdict
        return data


def once(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def paired(
    fn: Callable[[], Any], reference: Callable[[], Any], repeat: int, *, warmup: int = 1
) -> tuple[Stat, Stat]:
    """Time ``fn`` and ``reference`` alternately, ``repeat`` times each: both see the same
    machine load, so their ratio holds even when absolute times drift."""
    for _ in range(warmup):
        fn()
        reference()
    ours: list[float] = []
    theirs: list[float] = []
    gc.collect()
    for n in range(repeat):
        # alternate who goes first, so neither always runs with a warm cache from the other
        if n % 2:
            theirs.append(once(reference))
            ours.append(once(fn))
        else:
            ours.append(once(fn))
            theirs.append(once(reference))
    return Stat.of(ours), Stat.of(theirs)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"
