"""A background audit: check every target again and again, at a bounded rate of API calls.

For what a watch would tell at once but the operator may not watch: a pass visits each target
the caller lists at that moment, paced so that the API server sees at most `rate` checks a
second however many targets there are, and passes start at most every `min_pass` seconds, so a
few targets cost a few calls now and then, not a busy loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from kubeiam.kube import metrics

logger = logging.getLogger(__name__)
PASSES = metrics.counter(
    "kubeiam_audit_passes",
    "Completed passes of each background audit: a stalled audit shows as a flat line.",
    ["audit"],
)

T = TypeVar("T")


@dataclass
class Pacer:
    """Spaces calls at least 1/rate seconds apart; never bursts to catch up after a pause."""

    rate: float
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    _next: float = field(default=0.0, init=False)

    async def wait(self) -> None:
        now = self.clock()
        if self._next > now:
            await self.sleep(self._next - now)
            now = self._next
        self._next = now + 1 / self.rate


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

    async def run(self) -> None:
        pacer = Pacer(self.rate, self.clock, self.sleep)
        while True:
            started = self.clock()
            await self.run_pass(pacer)
            await self.sleep(max(0.0, started + self.min_pass - self.clock()))

    async def run_pass(self, pacer: Pacer) -> None:
        # A snapshot: targets that appear during the pass wait for the next one.
        for target in list(self.targets()):
            await pacer.wait()
            try:
                await self.check(target)
            except Exception:
                # One target's failure must not end the audit of the others.
                logger.exception(
                    "The %s audit failed on %s; the next pass tries again.", self.name, target
                )
        PASSES.labels(self.name).inc()
