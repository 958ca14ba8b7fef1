"""The paced audit: never faster than its rate, never a busy loop, never stopped by one failure."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from kubeiam.kube.audit import Audit, Pacer


class FakeTime:
    """A clock that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)


def test_checks_are_spaced_by_the_rate_however_many_targets_there_are() -> None:
    time = FakeTime()
    seen: list[float] = []

    async def check(target: int) -> None:
        seen.append(time.now)

    audit = Audit("test", lambda: range(100), check, rate=20, min_pass=10, clock=time.clock)
    asyncio.run(audit.run_pass(Pacer(20, time.clock, time.sleep)))
    assert len(seen) == 100
    gaps = [later - earlier for earlier, later in itertools.pairwise(seen)]
    assert min(gaps) == pytest.approx(1 / 20)
    assert seen[-1] - seen[0] == pytest.approx(99 / 20)


def test_passes_over_few_targets_start_at_most_every_min_pass_seconds() -> None:
    time = FakeTime()
    starts: list[float] = []

    async def check(target: int) -> None:
        if target == 0:
            starts.append(time.now)
        if len(starts) == 4:
            raise asyncio.CancelledError

    audit = Audit(
        "test", lambda: [0, 1], check, rate=20, min_pass=10, clock=time.clock, sleep=time.sleep
    )
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(audit.run())
    assert [b - a for a, b in itertools.pairwise(starts)] == [
        pytest.approx(10),
        pytest.approx(10),
        pytest.approx(10),
    ]


def test_a_pass_over_nothing_costs_nothing_but_the_wait() -> None:
    time = FakeTime()
    calls = []

    async def check(target: int) -> None:
        calls.append(target)

    audit = Audit("test", lambda: [], check, rate=20, min_pass=10, clock=time.clock)
    asyncio.run(audit.run_pass(Pacer(20, time.clock, time.sleep)))
    assert calls == []
    assert time.now == 1000.0


def test_one_target_failing_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    time = FakeTime()
    checked = []

    async def check(target: int) -> None:
        if target == 1:
            raise RuntimeError("the API server said no")
        checked.append(target)

    audit = Audit("test", lambda: [0, 1, 2], check, rate=20, min_pass=10, clock=time.clock)
    asyncio.run(audit.run_pass(Pacer(20, time.clock, time.sleep)))
    assert checked == [0, 2]
    assert "The test audit failed on 1" in caplog.text
