"""kube/kopf_toggles.py: the counting ToggleSet behaves as kopf's own, at O(1) per change."""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kopf._cogs.aiokits import aiotoggles

from kubeiam.kube import kopf_toggles
from kubeiam.kube.kopf_toggles import KOPF_TOGGLE_SET, CountingToggleSet

SETS = pytest.mark.parametrize(
    "make_set", [KOPF_TOGGLE_SET, CountingToggleSet], ids=["kopf", "ours"]
)
MakeSet = Callable[[Callable[[Iterable[bool]], bool]], aiotoggles.ToggleSet]


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=60))


async def let_run() -> None:
    """Let every ready task run until it blocks again (yields to the loop, no fixed wait)."""
    for _ in range(10):
        await asyncio.sleep(0)


def test_written_against_the_installed_kopf() -> None:
    """Fails when kopf is upgraded or its toggles change: check kopf_toggles.py against it."""
    assert kopf_toggles.mismatches() == []


def test_the_project_pins_exactly_the_kopf_it_was_checked_against() -> None:
    """pyproject.toml and the version check agree: a resolver can install no other kopf."""
    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert f"kopf=={kopf_toggles.KOPF_VERSION}" in project["project"]["dependencies"]


def test_install_swaps_kopfs_class_and_refuses_a_changed_kopf(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(aiotoggles, "ToggleSet", KOPF_TOGGLE_SET)
    kopf_toggles.install()
    assert aiotoggles.ToggleSet is CountingToggleSet
    kopf_toggles.install(enabled=False)
    assert aiotoggles.ToggleSet is KOPF_TOGGLE_SET
    monkeypatch.setattr(kopf_toggles, "AIOTOGGLES_SHA256", "0" * 64)
    with pytest.raises(RuntimeError, match=r"aiotoggles\.py has changed"):
        kopf_toggles.install()
    assert aiotoggles.ToggleSet is KOPF_TOGGLE_SET


@SETS
def test_empty_sets(make_set: MakeSet) -> None:
    async def test() -> None:
        assert make_set(all).is_on()
        assert not make_set(any).is_on()
        await make_set(all).wait_for(True)
        await make_set(any).wait_for(False)

    run(test)


@SETS
@pytest.mark.parametrize("fn", [all, any])
def test_make_turn_drop(make_set: MakeSet, fn: Callable[[Iterable[bool]], bool]) -> None:
    async def test() -> None:
        toggles = make_set(fn)
        a = await toggles.make_toggle(name="a")
        b = await toggles.make_toggle(True, name="b")
        assert len(toggles) == 2
        assert a in toggles
        assert b.is_on()
        assert a.is_off()
        assert toggles.is_on() is fn([False, True])
        await a.turn_to(True)
        assert toggles.is_on() is True
        await b.turn_to(False)
        await a.turn_to(False)
        assert toggles.is_on() is False
        await toggles.drop_toggle(a)
        await b.turn_to(True)
        assert toggles.is_on() is True
        assert a not in toggles
        await a.turn_to(False)  # no longer a member: counts for nothing
        assert toggles.is_on() is True
        await toggles.drop_toggles(list(toggles))
        assert len(toggles) == 0
        assert toggles.is_on() is fn([])

    run(test)


@SETS
def test_waits_return_when_the_set_flips(make_set: MakeSet) -> None:
    async def test() -> None:
        toggles = make_set(all)
        a = await toggles.make_toggle(name="a")
        b = await toggles.make_toggle(name="b")
        on = asyncio.create_task(toggles.wait_for(True))
        await let_run()
        await a.turn_to(True)
        await let_run()
        assert not on.done()
        await toggles.drop_toggle(b)
        await let_run()
        assert on.done()
        off = asyncio.create_task(toggles.wait_for(False))
        b_on = asyncio.create_task(b.wait_for(True))  # b is dropped, but still a toggle
        await let_run()
        assert not off.done()
        assert not b_on.done()
        await b.turn_to(True)
        await let_run()
        assert b_on.done()
        assert not off.done()
        await toggles.make_toggle(name="c")
        await let_run()
        assert off.done()

    run(test)


@SETS
def test_a_member_toggles_own_wait(make_set: MakeSet) -> None:
    async def test() -> None:
        toggles = make_set(any)
        a = await toggles.make_toggle(True, name="a")
        b = await toggles.make_toggle(name="b")
        waiting = asyncio.create_task(b.wait_for(True))
        await let_run()
        assert not waiting.done()
        await b.turn_to(True)  # the set stays on: only b's own waiter is to wake
        await let_run()
        assert waiting.done()
        assert a.is_on()

    run(test)


OPS = st.lists(
    st.tuples(
        st.sampled_from(["make", "turn", "drop", "drop_many"]), st.booleans(), st.integers(0, 9)
    ),
    max_size=40,
)


@settings(deadline=None, max_examples=200)
@given(fn=st.sampled_from([all, any]), ops=OPS)
def test_same_states_and_waits_as_kopfs(fn: Callable[[Iterable[bool]], bool], ops: Any) -> None:
    """Any sequence of changes: both sets agree on the state and on which waits have returned."""

    async def test() -> None:
        sets = [KOPF_TOGGLE_SET(fn), CountingToggleSet(fn)]
        made: list[list[aiotoggles.Toggle]] = [[], []]
        waits: list[list[asyncio.Task[None]]] = [[], []]
        for op, value, index in ops:
            for side, toggles in enumerate(sets):
                mine = made[side]
                if op == "make" or not mine:
                    mine.append(await toggles.make_toggle(value))
                elif op == "turn":
                    await mine[index % len(mine)].turn_to(value)
                elif op == "drop":
                    await toggles.drop_toggle(mine[index % len(mine)])
                else:
                    await toggles.drop_toggles(mine[: index % len(mine)])
                waits[side].append(asyncio.create_task(toggles.wait_for(value)))
            await let_run()
            assert sets[0].is_on() == sets[1].is_on()
            assert len(sets[0]) == len(sets[1])
            assert [w.done() for w in waits[0]] == [w.done() for w in waits[1]]
        for task in waits[0] + waits[1]:
            task.cancel()
        await asyncio.gather(*waits[0], *waits[1], return_exceptions=True)

    run(test)


class Counted(CountingToggleSet):
    evaluations = 0

    def is_on(self) -> bool:
        Counted.evaluations += 1
        return super().is_on()


def test_a_restart_of_5000_objects_is_linear() -> None:
    """kopf's restart, in small: one toggle per object, then each worker drops its own and
    waits for all. kopf's own set evaluates its O(N) state O(N²) times here."""
    n = 5000

    async def test() -> None:
        indexed = Counted(all)
        blocker = await indexed.make_toggle(name="orchestration blocker")
        toggles = [await indexed.make_toggle(name=str(i)) for i in range(n)]

        async def worker(toggle: aiotoggles.Toggle) -> None:
            await indexed.drop_toggle(toggle)
            await indexed.wait_for(True)

        workers = [asyncio.create_task(worker(t)) for t in toggles]
        await let_run()
        assert not any(w.done() for w in workers)
        await indexed.drop_toggle(blocker)
        await asyncio.gather(*workers)
        changes = 2 * n + 2  # a make and a drop each
        assert Counted.evaluations <= 4 * changes

    run(test)
