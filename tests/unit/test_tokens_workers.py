"""How many workers the token server starts, and when it starts a dead one again."""

from __future__ import annotations

from kubeiam.tokens.workers import Restarts, usable_cpus


def test_workers_follow_the_affinity_mask_and_the_tightest_cgroup_quota() -> None:
    assert usable_cpus(8, []) == 8
    assert usable_cpus(8, ["max 100000\n"]) == 8
    assert usable_cpus(8, ["200000 100000\n"]) == 2
    assert usable_cpus(8, ["150000 100000"]) == 2  # a fraction of a CPU is still used: up
    assert usable_cpus(8, ["max 100000", "300000 100000", "100000 100000"]) == 1
    assert usable_cpus(2, ["800000 100000"]) == 2  # the quota never adds CPUs
    assert usable_cpus(8, ["10000 100000"]) == 1  # at least one


def test_a_worker_dying_young_is_started_again_later_and_later_then_given_up() -> None:
    restarts = Restarts(stable=60.0, limit=6, longest=30.0)
    delays = [restarts.after_exit(0, ran_for=1.0) for _ in range(7)]
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, None]


def test_a_worker_that_ran_a_while_starts_again_at_once_and_slots_count_apart() -> None:
    restarts = Restarts(stable=60.0, limit=2, longest=30.0)
    assert restarts.after_exit(0, ran_for=1.0) == 0.0
    assert restarts.after_exit(0, ran_for=1.0) == 1.0
    assert restarts.after_exit(1, ran_for=1.0) == 0.0  # another slot's streak is its own
    assert restarts.after_exit(0, ran_for=600.0) == 0.0  # it had run: the streak starts over
    assert restarts.after_exit(0, ran_for=1.0) == 1.0
    assert restarts.after_exit(0, ran_for=1.0) is None
