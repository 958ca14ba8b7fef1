"""The active limit and its admission order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kubeiam.domain.limit import Contender, LedgerEntry, plan_admission


def contender(index: int, created: str | None = None) -> Contender:
    return Contender(
        created_at=created or f"2026-11-23T12:00:{index:02d}Z", name=f"c{index}", uid=f"u{index}"
    )


def entry(c: Contender) -> LedgerEntry:
    return LedgerEntry(c.name, c.uid)


def test_the_oldest_are_admitted_up_to_the_limit() -> None:
    waiting = [contender(i) for i in (4, 1, 3, 0, 2, 6, 5)]
    plan = plan_admission([], waiting=waiting, ended=set(), limit=5)
    assert [e.name for e in plan.ledger] == ["c0", "c1", "c2", "c3", "c4"]
    assert plan.released == ()


def test_ties_on_creation_time_are_broken_by_name() -> None:
    waiting = [contender(i, "2026-11-23T12:00:00Z") for i in (3, 1, 2)]
    plan = plan_admission([], waiting=waiting, ended=set(), limit=1)
    assert [e.name for e in plan.admitted] == ["c1"]


def test_an_ended_holder_frees_its_slot_for_the_oldest_waiting() -> None:
    holders = [contender(i) for i in range(5)]
    waiting = [contender(7), contender(6)]
    plan = plan_admission([entry(c) for c in holders], waiting=waiting, ended={"u2"}, limit=5)
    assert [e.name for e in plan.released] == ["c2"]
    assert [e.name for e in plan.admitted] == ["c6"]
    assert len(plan.ledger) == 5


def test_a_holder_is_not_admitted_twice_and_an_unchanged_plan_says_so() -> None:
    holders = [contender(i) for i in range(2)]
    plan = plan_admission([entry(c) for c in holders], waiting=holders, ended=set(), limit=5)
    assert not plan.changed
    assert [e.name for e in plan.ledger] == ["c0", "c1"]


def test_a_lowered_limit_admits_nobody_but_revokes_nobody() -> None:
    holders = [contender(i) for i in range(4)]
    plan = plan_admission([entry(c) for c in holders], waiting=[contender(9)], ended=set(), limit=2)
    assert len(plan.ledger) == 4
    assert plan.admitted == ()


@st.composite
def histories(draw: st.DrawFn) -> tuple[int, list[tuple[str, int]]]:
    limit = draw(st.integers(min_value=1, max_value=6))
    steps = draw(
        st.lists(st.tuples(st.sampled_from(["create", "end"]), st.integers(0, 30)), max_size=60)
    )
    return limit, steps


@given(histories())
def test_the_limit_holds_and_admission_is_oldest_first_through_any_history(
    history: tuple[int, list[tuple[str, int]]],
) -> None:
    limit, steps = history
    ledger: tuple[LedgerEntry, ...] = ()
    waiting: dict[str, Contender] = {}
    ended: set[str] = set()
    for clock, (action, index) in enumerate(steps, start=1):
        if action == "create":
            c = Contender(f"t{clock:04d}", f"c{clock}", f"u{clock}")
            waiting[c.uid] = c
        else:
            held = [e.uid for e in ledger]
            if held:
                ended.add(held[index % len(held)])
        plan = plan_admission(ledger, waiting=list(waiting.values()), ended=ended, limit=limit)
        ledger = plan.ledger
        assert len(ledger) <= limit
        for admitted in plan.admitted:
            # Nobody still waiting is older than anyone admitted.
            admitted_contender = waiting.pop(admitted.uid)
            assert all(admitted_contender < other for other in waiting.values())
        if len(ledger) < limit:
            assert not waiting, "a free slot was left while credentials waited"
