"""domain/audit_pace.py: the Secret audit's pace, over plain numbers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeiam.domain.audit_pace import Pace, next_step

# The operator's defaults: 20 a second and a pass at most every 10 s in a hurry; 20 a minute and
# a pass at most every 5 minutes at rest.
PACE = Pace(hurried_rate=20, hurried_pass=10, rest_rate=20, rest_pass=300)
LONG_AGO = 24 * 3600.0


def test_at_rest_ten_thousand_secrets_cost_the_budget_a_minute_not_a_request_per_credential() -> (
    None
):
    step = next_step(PACE, targets=10_000, since_start=LONG_AGO, since_change=None)
    assert not step.hurried
    assert 60 / step.gap == pytest.approx(20)  # checks a minute
    assert step.bound == pytest.approx(10_000 * 3)  # 8 h 20 min: the documented bound


def test_at_rest_a_few_secrets_are_checked_once_per_rest_pass() -> None:
    step = next_step(PACE, targets=10, since_start=LONG_AGO, since_change=LONG_AGO)
    assert not step.hurried
    assert step.bound == 300
    assert step.gap == pytest.approx(30)


def test_right_after_the_start_every_secret_is_checked_once_in_a_hurry() -> None:
    # 10,000 at 20 a second: 500 s in a hurry, then at rest.
    during = next_step(PACE, targets=10_000, since_start=499, since_change=None)
    after = next_step(PACE, targets=10_000, since_start=501, since_change=None)
    assert during.hurried
    assert during.bound == pytest.approx(500)
    assert during.gap == pytest.approx(1 / 20)
    assert not after.hurried


@pytest.mark.parametrize("since_change", [0.0, 5.0, 9.9])
def test_a_deletion_or_a_finding_hurries_a_rested_audit(since_change: float) -> None:
    step = next_step(PACE, targets=100, since_start=LONG_AGO, since_change=since_change)
    assert step.hurried
    assert step.bound == 10  # 100 at 20 a second take 5 s; a hurried pass takes 10 s at least
    assert step.gap == pytest.approx(0.1)


def test_a_hurry_ends_after_one_full_hurried_pass() -> None:
    assert not next_step(PACE, targets=100, since_start=LONG_AGO, since_change=10).hurried


def test_nothing_to_check_costs_no_request_and_looks_again_a_hurried_pass_later() -> None:
    step = next_step(PACE, targets=0, since_start=LONG_AGO, since_change=None)
    assert step.gap == 10


@pytest.mark.parametrize("field", ["hurried_rate", "hurried_pass", "rest_rate", "rest_pass"])
def test_a_pace_that_is_not_positive_is_refused_by_name(field: str) -> None:
    values = {"hurried_rate": 20.0, "hurried_pass": 10.0, "rest_rate": 20.0, "rest_pass": 300.0}
    with pytest.raises(ValueError, match=f"the audit's {field} must be positive"):
        Pace(**{**values, field: 0.0})


@given(
    targets=st.integers(min_value=1, max_value=200_000),
    since_start=st.floats(min_value=0, max_value=1e6),
    since_change=st.none() | st.floats(min_value=0, max_value=1e6),
    rest_rate=st.floats(min_value=0.1, max_value=6000),
    rest_pass=st.floats(min_value=1, max_value=86_400),
)
def test_the_pace_keeps_its_promises(
    targets: int,
    since_start: float,
    since_change: float | None,
    rest_rate: float,
    rest_pass: float,
) -> None:
    pace = Pace(hurried_rate=20, hurried_pass=10, rest_rate=rest_rate, rest_pass=rest_pass)
    step = next_step(pace, targets=targets, since_start=since_start, since_change=since_change)
    # A full pass at this gap takes exactly the bound the step reports...
    assert step.gap * targets == pytest.approx(step.bound)
    # ...never faster than the pace allows...
    rate_per_second = 20 if step.hurried else rest_rate / 60
    assert 1 / step.gap <= rate_per_second * (1 + 1e-9)
    # ...and at rest never slower than the documented bound.
    if not step.hurried:
        assert step.bound == pytest.approx(max(rest_pass, targets * 60 / rest_rate))
