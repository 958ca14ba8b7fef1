"""The paced audit: never faster than its pace, never a busy loop, never stopped by one failure,
and in a hurry only when told."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from kubeiam.kube.audit import Audit


class FakeTime:
    """A clock that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)  # let the test's own task look


def audit_of(time: FakeTime, targets: list[int], seen: list[tuple[int, float]]) -> Audit[int]:
    async def check(target: int) -> None:
        seen.append((target, time.now))

    return Audit(
        "test", lambda: targets, check, rate=20, min_pass=10, clock=time.clock, sleep=time.sleep
    )


def run_until(audit: Audit[int], seen: list[tuple[int, float]], checks: int) -> None:
    """Run the audit until `checks` checks are seen (a fake clock: no time really passes)."""

    async def main() -> None:
        done = asyncio.Event()
        check = audit.check

        async def counted(target: int) -> None:
            await check(target)
            if len(seen) >= checks:
                done.set()

        audit.check = counted
        task = asyncio.ensure_future(audit.run())
        await done.wait()
        task.cancel()

    asyncio.run(main())


def gaps(seen: list[tuple[int, float]]) -> list[float]:
    return [later - earlier for (_, earlier), (_, later) in itertools.pairwise(seen)]


def test_checks_are_spaced_by_the_rate_however_many_targets_there_are() -> None:
    time, seen = FakeTime(), []
    run_until(audit_of(time, list(range(400)), seen), seen, 400)
    assert min(gaps(seen)) == pytest.approx(1 / 20)
    assert seen[-1][1] - seen[0][1] == pytest.approx(399 / 20)


def test_passes_over_few_targets_start_at_most_every_min_pass_seconds() -> None:
    time, seen = FakeTime(), []
    run_until(audit_of(time, [0, 1], seen), seen, 8)
    starts = [at for target, at in seen if target == 0]
    assert [b - a for a, b in itertools.pairwise(starts)] == [pytest.approx(10)] * 3


def test_at_rest_the_audit_keeps_to_its_budget_and_its_pass() -> None:
    time, seen = FakeTime(), []
    audit = audit_of(time, list(range(1000)), seen)
    audit.rest(per_minute=30, pass_seconds=300)
    run_until(audit, seen, 2000)
    # The first pass is hurried (after the start: 1,000 at 20 a second), the second at rest.
    first, second = seen[:1000], seen[1000:]
    assert first[-1][1] - first[0][1] == pytest.approx(999 / 20)
    assert min(gaps(second)) == pytest.approx(2.0)  # 30 a minute
    assert second[-1][1] - second[0][1] == pytest.approx(999 * 2.0)


def test_a_hurry_speeds_up_a_long_pause_at_rest_at_once() -> None:
    time, seen = FakeTime(), []
    audit = audit_of(time, [0, 1, 2], seen)
    audit.rest(per_minute=20, pass_seconds=3600)  # at rest: one check every 20 minutes
    hurried_at = 1000.0 + 10 + 60  # after the first (hurried) pass, a minute into the rest

    async def sleep(seconds: float) -> None:
        before = time.now
        await FakeTime.sleep(time, seconds)
        if before < hurried_at <= time.now:
            audit.hurry()

    audit.sleep = sleep
    run_until(audit, seen, 6)
    # The first pass (hurried after the start) took 10 s; the next check was 20 minutes away
    # when the hurry came, and came within a second of it instead; the rest of that pass too.
    assert seen[2][1] == pytest.approx(1000 + 2 * 10 / 3)
    assert hurried_at <= seen[3][1] <= hurried_at + 1.0
    assert seen[5][1] - seen[3][1] == pytest.approx(2 * 10 / 3)


def test_a_pass_over_nothing_costs_nothing_but_the_wait() -> None:
    time, seen = FakeTime(), []
    audit = audit_of(time, [], seen)
    passes = 0

    async def sleep(seconds: float) -> None:
        nonlocal passes
        passes += 1
        await FakeTime.sleep(time, seconds)
        if passes == 5:
            raise asyncio.CancelledError

    audit.sleep = sleep
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(audit.run())
    assert seen == []
    assert time.now == pytest.approx(1000 + 5 * 1.0)  # slices of a second, no busy loop


def test_one_target_failing_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    time = FakeTime()
    checked = []

    async def check(target: int) -> None:
        if target == 1:
            raise RuntimeError("the API server said no")
        checked.append(target)

    audit = Audit("test", lambda: [0, 1, 2], check, rate=20, min_pass=10, clock=time.clock)
    audit.sleep = time.sleep
    asyncio.run(audit.run_pass())
    assert checked == [0, 2]
    assert "The test audit failed on 1" in caplog.text
