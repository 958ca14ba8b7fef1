"""The signing-key rotation rule, over plain data: two rotations, odd clocks, and a simulated
verifier that caches the JWKS as long as it may and must never meet an unknown kid."""

from __future__ import annotations

import datetime
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubeiam.domain.key_rotation import (
    KeyTimes,
    Policy,
    RotationSettingsError,
    active_at,
    plan,
)

T0 = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
S = datetime.timedelta(seconds=1)
# The integration test's shape: a key signs 20 s, is published 8 s before, tokens live 10 s.
POLICY = Policy(period=20 * S, jwks_max_age=5 * S, refresh=2 * S, token_lifetime=10 * S, margin=S)


def ids() -> itertools.count[int]:
    return itertools.count(1)


def kids(counter: itertools.count[int]) -> str:
    return f"k{next(counter)}"


def test_an_empty_ring_gets_one_key_that_signs_at_once() -> None:
    counter = ids()
    (key,) = plan((), T0, POLICY, lambda: kids(counter))
    assert key == KeyTimes("k1", created=T0, activates=T0)


def test_nothing_changes_before_the_next_key_is_due() -> None:
    ring = (KeyTimes("k1", T0, T0),)
    due = T0 + POLICY.period - POLICY.lead
    assert plan(ring, due - S, POLICY, lambda: "never") is ring


def test_the_next_key_is_published_a_lead_before_it_signs_and_the_active_one_keeps_signing() -> (
    None
):
    ring = (KeyTimes("k1", T0, T0),)
    due = T0 + POLICY.period - POLICY.lead
    after = plan(ring, due, POLICY, lambda: "k2")
    assert after == (
        KeyTimes("k1", T0, T0, retires=T0 + POLICY.period),
        KeyTimes("k2", created=due, activates=T0 + POLICY.period),
    )
    assert after[1].activates - after[1].created >= POLICY.lead
    assert active_at(after, due).kid == "k1"
    assert active_at(after, T0 + POLICY.period - S / 1000).kid == "k1"
    assert active_at(after, T0 + POLICY.period).kid == "k2"
    # Asked again, it adds no second next key.
    assert plan(after, due + S, POLICY, lambda: "k3") is after


def test_two_rotations_keep_each_retired_key_until_its_tokens_expired() -> None:
    counter = ids()
    ring: tuple[KeyTimes, ...] = ()
    seen: list[tuple[str, ...]] = []
    now = T0
    while now <= T0 + 60 * S:
        ring = plan(ring, now, POLICY, lambda: kids(counter))
        seen.append(tuple(key.kid for key in ring))
        assert sum(key.activates > now for key in ring) <= 1  # never two next keys
        now += S / 2
    # k1 signs [0, 20), k2 [20, 40), k3 [40, 60), each published 8 s before; k1 is dropped
    # at 20 + 10 + 1 = 31 s, k2 at 51 s.
    by_time = dict(zip((T0 + i * S / 2 for i in range(len(seen))), seen, strict=True))
    assert by_time[T0 + 11.5 * S] == ("k1",)
    assert by_time[T0 + 12 * S] == ("k1", "k2")
    assert by_time[T0 + 30.5 * S] == ("k1", "k2")
    assert by_time[T0 + 31 * S] == ("k2",)
    assert by_time[T0 + 32 * S] == ("k2", "k3")
    assert by_time[T0 + 50.5 * S] == ("k2", "k3")
    assert by_time[T0 + 51 * S] == ("k3",)
    assert by_time[T0 + 52 * S] == ("k3", "k4")
    assert next(counter) == 5  # four keys in 60 s


def test_an_operator_that_was_down_publishes_the_next_key_a_full_lead_ahead() -> None:
    ring = (KeyTimes("k1", T0, T0),)
    late = T0 + 10 * POLICY.period
    after = plan(ring, late, POLICY, lambda: "k2")
    assert after[-1] == KeyTimes("k2", created=late, activates=late + POLICY.lead)
    assert active_at(after, late).kid == "k1"  # the old key signs until then, still published


