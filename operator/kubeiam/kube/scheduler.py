"""One in-process schedule of future work, ordered by time: no poll per object, no task per object.

Work is keyed; scheduling a key again moves it. Due keys are handed to the callback with bounded
concurrency. The schedule is memory only: whoever feeds it (an index over the watch) feeds it
again after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)
Key = TypeVar("Key", bound=Hashable)


class Scheduler(Generic[Key]):
    """Call `callback(key)` at (or just after) the time each key is due."""

    def __init__(self, callback: Callable[[Key], Awaitable[None]], *, concurrency: int = 8) -> None:
        self._callback = callback
        self._heap: list[tuple[datetime.datetime, int, Key]] = []
        self._due: dict[Key, datetime.datetime] = {}
        self._counter = itertools.count()
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._due)

    def schedule(self, key: Key, when: datetime.datetime) -> None:
        if self._due.get(key) == when:
            return
        self._due[key] = when
        heapq.heappush(self._heap, (when, next(self._counter), key))
        if self._heap[0][2] == key:
            self._wake.set()

    def cancel(self, key: Key) -> None:
        self._due.pop(key, None)

    def next_due(self) -> datetime.datetime | None:
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def _drop_stale(self) -> None:
        while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)

    def pop_due(self, now: datetime.datetime) -> list[Key]:
        due: list[Key] = []
        while True:
            self._drop_stale()
            if not self._heap or self._heap[0][0] > now:
                return due
            _, _, key = heapq.heappop(self._heap)
            del self._due[key]
            due.append(key)

    async def run(self) -> None:
        """Run until cancelled."""
        while True:
            now = datetime.datetime.now(datetime.UTC)
            for key in self.pop_due(now):
                await self._slots.acquire()
                task = asyncio.create_task(self._call(key))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            upcoming = self.next_due()
            delay = 60.0 if upcoming is None else (upcoming - now).total_seconds()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(delay, 0.0) + 0.01)

    async def _call(self, key: Key) -> None:
        try:
            await self._callback(key)
        except Exception:
            logger.exception("Scheduled work failed; it is retried in 5s.")
            self.schedule(key, datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=5))
        finally:
            self._slots.release()
