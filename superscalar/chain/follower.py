"""The one place that follows the chain for every factory: each new block runs the steps in order
(funding broadcasts, the funding watch, the HTLC watch, exit progress and fee bumps, the lifecycle of
every factory). A step that fails is reported and the others still run; the next block tries again,
as every step works from the durable records, not from what the previous block did."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

Step = Callable[[int], object]  # one step: given the new height
Report = Callable[[str, Exception], None]


@dataclass(frozen=True)
class BlockSteps:
    """What a block did: the steps that ran and their seconds (for operators and the benchmark)."""

    height: int
    seconds: tuple[tuple[str, float], ...]

    @property
    def total_seconds(self) -> float:
        return sum(s for _, s in self.seconds)


class ChainFollower:
    def __init__(self, steps: Sequence[tuple[str, Step]], report: Report) -> None:
        self.steps = tuple(steps)
        self.report = report

    def on_block(self, height: int) -> BlockSteps:
        seconds = []
        for what, step in self.steps:
            t0 = time.perf_counter()
            try:
                step(height)
            except Exception as e:  # the next block retries; the others still run
                self.report(what, e)
            seconds.append((what, time.perf_counter() - t0))
        return BlockSteps(height, tuple(seconds))
