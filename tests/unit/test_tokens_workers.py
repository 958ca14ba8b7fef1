"""How many workers the token server starts, and when it starts a dead one again."""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
from pathlib import Path
from typing import Any

from kubeiam.tokens.holds import SharedHolds
from kubeiam.tokens.workers import Restarts, Supervisor, usable_cpus


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


# -- the supervisor, with real worker processes that do next to nothing ---------------------------

SPAWN = multiprocessing.get_context("spawn")


def crash(slot: int, holds: SharedHolds, verbose: bool, parent: int) -> None:
    raise SystemExit(3)


def wait_for_sigterm(slot: int, holds: SharedHolds, verbose: bool, parent: int) -> None:
    signal.sigwait([signal.SIGTERM])


def _supervisor(target: Any, tmp_path: Path, restarts: Restarts) -> Supervisor:
    holds = SharedHolds(64, SPAWN)
    return Supervisor(
        2, holds, SPAWN, verbose=False, metrics_dir=tmp_path, restarts=restarts, target=target
    )


def test_workers_that_keep_dying_stop_the_server_with_exit_code_1(tmp_path: Path) -> None:
    supervisor = _supervisor(crash, tmp_path, Restarts(stable=60.0, limit=2))
    assert asyncio.run(asyncio.wait_for(supervisor.run(metrics_port=0), timeout=120)) == 1
    # Each of the 2 slots: started, started again at once, again after 1 s, then given up.
    assert supervisor.started == 6


def test_sigterm_to_the_parent_stops_every_worker_and_exits_0(tmp_path: Path) -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])  # the workers inherit the mask
    try:
        supervisor = _supervisor(wait_for_sigterm, tmp_path, Restarts())

        async def main() -> int:
            running = asyncio.create_task(supervisor.run(metrics_port=0))
            await asyncio.sleep(0)  # run() starts both workers before it first waits
            assert supervisor.started == 2
            supervisor.stop()  # what SIGTERM to the parent calls
            return await asyncio.wait_for(running, timeout=60)

        assert asyncio.run(main()) == 0
        assert supervisor.started == 2  # none started again while stopping
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
