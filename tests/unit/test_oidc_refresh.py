"""The issuer refresh schedule: Cache-Control parsing, refresh bounds and backoff after failures."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeiam.oidc.refresh import next_check, parse_cache_control

NOW = datetime.datetime(2026, 11, 23, 12, 0, tzinfo=datetime.UTC)
SECOND = datetime.timedelta(seconds=1)
BOUNDS = {
    "refresh_min": datetime.timedelta(minutes=5),
    "refresh_max": datetime.timedelta(hours=1),
    "retry_min": datetime.timedelta(seconds=5),
    "retry_max": datetime.timedelta(minutes=5),
}

LONGEST = datetime.timedelta(days=1000)

durations = st.timedeltas(min_value=SECOND, max_value=LONGEST)
max_ages = st.none() | st.timedeltas(min_value=datetime.timedelta(0), max_value=LONGEST)


@st.composite
def bounds(draw: st.DrawFn) -> dict[str, datetime.timedelta]:
    refresh = sorted([draw(durations), draw(durations)])
    retry = sorted([draw(durations), draw(durations)])
    return {
        "refresh_min": refresh[0],
        "refresh_max": refresh[1],
        "retry_min": retry[0],
        "retry_max": retry[1],
    }


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("max-age=300", datetime.timedelta(seconds=300)),
        ("public, max-age=3600, must-revalidate", datetime.timedelta(hours=1)),
        ('Max-Age="60"', datetime.timedelta(seconds=60)),
        ("max-age=0", datetime.timedelta(0)),
        ("no-store", datetime.timedelta(0)),
        ("no-cache, max-age=600", datetime.timedelta(0)),
        ("private, NO-CACHE", datetime.timedelta(0)),
        ("max-age=99999999999999999999", datetime.timedelta(seconds=2**31)),
        ("max-age=60, max-age=60", datetime.timedelta(seconds=60)),
    ],
)
def test_cache_control_says_how_long_a_response_stays_fresh(
    header: str, expected: datetime.timedelta
) -> None:
    assert parse_cache_control(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "public",
        "max-age",
        "max-age=",
        "max-age=-1",
        "max-age=1.5",
        "max-age=ten",
        "max-age=٣",  # a digit, but not an ASCII one
        "max-age=60, max-age=120",
        "s-maxage=60",
    ],
)
def test_cache_control_that_says_nothing_usable_gives_none(header: str | None) -> None:
    assert parse_cache_control(header) is None


@given(st.text())
def test_any_header_parses_without_error(header: str) -> None:
    result = parse_cache_control(header)
    assert result is None or datetime.timedelta(0) <= result <= datetime.timedelta(seconds=2**31)


@given(st.integers(min_value=0, max_value=2**31), st.sampled_from(["", "public, ", "private, "]))
def test_max_age_is_read_back(seconds: int, prefix: str) -> None:
    assert parse_cache_control(f"{prefix}max-age={seconds}") == datetime.timedelta(seconds=seconds)


@given(st.integers(min_value=0, max_value=2**31), st.sampled_from(["no-store", "no-cache"]))
def test_uncacheable_wins_over_max_age(seconds: int, directive: str) -> None:
    header = f"max-age={seconds}, {directive}"
    assert parse_cache_control(header) == datetime.timedelta(0)


def test_a_reachable_issuer_is_checked_again_after_its_max_age() -> None:
    due = next_check(NOW, ok=True, max_age=datetime.timedelta(minutes=20), failures=0, **BOUNDS)
    assert due == NOW + datetime.timedelta(minutes=20)


def test_an_issuer_that_says_nothing_is_checked_after_refresh_max() -> None:
    due = next_check(NOW, ok=True, max_age=None, failures=0, **BOUNDS)
    assert due == NOW + BOUNDS["refresh_max"]


def test_no_cache_is_not_a_poll_loop() -> None:
    due = next_check(NOW, ok=True, max_age=datetime.timedelta(0), failures=0, **BOUNDS)
    assert due == NOW + BOUNDS["refresh_min"]


def test_failures_back_off_from_retry_min_to_retry_max() -> None:
    delays = [
        next_check(NOW, ok=False, max_age=None, failures=n, **BOUNDS) - NOW for n in range(1, 10)
    ]
    assert delays == [
        datetime.timedelta(seconds=s) for s in (5, 10, 20, 40, 80, 160, 300, 300, 300)
    ]


@given(max_ages, bounds())
def test_a_success_is_rechecked_within_the_refresh_bounds(
    max_age: datetime.timedelta | None, limits: dict[str, datetime.timedelta]
) -> None:
    delay = next_check(NOW, ok=True, max_age=max_age, failures=0, **limits) - NOW
    assert limits["refresh_min"] <= delay <= limits["refresh_max"]
    if max_age is not None and limits["refresh_min"] <= max_age <= limits["refresh_max"]:
        assert delay == max_age


@given(max_ages, bounds(), st.integers(min_value=1, max_value=10**9))
def test_a_failure_is_retried_within_the_retry_bounds(
    max_age: datetime.timedelta | None, limits: dict[str, datetime.timedelta], failures: int
) -> None:
    delay = next_check(NOW, ok=False, max_age=max_age, failures=failures, **limits) - NOW
    assert limits["retry_min"] <= delay <= limits["retry_max"]


@given(bounds(), st.integers(min_value=1, max_value=10**6))
def test_backoff_never_shrinks(limits: dict[str, datetime.timedelta], failures: int) -> None:
    def delay(n: int) -> datetime.timedelta:
        return next_check(NOW, ok=False, max_age=None, failures=n, **limits) - NOW

    assert delay(1) == limits["retry_min"]
    assert delay(failures) <= delay(failures + 1)


@given(bounds(), st.integers(min_value=1, max_value=200))
def test_the_retry_delay_is_retry_min_doubled_per_earlier_failure_up_to_retry_max(
    limits: dict[str, datetime.timedelta], failures: int
) -> None:
    # In whole microseconds, so the expected value cannot overflow where the code must not.
    microsecond = datetime.timedelta(microseconds=1)
    doubled = (limits["retry_min"] // microsecond) * 2 ** (failures - 1)
    expected = min(doubled, limits["retry_max"] // microsecond) * microsecond
    due = next_check(NOW, ok=False, max_age=None, failures=failures, **limits)
    assert due == NOW + expected