def test_a_clock_behind_the_ring_signs_with_the_earliest_key_and_adds_nothing() -> None:
    ring = (
        KeyTimes("k1", T0, T0, retires=T0 + 20 * S),
        KeyTimes("k2", T0 + 12 * S, T0 + 20 * S),
    )
    early = T0 - datetime.timedelta(hours=1)
    assert active_at(ring, early).kid == "k1"
    assert plan(ring, early, POLICY, lambda: "k3") is ring


def test_a_clock_that_jumps_far_ahead_keeps_the_last_key_until_its_successor_is_published() -> None:
    ring = (
        KeyTimes("k1", T0, T0, retires=T0 + 20 * S),
        KeyTimes("k2", T0 + 12 * S, T0 + 20 * S),
    )
    far = T0 + datetime.timedelta(days=3)
    after = plan(ring, far, POLICY, lambda: "k3")
    assert [key.kid for key in after] == ["k2", "k3"]
    assert after[1].activates == far + POLICY.lead
    assert active_at(after, far).kid == "k2"


@pytest.mark.parametrize(
    ("period", "named"),
    [
        (8 * S, r"KUBEIAM_TOKEN_KEY_ROTATION_PERIOD \(8 s\) must be longer than the lead"),
        (-S, "KUBEIAM_TOKEN_KEY_ROTATION_PERIOD must be positive"),
    ],
)
def test_settings_whose_lead_does_not_fit_the_period_are_refused_by_name(
    period: datetime.timedelta, named: str
) -> None:
    policy = Policy(period, jwks_max_age=5 * S, refresh=2 * S, token_lifetime=10 * S, margin=S)
    with pytest.raises(RotationSettingsError, match=named):
        policy.check()
    POLICY.check()


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(st.integers(min_value=1, max_value=7_000), min_size=20, max_size=200),
    fetch_offset=st.integers(min_value=0, max_value=4_999),
)
def test_a_verifier_caching_the_jwks_for_its_max_age_never_meets_an_unknown_kid(
    steps: list[int], fetch_offset: int
) -> None:
    """The operator runs at irregular moments (at least every refresh interval); a replica
    reads the ring up to `refresh` late; a verifier refetches the JWKS when its cache is
    `jwks_max_age` old. Every token signed must verify until it expires."""
    ms = datetime.timedelta(milliseconds=1)
    counter = ids()
    history: list[tuple[datetime.datetime, tuple[KeyTimes, ...]]] = []
    ring: tuple[KeyTimes, ...] = ()
    now = T0
    for step in steps:
        ring = plan(ring, now, POLICY, lambda: kids(counter))
        history.append((now, ring))
        now += min(step * ms, POLICY.refresh)

    def written(at: datetime.datetime) -> tuple[KeyTimes, ...]:
        return next(r for t, r in reversed(history) if t <= at)

    def replica(at: datetime.datetime) -> tuple[KeyTimes, ...]:  # read up to refresh late
        return written(max(T0, at - POLICY.refresh))

    cached_at = T0 + fetch_offset * ms
    cached = {key.kid for key in written(cached_at)}
    t = cached_at
    while t < history[-1][0] - POLICY.token_lifetime:
        if t - cached_at >= POLICY.jwks_max_age:
            cached_at, cached = t, {key.kid for key in replica(t)}
        signer = active_at(replica(t), t)
        # A token signed now, verified by this verifier at any moment of its life.
        for life in (0, 5, 10):
            at = t + life * S
            verifier_keys = cached if at - cached_at < POLICY.jwks_max_age else None
            keys_then = verifier_keys or {key.kid for key in replica(at)}
            assert signer.kid in keys_then, (t, at, signer.kid, sorted(keys_then))
        t += 250 * ms
