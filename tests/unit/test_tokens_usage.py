"""Usage write-back's coalescing: at most one write a credential an interval, the latest use."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable

from kubeiam.tokens.usage import Coalescer, Key, Use, Write, Writer

T0 = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.UTC)
MINUTE = datetime.timedelta(minutes=1)
A, B = (
    ("serviceaccountcredentials", "team-a", "key"),
    ("serviceaccountcredentials", "team-a", "other"),
)


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def test_a_first_use_is_written_at_once() -> None:
    rule = Coalescer(MINUTE)
    rule.note(A, Use(at(0), "10.0.0.1"))
    assert rule.take(at(0)) == [(A, Use(at(0), "10.0.0.1"))]
    assert rule.next_due() is None


def test_many_uses_in_an_interval_make_one_write_then_the_latest_after_it() -> None:
    rule = Coalescer(MINUTE)
    rule.note(A, Use(at(0), "10.0.0.1"))
    writes = rule.take(at(0))
    for second in range(1, 50):
        rule.note(A, Use(at(second), f"10.0.0.{second}"))
        writes += rule.take(at(second))
    assert len(writes) == 1
    assert rule.next_due() == at(60)
    assert rule.take(at(59.9)) == []
    assert rule.take(at(60)) == [(A, Use(at(49), "10.0.0.49"))]
    assert rule.next_due() is None


def test_credentials_are_coalesced_apart() -> None:
    rule = Coalescer(MINUTE)
    rule.note(A, Use(at(0), "10.0.0.1"))
    rule.take(at(0))
    rule.note(A, Use(at(1), "10.0.0.1"))
    rule.note(B, Use(at(1), "10.0.0.2"))
    assert rule.take(at(1)) == [(B, Use(at(1), "10.0.0.2"))]
    assert rule.next_due() == at(60)


def test_a_use_after_a_quiet_interval_is_written_at_once_and_old_writes_are_forgotten() -> None:
    rule = Coalescer(MINUTE)
    rule.note(A, Use(at(0), "10.0.0.1"))
    rule.take(at(0))
    assert rule.take(at(600)) == []
    assert rule._written == {}  # nothing held back any more: nothing kept
    rule.note(A, Use(at(601), "10.0.0.1"))
    assert rule.next_due() is not None
    assert rule.next_due() <= at(601)
    assert rule.take(at(601)) == [(A, Use(at(601), "10.0.0.1"))]


def test_the_status_patch_holds_the_two_fields_only() -> None:
    use = Use(at(0.5), "2001:db8::1")
    assert use.status() == {"lastUsedAt": "2026-12-07T12:00:00Z", "lastUsedIp": "2001:db8::1"}


def test_the_writer_makes_one_write_for_many_tokens_and_survives_a_failed_write() -> None:
    writes: list[tuple[tuple[str, str, str], dict[str, str | None]]] = []
    both = asyncio.Event()

    async def write(key: tuple[str, str], status: dict[str, str | None]) -> None:
        writes.append((key, status))
        if len(writes) == 2:
            both.set()
        if key == B:
            raise RuntimeError("the API server is away")

    async def main() -> None:
        writer = Writer(MINUTE, write, clock=lambda: T0)
        task = asyncio.create_task(writer.run())
        for _ in range(30):
            writer.note(A, Use(T0, "10.0.0.1"))
        writer.note(B, Use(T0, None))
        await asyncio.wait_for(both.wait(), timeout=10)
        for _ in range(100):  # give it every chance to write more than it may
            await asyncio.sleep(0)
        task.cancel()

    asyncio.run(main())
    assert sorted(key for key, _ in writes) == [A, B]
    assert dict(writes)[B] == {"lastUsedAt": "2026-12-07T12:00:00Z", "lastUsedIp": None}


class _Taken:
    """Holds where another worker already holds every key."""

    def take(self, key: bytes, until: float, now: float) -> bool:
        return False


def _writes_of(writer_for: Callable[[Write], Writer]) -> list[Key]:
    writes: list[Key] = []

    async def write(key: Key, status: dict[str, str | None]) -> None:
        writes.append(key)

    async def main() -> None:
        writer = writer_for(write)
        task = asyncio.create_task(writer.run())
        writer.note(A, Use(T0, "10.0.0.1"))
        for _ in range(100):
            await asyncio.sleep(0)
        task.cancel()

    asyncio.run(main())
    return writes


def test_a_use_held_by_another_worker_waits_for_the_interval() -> None:
    assert _writes_of(lambda write: Writer(MINUTE, write, clock=lambda: T0)) == [A]
    held = _writes_of(lambda write: Writer(MINUTE, write, clock=lambda: T0, holds=_Taken()))
    assert held == []


def test_a_use_written_by_another_replica_within_the_interval_waits() -> None:
    def seen(seconds: float) -> Callable[[Write], Writer]:
        written = T0 - datetime.timedelta(seconds=seconds)
        return lambda write: Writer(MINUTE, write, clock=lambda: T0, last_written=lambda k: written)

    assert _writes_of(seen(59)) == []
    assert _writes_of(seen(60)) == [A]


def test_a_postponed_use_is_written_when_the_other_write_ages_out() -> None:
    rule = Coalescer(MINUTE)
    rule.note(A, Use(at(0), "10.0.0.1"))
    [(key, use)] = rule.take(at(0))
    rule.postpone(key, use, at(60))  # someone else wrote at 0: ours waits a minute
    rule.note(A, Use(at(30), "10.0.0.2"))  # and a later use replaces it
    assert rule.take(at(59)) == []
    assert rule.take(at(60)) == [(A, Use(at(30), "10.0.0.2"))]
