"""Holds: a key is taken once until its hold ends, and an ended hold is forgotten."""

import multiprocessing
import multiprocessing.synchronize
import random
import time
from typing import Any

import pytest

from kubeiam.tokens.holds import HoldsUnavailable, LocalHolds, SharedHolds


def test_a_key_is_taken_once_until_its_hold_ends() -> None:
    holds = LocalHolds()
    assert holds.take(b"jti-1", until=10.0, now=0.0)
    assert not holds.take(b"jti-1", until=20.0, now=9.9)
    assert holds.take(b"jti-2", until=10.0, now=5.0)
    assert holds.take(b"jti-1", until=30.0, now=10.0)  # the first hold ended
    assert not holds.take(b"jti-1", until=40.0, now=29.0)


def test_ended_holds_are_forgotten() -> None:
    holds = LocalHolds()
    for n in range(100):
        holds.take(n.to_bytes(4, "big"), until=1.0, now=0.0)
    assert len(holds) == 100
    holds.take(b"late", until=5.0, now=2.0)
    assert len(holds) == 1


def test_past_capacity_the_soonest_ending_hold_gives_way() -> None:
    holds = LocalHolds(capacity=2)
    assert holds.take(b"a", until=5.0, now=0.0)
    assert holds.take(b"b", until=9.0, now=0.0)
    assert holds.take(b"c", until=9.0, now=0.0)
    assert len(holds) == 2
    assert holds.take(b"a", until=9.0, now=1.0)  # "a" gave way
    assert len(holds) == 2


# -- SharedHolds: one table for the worker processes of a server ---------------------------------

SPAWN = multiprocessing.get_context("spawn")


def test_shared_holds_take_a_key_once_until_its_hold_ends() -> None:
    holds = SharedHolds(64, SPAWN)
    assert holds.take(b"jti-1", until=10.0, now=0.0)
    assert not holds.take(b"jti-1", until=20.0, now=9.9)
    assert holds.take(b"jti-2", until=10.0, now=5.0)
    assert holds.take(b"jti-1", until=30.0, now=10.0)  # the first hold ended
    assert not holds.take(b"jti-1", until=40.0, now=29.0)
    assert holds.held(now=11.0) == 1


def test_a_full_shared_table_refuses_to_answer_rather_than_evict_a_live_hold() -> None:
    holds = SharedHolds(4, SPAWN)
    for n in range(4):
        assert holds.take(bytes([n]), until=10.0, now=0.0)
    with pytest.raises(HoldsUnavailable):
        holds.take(b"one more", until=10.0, now=1.0)
    # None of the live holds gave way: each is still refused.
    assert not any(holds.take(bytes([n]), until=10.0, now=1.0) for n in range(4))
    # Ended holds make room again.
    assert holds.take(b"one more", until=20.0, now=10.0)


def test_slots_of_ended_holds_reused_by_others_still_find_every_live_hold() -> None:
    holds = SharedHolds(64, SPAWN)
    first = [f"old-{n}".encode() for n in range(48)]
    assert all(holds.take(key, until=10.0, now=0.0) for key in first)
    later = [f"new-{n}".encode() for n in range(48)]
    assert all(holds.take(key, until=100.0, now=11.0) for key in later)  # in ended slots
    assert not any(holds.take(key, until=200.0, now=12.0) for key in later)
    assert holds.held(now=12.0) == 48


def test_a_table_half_full_of_random_keys_refuses_none() -> None:
    # What the default capacity is sized by (docs/tokens.md): below half full, linear probing
    # finds room within a key's probes; a DPoP proof is never refused for want of a slot.
    holds = SharedHolds(8192, SPAWN)
    rng = random.Random(7)  # noqa: S311 (a seed, so the keys are the same every run)
    keys = [rng.randbytes(16) for _ in range(4096)]
    assert all(holds.take(key, until=100.0, now=0.0) for key in keys)
    assert not any(holds.take(key, until=100.0, now=1.0) for key in keys)


def _take_all(holds: SharedHolds, keys: int, start: multiprocessing.synchronize.Event) -> int:
    start.wait()
    return sum(holds.take(n.to_bytes(4, "big"), until=100.0, now=1.0) for n in range(keys))


def _taker(holds: SharedHolds, keys: int, start: Any, results: Any) -> None:
    results.put(_take_all(holds, keys, start))


def test_two_processes_never_both_take_the_same_key() -> None:
    holds = SharedHolds(8192, SPAWN)
    start, results = SPAWN.Event(), SPAWN.Queue()
    workers = [SPAWN.Process(target=_taker, args=(holds, 2000, start, results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    start.set()
    taken = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    assert sum(taken) == 2000, taken  # each key exactly once, whoever won it
    assert holds.held(now=1.0) == 2000


def _hold_the_lock(holds: SharedHolds, locked: Any) -> None:
    with holds._locked():
        locked.set()
        time.sleep(600)


def test_a_worker_killed_holding_the_lock_is_recovered_by_its_pid() -> None:
    holds = SharedHolds(16, SPAWN)
    locked = SPAWN.Event()
    victim = SPAWN.Process(target=_hold_the_lock, args=(holds, locked))
    victim.start()
    assert locked.wait(timeout=60)
    victim.kill()
    victim.join(timeout=30)
    with pytest.raises(HoldsUnavailable):
        holds.take(b"k", until=10.0, now=0.0)  # no answer, never a wrong one
    assert victim.pid is not None
    assert not holds.recover(victim.pid + 1)  # not the one holding it
    assert holds.recover(victim.pid)
    assert holds.take(b"k", until=10.0, now=0.0)
