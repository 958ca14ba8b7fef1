"""domain/upkeep.py: the credentials controller's upkeep decisions, without a cluster."""

from __future__ import annotations

import datetime

from hypothesis import given
from hypothesis import strategies as st

from kubeiam.domain import upkeep
from kubeiam.domain.conditions import Reason, format_time
from kubeiam.domain.credentials import CredentialView

NOW = datetime.datetime(2026, 6, 1, 12, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)


def view(name: str, **fields: object) -> CredentialView:
    values: dict[str, object] = {
        "namespace": "team-a",
        "name": name,
        "uid": f"uid-{name}",
        "account": "pipeline",
        "created_at": "2026-05-01T00:00:00Z",
        "state": None,
        "revoked": False,
        "issued": False,
        "expires_at": None,
        **fields,
    }
    return CredentialView(**values)  # type: ignore[arg-type]


def test_the_secret_is_named_as_issued_then_as_asked_then_after_the_credential() -> None:
    metadata = {"name": "deploy-key"}
    assert upkeep.secret_name(metadata, {}, {}) == "deploy-key"
    assert upkeep.secret_name(metadata, {"secretName": "asked"}, {}) == "asked"
    issued = {"secretName": "issued"}
    assert upkeep.secret_name(metadata, {"secretName": "asked"}, issued) == "issued"


def test_the_deletion_policy_is_as_recorded_then_as_asked_then_the_default() -> None:
    assert upkeep.deletion_policy({}, {}, "Delete") == "Delete"
    assert upkeep.deletion_policy({"secretDeletionPolicy": "Retain"}, {}, "Delete") == "Retain"
    recorded = {"secretDeletionPolicy": "Delete"}
    assert upkeep.deletion_policy({"secretDeletionPolicy": "Retain"}, recorded, "Retain") == (
        "Delete"
    )


def test_a_disabled_account_admits_nobody_and_the_gone_never_contend() -> None:
    views = [view("a"), view("b"), view("c", issued=True, state="Active")]
    assert upkeep.contenders(views, gone=set(), account_disabled=True) == []
    found = upkeep.contenders(views, gone={"uid-b"}, account_disabled=False)
    assert [c.uid for c in found] == ["uid-a"]


def test_a_sweep_settles_an_account_with_room_an_unissued_holder_or_an_ended_holder() -> None:
    waiting, active = view("w"), view("x", issued=True, state="Active")
    ended = view("e", issued=True, state="Expired")
    assert upkeep.needs_sweep([waiting, active], [frozenset({"uid-x"})], limit=5)
    assert not upkeep.needs_sweep([waiting, active], [frozenset({"uid-x"})], limit=1)
    assert upkeep.needs_sweep([waiting], [frozenset({"uid-w"})], limit=1)
    assert upkeep.needs_sweep([ended, waiting], [frozenset({"uid-e"})], limit=1)
    assert not upkeep.needs_sweep([active], [frozenset({"uid-x"})], limit=5)
    assert not upkeep.needs_sweep([waiting], [], limit=5)


def test_stale_roles_are_those_of_issued_live_credentials_that_no_longer_follow() -> None:
    views = [
        view("all", issued=True, state="Active", effective_roles=("a.read",)),
        view(
            "narrow",
            issued=True,
            state="Active",
            scoped_roles=("a.read",),
            effective_roles=("a.read",),
        ),
        view("ended", issued=True, state="Revoked", revoked=True),
        view("waiting"),
    ]
    stale = upkeep.stale_roles(views, ["a.read", "b.write"])
    assert [(v.name, roles) for v, roles in stale] == [("all", ["a.read", "b.write"])]


def test_an_account_change_outdates_waiting_credentials_that_name_its_old_state() -> None:
    missing = view("m", reason=Reason.ACCOUNT_MISSING)
    disabled = view("d", reason=Reason.ACCOUNT_DISABLED)
    limited = view("l", reason=Reason.LIMIT_EXCEEDED)
    waiting = [missing, disabled, limited]
    enabled = upkeep.outdated_by_account(waiting, account_disabled=False, holders=set())
    assert [v.name for v in enabled] == ["m", "d"]
    now_disabled = upkeep.outdated_by_account(waiting, account_disabled=True, holders=set())
    assert [v.name for v in now_disabled] == ["m", "l"]
    # One the ledger just admitted is being issued: not reconciled twice.
    assert upkeep.outdated_by_account(waiting, account_disabled=False, holders={"uid-m"}) == [
        disabled
    ]


@given(
    expires_in=st.integers(min_value=1, max_value=400 * 86400),
    lead=st.integers(min_value=0, max_value=30 * 86400),
)
def test_the_warning_is_due_a_lead_before_expiry_never_in_the_past(
    expires_in: int, lead: int
) -> None:
    expires_at = NOW + datetime.timedelta(seconds=expires_in)
    issued = view("k", issued=True, state="Active", expires_at=format_time(expires_at))
    plan = upkeep.expiry_schedule(issued, lead=datetime.timedelta(seconds=lead), now=NOW)
    assert plan is not None
    assert plan.expire_at == expires_at
    assert plan.warn_at == max(NOW, expires_at - datetime.timedelta(seconds=lead))


def test_a_warned_or_ended_credential_has_no_warning_due_and_a_waiting_one_is_left_alone() -> None:
    expires_at = format_time(NOW + 30 * DAY)
    warned = view("w", issued=True, state="Active", expires_at=expires_at, warned=True)
    plan = upkeep.expiry_schedule(warned, lead=7 * DAY, now=NOW)
    assert plan is not None
    assert plan.warn_at is None
    assert plan.expire_at is not None
    ended = view("e", issued=True, state="Expired", expires_at=expires_at)
    assert upkeep.expiry_schedule(ended, lead=7 * DAY, now=NOW) == upkeep.ExpirySchedule(None, None)
    assert upkeep.expiry_schedule(view("p"), lead=7 * DAY, now=NOW) is None
