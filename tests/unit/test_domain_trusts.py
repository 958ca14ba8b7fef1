"""A trust's status rules: which problem Ready names first, roles, the limit, lastCheckedAt."""

from __future__ import annotations

import dataclasses
import datetime

from hypothesis import given
from hypothesis import strategies as st

from kubeiam.domain import trusts as rules
from kubeiam.domain.conditions import Reason
from kubeiam.domain.trusts import (
    IssuerCheck,
    Problem,
    TrustFacts,
    TrustRank,
    desired_status,
    issuer_allowed,
    over_limit,
    ready_condition,
)

NOW = datetime.datetime(2026, 11, 23, 12, 0, tzinfo=datetime.UTC)
HOUR = datetime.timedelta(hours=1)
ISSUER = "https://token.actions.githubusercontent.com"


def facts(**changes: object) -> TrustFacts:
    base = TrustFacts(
        generation=1,
        issuer_url=ISSUER,
        disabled=False,
        account_name="deployer",
        account_roles=("compute.deployer", "storage.reader"),
        account_disabled=False,
        scoped_roles=None,
        issuer_is_allowed=True,
        over_limit=False,
        max_trusts=20,
        issuer=IssuerCheck(checked_at=NOW, key_ids=("k1", "k2")),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_a_trust_with_an_account_a_good_condition_and_reachable_keys_is_ready() -> None:
    condition = ready_condition(facts())
    assert (condition.status, condition.reason) == ("True", Reason.READY)
    assert "k1, k2" in condition.message
    assert "deployer" in condition.message


def test_problems_are_reported_in_the_order_a_person_fixes_them() -> None:
    unreachable = IssuerCheck(checked_at=NOW, problem=Problem(Reason.ISSUER_UNREACHABLE, "down"))
    worst = facts(
        account_roles=None,
        issuer_is_allowed=False,
        problems=(Problem(Reason.CONDITION_INVALID, "syntax"),),
        over_limit=True,
        disabled=True,
        account_disabled=True,
        issuer=unreachable,
    )
    expected = [
        ("account_roles", ("r",), Reason.ACCOUNT_MISSING),
        ("issuer_is_allowed", True, Reason.ISSUER_NOT_ALLOWED),
        ("problems", (), Reason.CONDITION_INVALID),
        ("over_limit", False, Reason.TOO_MANY_TRUSTS),
        ("disabled", False, Reason.DISABLED),
        ("account_disabled", False, Reason.ACCOUNT_DISABLED),
        ("issuer", IssuerCheck(checked_at=NOW, key_ids=("k",)), Reason.ISSUER_UNREACHABLE),
    ]
    current = worst
    for field, fixed, reason in expected:
        condition = ready_condition(current)
        assert (condition.status, condition.reason) == ("False", reason)
        current = dataclasses.replace(current, **{field: fixed})  # type: ignore[arg-type]
    assert ready_condition(current).reason == Reason.READY


def test_an_issuer_not_yet_checked_leaves_ready_unknown() -> None:
    condition = ready_condition(facts(issuer=None))
    assert condition.status == "Unknown"


def test_effective_roles_are_the_accounts_narrowed_by_scoped_roles() -> None:
    status = desired_status(
        facts(scoped_roles=("storage.reader", "billing.admin")), now=NOW, recheck_after=HOUR
    )
    assert status["effectiveRoles"] == ["storage.reader"]
    assert desired_status(facts(), now=NOW, recheck_after=HOUR)["effectiveRoles"] == [
        "compute.deployer",
        "storage.reader",
    ]
    assert (
        desired_status(facts(account_roles=None), now=NOW, recheck_after=HOUR)["effectiveRoles"]
        == []
    )
    # Set means "only these": an empty list grants none of the account's roles.
    assert (
        desired_status(facts(scoped_roles=()), now=NOW, recheck_after=HOUR)["effectiveRoles"] == []
    )


def test_a_recheck_that_finds_the_same_keys_costs_no_write_until_the_recorded_time_is_old() -> None:
    first = desired_status(facts(), now=NOW, recheck_after=HOUR)
    assert first["lastCheckedAt"] == "2026-11-23T12:00:00Z"
    later = facts(
        issuer=IssuerCheck(
            checked_at=NOW + 10 * datetime.timedelta(minutes=1), key_ids=("k1", "k2")
        ),
        current_status=first,
    )
    assert desired_status(later, now=NOW, recheck_after=HOUR) == first
    much_later = dataclasses.replace(
        later, issuer=IssuerCheck(checked_at=NOW + 2 * HOUR, key_ids=("k1", "k2"))
    )
    assert desired_status(much_later, now=NOW, recheck_after=HOUR)["lastCheckedAt"] == (
        "2026-11-23T14:00:00Z"
    )


def test_rotated_keys_are_recorded_with_the_time_they_were_seen() -> None:
    first = desired_status(facts(), now=NOW, recheck_after=HOUR)
    rotated = facts(
        issuer=IssuerCheck(checked_at=NOW + datetime.timedelta(minutes=5), key_ids=("k3",)),
        current_status=first,
    )
    status = desired_status(rotated, now=NOW, recheck_after=HOUR)
    assert status["jwksKeyIds"] == ["k3"]
    assert status["lastCheckedAt"] == "2026-11-23T12:05:00Z"


def test_issuers_are_allowed_by_an_empty_list_or_by_name_with_or_without_a_trailing_slash() -> None:
    assert issuer_allowed(ISSUER, [])
    assert issuer_allowed(ISSUER, [ISSUER + "/"])
    assert not issuer_allowed("https://gitlab.com", [ISSUER])
    assert not issuer_allowed(ISSUER + ".evil.example", [ISSUER])


@given(
    st.lists(
        st.tuples(st.integers(0, 50), st.text("ab", min_size=1, max_size=3)),
        unique_by=lambda item: item[1],
        max_size=30,
    ),
    st.integers(1, 10),
)
def test_the_oldest_trusts_keep_their_place_under_the_limit(
    trusts: list[tuple[int, str]], limit: int
) -> None:
    ranks = [
        TrustRank(created_at=f"2026-01-01T00:00:{second:02d}Z", name=name, uid=f"uid-{name}")
        for second, name in trusts
    ]
    over = over_limit(ranks, limit)
    assert len(over) == max(0, len(ranks) - limit)
    kept = [rank for rank in ranks if rank.uid not in over]
    for rank in ranks:
        if rank.uid in over:
            assert all(k < rank for k in kept)


def test_a_trust_is_stale_when_its_roles_or_its_account_state_no_longer_follow() -> None:
    same = {"recorded_roles": ["a.read"], "scoped_roles": None, "account_roles": ["a.read"]}
    assert not rules.stale(**same, ready_reason="Ready", account_disabled=False)
    assert rules.stale(**same, ready_reason="Ready", account_disabled=True)
    assert rules.stale(**same, ready_reason="AccountMissing", account_disabled=False)
    assert not rules.stale(**same, ready_reason="AccountDisabled", account_disabled=True)
    assert rules.stale(
        recorded_roles=["a.read"],
        scoped_roles=None,
        account_roles=["a.read", "b.write"],
        ready_reason="Ready",
        account_disabled=False,
    )
    assert rules.stale(
        recorded_roles=None,
        scoped_roles=None,
        account_roles=[],
        ready_reason=None,
        account_disabled=False,
    )


def test_a_trust_is_misplaced_when_ready_over_the_limit_or_refused_within_it() -> None:
    assert rules.misplaced("Ready", over_limit=True)
    assert rules.misplaced("TooManyTrusts", over_limit=False)
    assert not rules.misplaced("Ready", over_limit=False)
    assert not rules.misplaced("TooManyTrusts", over_limit=True)
    assert not rules.misplaced("IssuerUnreachable", over_limit=True)
