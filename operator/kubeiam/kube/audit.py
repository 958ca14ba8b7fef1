"""A background audit: check every target again and again, paced by domain/audit_pace.

For what a watch would tell at once but the operator may not watch: a pass visits each target
the caller lists at that moment, one check at a time, spaced as the pace's rule says: in a hurry
(`rate` a second, a pass at most every `min_pass` seconds) right after the start and after
`hurry()`, within the budget of its pace at rest otherwise. Until `rest()` gives it a pace at rest
it is always in a hurry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from kubeiam.domain.audit_pace import Pace, Step, next_step
from kubeiam.kube import metrics

logger = logging.getLogger(__name__)
PASSES = metrics.counter(
    "kubeiam_audit_passes",
    "Completed passes of each background audit: a stalled audit shows as a flat line.",
    ["audit"],
)
# Each audit's latest step, for the gauge below (one per audit name).
_STEPS: dict[str, Step] = {}


def _bounds() -> Iterator[metrics.Sample]:
    for name, step in _STEPS.items():
        yield (name, "true" if step.hurried else "false"), step.bound


metrics.gauge_from_memory(
    "kubeiam_audit_pass_seconds",
    "How long one full pass of each background audit takes at its current pace (hurried or at "
    "rest): a deleted Secret is reported within this.",
    ["audit", "hurried"],
    _bounds,
)

T = TypeVar("T")
# A pause is cut into slices this long at most, so that `hurry()` speeds up a long pause at rest.
RECHECK = 1.0


@dataclass
class Audit(Generic[T]):
    """Calls `check` on every target of `targets()`, pass after pass, until cancelled."""

    name: str
    targets: Callable[[], Iterable[T]]
    check: Callable[[T], Awaitable[None]]
    rate: float
    min_pass: float
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    pace: Pace = field(init=False)
    _started: float = field(default=0.0, init=False)
    _changed: float | None = field(default=None, init=False)
    _last: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        # At rest as in a hurry until told otherwise.
        self.pace = Pace(self.rate, self.min_pass, self.rate * 60, self.min_pass)

    def rest(self, *, per_minute: float, pass_seconds: float) -> None:
        """At rest, at most `per_minute` checks a minute and a pass at most every
        `pass_seconds`."""
        self.pace = dataclasses.replace(self.pace, rest_rate=per_minute, rest_pass=pass_seconds)

    def hurry(self) -> None:
        """Something changed that may hide a finding: one full pass in a hurry from now."""
        self._changed = self.clock()

    def step(self, targets: int) -> Step:
        now = self.clock()
        since_change = None if self._changed is None else now - self._changed
        step = next_step(
            self.pace, targets=targets, since_start=now - self._started, since_change=since_change
        )
        _STEPS[self.name] = step
        return step

    async def run(self) -> None:
        self._started = self.clock()
        while True:
            await self.run_pass()

    async def run_pass(self) -> None:
        # A snapshot: targets that appear during the pass wait for the next one.
        targets = list(self.targets())
        if not targets:
            await self._pause(0)
        for target in targets:
            await self._pause(len(targets))
            try:
                await self.check(target)
            except Exception:
                # One target's failure must not end the audit of the others.
                logger.exception(
                    "The %s audit failed on %s; the next pass tries again.", self.name, target
                )
        PASSES.labels(self.name).inc()

    async def _pause(self, targets: int) -> None:
        """Until the step's gap after the last check has passed (the gap is decided again after
        each slice, so a hurry takes effect at once); the first check of all goes at once."""
        if self._last is None:
            self._last = self.clock()
            return
        while (wait := self._last + self.step(targets).gap - self.clock()) > 0:
            await self.sleep(min(wait, RECHECK))
        self._last = self.clock()
