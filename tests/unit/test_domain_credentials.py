"""A credential's next step and the statuses it writes, without a cluster."""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeiam.domain import secret_format
from kubeiam.domain.conditions import READY, Reason, format_time
from kubeiam.domain.credentials import (
    EXPIRING_SOON,
    Account,
    Admit,
    CredentialFacts,
    CredentialView,
    End,
    Fail,
    Issuance,
    Issue,
    KeepActive,
    Policy,
    Settled,
    State,
    Step,
    Wait,
    active_status,
    decide,
    display_name,
    effective_roles,
    ended_status,
    expiring_soon,
    has_condition,
    issued_for_another_account,
    issued_ready_status,
    issued_status,
    limit_message,
    pending_status,
    resolved_expiry,
    secret_deleted_status,
    secret_refused_message,
    secret_replaced_status,
    warning_time,
)

NOW = datetime.datetime(2026, 11, 23, 12, 0, tzinfo=datetime.UTC)
CREATED = NOW - datetime.timedelta(days=10)
CREATED_TEXT = format_time(CREATED)
DAY = datetime.timedelta(days=1)
DEFAULT = 90 * DAY
MAXIMUM = 365 * DAY
POLICY = Policy(
    default_credential_lifetime=DEFAULT,
    max_credential_lifetime=MAXIMUM,
    secret_deletion_policy="Retain",
    max_active_credentials=5,
)
ACCOUNT_NAME = "pipeline-prod"
SECRET_HASH = "sha256:" + "ab" * 32
# Anything shaped like a client secret, anywhere in a text (the format's pattern, unanchored).
SECRET_LOOKALIKE = re.compile(r"kiam_[a-z2-7]{20}_[0-9A-Za-z]{49}")
TERMINAL_STATES = [State.EXPIRED, State.REVOKED, State.FAILED]


# -- factories -----------------------------------------------------------------------------


def account(
    *,
    disabled: bool = False,
    holds_slot: bool = False,
    roles: tuple[str, ...] = ("deploy", "read"),
) -> Account:
    return Account(
        uid="account-uid",
        client_id=f"{ACCOUNT_NAME}@team-a.acme.iam",
        disabled=disabled,
        roles=roles,
        holds_slot=holds_slot,
    )


_NO_ACCOUNT: Any = object()


def facts(
    *,
    revoked: bool = False,
    expires_at: datetime.datetime | None = None,
    expires_in: str | None = None,
    status: Mapping[str, Any] | None = None,
    account_: Account | None = _NO_ACCOUNT,
    now: datetime.datetime = NOW,
    generation: int = 1,
) -> CredentialFacts:
    """A credential created ten days before NOW, of an account that exists and is enabled."""
    return CredentialFacts(
        name="ci-deploy",
        uid="credential-uid",
        generation=generation,
        created_at=CREATED,
        revoked=revoked,
        expires_at=expires_at,
        expires_in=expires_in,
        status=status or {},
        account=account() if account_ is _NO_ACCOUNT else account_,
        account_name=ACCOUNT_NAME,
        now=now,
    )


def issued(expires_at: datetime.datetime = CREATED + DEFAULT) -> dict[str, Any]:
    """The status of a credential whose Secret was written."""
    return {
        "state": str(State.ACTIVE),
        "secretHash": SECRET_HASH,
        "expiresAt": format_time(expires_at),
        "secretName": "ci-deploy",
    }


def issuance(**overrides: Any) -> Issuance:
    fields: dict[str, Any] = {
        "credential_id": secret_format.credential_id("credential-uid"),
        "client_id": f"{ACCOUNT_NAME}@team-a.acme.iam",
        "secret_name": "ci-deploy-secret",
        "secret_hash": SECRET_HASH,
        "expires_at": CREATED + DEFAULT,
        "effective_roles": ["deploy", "read"],
        "deletion_policy": "Retain",
        "secret_uid": "secret-uid",
        "account_uid": "account-uid",
    }
    fields.update(overrides)
    return Issuance(**fields)


def ready(status: Mapping[str, Any]) -> dict[str, Any]:
    return condition(status, READY)


def condition(status: Mapping[str, Any], condition_type: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in status["conditions"] if c["type"] == condition_type)
    return found


def later(status: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """The stored status after a merge patch of `update` (top-level fields replace)."""
    return {**status, **update}


# -- decide: the chain, step by step ---------------------------------------------------------


@pytest.mark.parametrize("state", TERMINAL_STATES)
@pytest.mark.parametrize(
    "situation",
    [
        {},
        {"revoked": True},
        {"expires_in": "9000h"},
        {"expires_at": CREATED - DAY},
        {"now": CREATED + 400 * DAY},
        {"status": issued()},
        {"account_": None},
        {"account_": account(holds_slot=True)},
    ],
    ids=[
        "plain",
        "revoked",
        "over-lifetime",
        "invalid-expiry",
        "expired",
        "issued",
        "no-account",
        "holds-slot",
    ],
)
def test_an_ended_credential_is_settled_whatever_else_holds(
    state: State, situation: dict[str, Any]
) -> None:
    given_ = dict(situation)
    status = {**given_.pop("status", {}), "state": str(state)}
    assert decide(facts(status=status, **given_), POLICY) == Settled()


@pytest.mark.parametrize("state", [None, State.PENDING, State.ACTIVE])
def test_a_live_state_is_not_settled(state: State | None) -> None:
    status = {"state": str(state)} if state else {}
    assert decide(facts(status=status), POLICY) != Settled()


@pytest.mark.parametrize(
    "situation",
    [
        {},
        {"status": issued()},
        {"expires_in": "9000h"},
        {"expires_at": CREATED - DAY},
        {"now": CREATED + 400 * DAY},
        {"status": issued(), "now": CREATED + 400 * DAY},
        {"account_": None},
        {"account_": account(holds_slot=True)},
        {"account_": account(disabled=True)},
    ],
    ids=[
        "plain",
        "issued",
        "over-lifetime",
        "invalid-expiry",
        "expired",
        "issued-and-expired",
        "no-account",
        "holds-slot",
        "disabled-account",
    ],
)
def test_revocation_ends_a_live_credential_before_anything_else(
    situation: dict[str, Any],
) -> None:
    step = decide(facts(revoked=True, **situation), POLICY)
    assert isinstance(step, End)
    assert (step.state, step.reason) == (State.REVOKED, Reason.REVOKED)
    assert "spec.revoked" in step.message


@pytest.mark.parametrize(
    ("request_", "asked"),
    [
        ({"expires_in": "9000h"}, "375d"),
        ({"expires_in": "8761h"}, "365d1h"),
        ({"expires_at": CREATED + 400 * DAY}, "400d"),
    ],
)
def test_a_lifetime_above_the_maximum_fails_naming_the_maximum(
    request_: dict[str, Any], asked: str
) -> None:
    step = decide(facts(**request_), POLICY)
    assert isinstance(step, Fail)
    assert step.reason == Reason.LIFETIME_EXCEEDED
    assert "maximum of 365d" in step.message
    assert asked in step.message


def test_exactly_the_maximum_lifetime_is_granted() -> None:
    step = decide(facts(expires_in="8760h", account_=account(holds_slot=True)), POLICY)
    assert step == Issue(CREATED + MAXIMUM)


def test_a_default_lifetime_above_the_maximum_fails_too() -> None:
    policy = POLICY.model_copy(update={"default_credential_lifetime": 400 * DAY})
    step = decide(facts(), policy)
    assert isinstance(step, Fail)
    assert step.reason == Reason.LIFETIME_EXCEEDED
    assert "default lifetime" in step.message


@pytest.mark.parametrize(
    "request_",
    [
        {"expires_at": CREATED - datetime.timedelta(seconds=1)},
        {"expires_at": CREATED},
        {"expires_in": "0s"},
        {"expires_in": "ten days"},
        {"expires_at": CREATED + DAY, "expires_in": "24h"},
    ],
    ids=["before-creation", "at-creation", "zero", "not-a-duration", "both"],
)
def test_an_impossible_expiry_fails_as_invalid(request_: dict[str, Any]) -> None:
    step = decide(facts(**request_), POLICY)
    assert isinstance(step, Fail)
    assert step.reason == Reason.INVALID_EXPIRY


def test_an_expiry_before_creation_names_the_field() -> None:
    step = decide(facts(expires_at=CREATED - DAY), POLICY)
    assert isinstance(step, Fail)
    assert "spec.expiresAt" in step.message
    assert "before the credential's creation" in step.message


def test_a_lifetime_is_checked_before_the_account_is_looked_at() -> None:
    step = decide(facts(expires_in="9000h", account_=None), POLICY)
    assert isinstance(step, Fail)


def test_a_credential_past_its_resolved_expiry_ends_expired() -> None:
    step = decide(facts(expires_in="24h"), POLICY)
    assert step == End(State.EXPIRED, Reason.EXPIRED, f"Expired at {format_time(CREATED + DAY)}.")


def test_expiry_is_due_at_the_instant_itself_and_not_a_second_before() -> None:
    at = decide(facts(now=CREATED + DEFAULT), POLICY)
    before = decide(facts(now=CREATED + DEFAULT - datetime.timedelta(seconds=1)), POLICY)
    assert isinstance(at, End)
    assert at.state == State.EXPIRED
    assert before == Admit()


def test_a_pending_credential_expires_even_without_its_account() -> None:
    step = decide(facts(now=CREATED + 100 * DAY, account_=None), POLICY)
    assert isinstance(step, End)
    assert step.state == State.EXPIRED


def test_the_recorded_expiry_beats_the_resolved_one_when_it_is_earlier() -> None:
    recorded = CREATED + 5 * DAY  # the spec alone would give CREATED + 90 days
    step = decide(facts(status=issued(recorded)), POLICY)
    assert step == End(State.EXPIRED, Reason.EXPIRED, f"Expired at {format_time(recorded)}.")


def test_the_recorded_expiry_beats_the_resolved_one_when_it_is_later() -> None:
    recorded = CREATED + 30 * DAY  # the spec alone would have expired at CREATED + 1 day
    step = decide(facts(expires_in="24h", status=issued(recorded)), POLICY)
    assert step == KeepActive(recorded)


@pytest.mark.parametrize(
    "owner",
    [account(), account(holds_slot=True), account(disabled=True), None],
    ids=["enabled", "holds-slot", "disabled", "missing"],
)
def test_an_issued_credential_is_kept_active_with_its_recorded_expiry(
    owner: Account | None,
) -> None:
    recorded = CREATED + 45 * DAY
    assert decide(facts(status=issued(recorded), account_=owner), POLICY) == KeepActive(recorded)


def test_a_missing_account_is_waited_for_by_name() -> None:
    step = decide(facts(account_=None), POLICY)
    assert isinstance(step, Wait)
    assert step.reason == Reason.ACCOUNT_MISSING
    assert repr(ACCOUNT_NAME) in step.message


@pytest.mark.parametrize("disabled", [False, True])
def test_a_slot_holder_is_issued_with_the_resolved_expiry(disabled: bool) -> None:
    # A disabled account keeps its credentials: a slot taken before is honoured.
    owner = account(holds_slot=True, disabled=disabled)
    assert decide(facts(account_=owner), POLICY) == Issue(CREATED + DEFAULT)
    assert decide(facts(expires_in="720h", account_=owner), POLICY) == Issue(
        CREATED + datetime.timedelta(hours=720)
    )


def test_a_disabled_account_without_a_slot_is_waited_for() -> None:
    step = decide(facts(account_=account(disabled=True)), POLICY)
    assert isinstance(step, Wait)
    assert step.reason == Reason.ACCOUNT_DISABLED
    assert repr(ACCOUNT_NAME) in step.message
    assert "spec.disabled" in step.message


def test_otherwise_the_credential_asks_for_a_slot() -> None:
    assert decide(facts(), POLICY) == Admit()
    assert decide(facts(status={"state": str(State.PENDING)}), POLICY) == Admit()


def test_an_issued_credential_survives_a_lowered_maximum() -> None:
    recorded = CREATED + 200 * DAY
    lowered = POLICY.model_copy(update={"max_credential_lifetime": 180 * DAY})
    step = decide(facts(expires_in="4800h", status=issued(recorded)), lowered)
    assert step == KeepActive(recorded)


# -- resolved_expiry -----------------------------------------------------------------------


def test_the_expiry_resolves_from_the_spec_until_one_is_recorded() -> None:
    assert resolved_expiry(facts(), POLICY) == CREATED + DEFAULT
    assert resolved_expiry(facts(expires_in="48h"), POLICY) == CREATED + 2 * DAY


def test_the_recorded_expiry_beats_the_spec() -> None:
    recorded = CREATED + 7 * DAY
    assert resolved_expiry(facts(expires_in="48h", status=issued(recorded)), POLICY) == recorded


def test_the_recorded_expiry_is_kept_even_when_the_spec_would_be_refused() -> None:
    recorded = CREATED + 7 * DAY
    assert resolved_expiry(facts(expires_in="9000h", status=issued(recorded)), POLICY) == recorded


@pytest.mark.parametrize(
    "request_", [{"expires_in": "9000h"}, {"expires_at": CREATED - DAY}, {"expires_in": "soon"}]
)
def test_a_refused_expiry_resolves_to_none(request_: dict[str, Any]) -> None:
    assert resolved_expiry(facts(**request_), POLICY) is None


# -- effective_roles -----------------------------------------------------------------------


def test_without_scoped_roles_the_account_roles_apply_sorted_once() -> None:
    assert effective_roles(["write", "read", "admin", "read"], None) == [
        "admin",
        "read",
        "write",
    ]


def test_an_empty_scoped_roles_grants_no_role() -> None:
    """Set means "only these", so an empty list means none (it once meant "unset": all)."""
    assert effective_roles(["write", "read", "admin"], []) == []
    assert effective_roles(["write", "read", "admin"], ()) == []


def test_scoped_roles_narrow_to_the_intersection() -> None:
    assert effective_roles(["write", "read", "admin"], ["write", "read"]) == ["read", "write"]


def test_scoped_roles_the_account_lacks_are_dropped() -> None:
    assert effective_roles(["read"], ["read", "admin"]) == ["read"]
    assert effective_roles(["read"], ["admin"]) == []


ROLES = st.lists(st.sampled_from(["admin", "deploy", "read", "write", "audit"]), max_size=8)


@given(account_roles=ROLES, scoped=st.none() | ROLES)
def test_effective_roles_never_exceed_the_account_nor_the_scope(
    account_roles: list[str], scoped: list[str] | None
) -> None:
    result = effective_roles(account_roles, scoped)
    assert result == sorted(set(result))
    assert set(result) <= set(account_roles)
    if scoped is None:
        assert set(result) == set(account_roles)
    else:
        assert set(result) == set(account_roles) & set(scoped)


# -- statuses ------------------------------------------------------------------------------


def test_a_pending_status_says_why() -> None:
    status = pending_status(
        {},
        generation=3,
        created_at=CREATED_TEXT,
        reason=Reason.ACCOUNT_MISSING,
        message="Waiting for the account.",
        now=NOW,
    )
    assert status["state"] == "Pending"
    assert status["createdAt"] == CREATED_TEXT
    assert status["observedGeneration"] == 3
    assert ready(status) == {
        "type": "Ready",
        "status": "False",
        "reason": "AccountMissing",
        "message": "Waiting for the account.",
        "observedGeneration": 3,
        "lastTransitionTime": format_time(NOW),
    }


def test_an_active_status_records_the_issuance() -> None:
    expires = datetime.datetime(
        2027, 2, 21, 13, 30, 15, 123456, tzinfo=datetime.timezone(datetime.timedelta(hours=1))
    )
    status = active_status(
        {},
        generation=2,
        created_at=CREATED_TEXT,
        issuance=issuance(expires_at=expires, deletion_policy="Delete"),
        now=NOW,
    )
    assert status["state"] == "Active"
    assert status["createdAt"] == CREATED_TEXT
    assert status["credentialId"] == secret_format.credential_id("credential-uid")
    assert status["clientId"] == f"{ACCOUNT_NAME}@team-a.acme.iam"
    assert status["secretName"] == "ci-deploy-secret"
    assert status["secretHash"] == SECRET_HASH
    assert status["expiresAt"] == "2027-02-21T12:30:15Z"
    assert status["effectiveRoles"] == ["deploy", "read"]
    assert status["secretDeletionPolicy"] == "Delete"
    assert status["observedGeneration"] == 2
    condition = ready(status)
    assert (condition["status"], condition["reason"]) == ("True", "Issued")
    assert "'ci-deploy-secret'" in condition["message"]
    assert "2027-02-21T12:30:15Z" in condition["message"]


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (State.EXPIRED, Reason.EXPIRED),
        (State.REVOKED, Reason.REVOKED),
        (State.FAILED, Reason.LIFETIME_EXCEEDED),
        (State.FAILED, Reason.SECRET_CONFLICT),
    ],
)
def test_an_ended_status_records_the_state_and_reason(state: State, reason: Reason) -> None:
    before = active_status({}, generation=1, created_at=CREATED_TEXT, issuance=issuance(), now=NOW)
    status = ended_status(
        before,
        generation=4,
        created_at=CREATED_TEXT,
        state=state,
        reason=reason,
        message="It ended.",
        now=NOW + DAY,
    )
    assert status["state"] == str(state)
    assert status["createdAt"] == CREATED_TEXT
    assert status["observedGeneration"] == 4
    condition = ready(status)
    assert (condition["status"], condition["reason"], condition["message"]) == (
        "False",
        str(reason),
        "It ended.",
    )
    assert condition["lastTransitionTime"] == format_time(NOW + DAY)


def test_a_deleted_secret_is_reported_without_touching_the_state() -> None:
    before = active_status({}, generation=1, created_at=CREATED_TEXT, issuance=issuance(), now=NOW)
    status = secret_deleted_status(before, generation=1, now=NOW + DAY)
    assert set(status) == {"observedGeneration", "conditions"}
    condition = ready(status)
    assert (condition["status"], condition["reason"]) == ("False", "SecretDeleted")
    assert "'ci-deploy-secret'" in condition["message"]
    assert "not re-created" in condition["message"]
    assert condition["lastTransitionTime"] == format_time(NOW + DAY)


def test_an_issued_ready_status_names_the_secret_and_expiry() -> None:
    stored = active_status({}, generation=1, created_at=CREATED_TEXT, issuance=issuance(), now=NOW)
    gone = later(stored, secret_deleted_status(stored, generation=1, now=NOW + DAY))
    status = issued_ready_status(gone, generation=2, now=NOW + 2 * DAY)
    assert set(status) == {"observedGeneration", "conditions"}
    assert status["observedGeneration"] == 2
    condition = ready(status)
    assert (condition["status"], condition["reason"]) == ("True", "Issued")
    assert "'ci-deploy-secret'" in condition["message"]
    assert format_time(CREATED + DEFAULT) in condition["message"]
    assert condition["lastTransitionTime"] == format_time(NOW + 2 * DAY)


def test_the_expiry_warning_is_its_own_condition_beside_ready() -> None:
    stored = active_status({}, generation=1, created_at=CREATED_TEXT, issuance=issuance(), now=NOW)
    assert not has_condition(stored, EXPIRING_SOON)
    warned = expiring_soon(stored, generation=1, lead=7 * DAY, now=NOW + DAY)
    assert set(warned) == {"conditions"}
    warning = condition(warned, EXPIRING_SOON)
    assert (warning["status"], warning["reason"]) == ("True", "ExpiringSoon")
    assert "7d" in warning["message"]
    assert format_time(CREATED + DEFAULT) in warning["message"]
    assert ready(warned) == ready(stored)
    assert has_condition(later(stored, warned), EXPIRING_SOON)


def test_an_issuance_already_within_the_warning_lead_carries_the_warning_in_the_same_write() -> (
    None
):
    soon = issuance(expires_at=NOW + DAY)
    status, warned = issued_status(
        {}, generation=1, created_at=CREATED_TEXT, issuance=soon, warning_lead=7 * DAY, now=NOW
    )
    assert warned
    assert (ready(status)["status"], ready(status)["reason"]) == ("True", "Issued")
    warning = condition(status, EXPIRING_SOON)
    assert (warning["status"], warning["reason"]) == ("True", "ExpiringSoon")
    assert format_time(NOW + DAY) in warning["message"]
    assert status["expiresAt"] == format_time(NOW + DAY)

    far = issuance(expires_at=NOW + 30 * DAY)
    status, warned = issued_status(
        {}, generation=1, created_at=CREATED_TEXT, issuance=far, warning_lead=7 * DAY, now=NOW
    )
    assert not warned
    assert status == active_status({}, generation=1, created_at=CREATED_TEXT, issuance=far, now=NOW)
    assert not has_condition(status, EXPIRING_SOON)


def test_other_conditions_survive_a_ready_change() -> None:
    stored = active_status({}, generation=1, created_at=CREATED_TEXT, issuance=issuance(), now=NOW)
    stored = later(stored, expiring_soon(stored, generation=1, lead=7 * DAY, now=NOW))
    status = secret_deleted_status(stored, generation=1, now=NOW + DAY)
    assert [c["type"] for c in status["conditions"]] == [EXPIRING_SOON, READY]


def test_the_warning_time_is_the_lead_before_expiry() -> None:
    assert warning_time(NOW, 7 * DAY) == NOW - 7 * DAY


def test_the_transition_time_moves_only_when_ready_flips() -> None:
    t0, t1, t2, t3 = (NOW + n * datetime.timedelta(minutes=5) for n in range(4))
    status = pending_status(
        {},
        generation=1,
        created_at=CREATED_TEXT,
        reason=Reason.ACCOUNT_MISSING,
        message="Waiting for the account.",
        now=t0,
    )
    status = later(
        status,
        pending_status(
            status,
            generation=1,
            created_at=CREATED_TEXT,
            reason=Reason.LIMIT_EXCEEDED,
            message=limit_message(5),
            now=t1,
        ),
    )
    assert ready(status)["reason"] == "LimitExceeded"
    assert ready(status)["lastTransitionTime"] == format_time(t0)

    status = later(
        status,
        active_status(status, generation=1, created_at=CREATED_TEXT, issuance=issuance(), now=t2),
    )
    assert ready(status)["lastTransitionTime"] == format_time(t2)

    status = later(
        status,
        ended_status(
            status,
            generation=2,
            created_at=CREATED_TEXT,
            state=State.REVOKED,
            reason=Reason.REVOKED,
            message="Revoked.",
            now=t3,
        ),
    )
    assert ready(status)["lastTransitionTime"] == format_time(t3)
    assert ready(status)["observedGeneration"] == 2


def test_no_status_ever_holds_the_client_secret() -> None:
    # A made-up secret in the real format, from fixed bytes: the builders see only its hash.
    secret = secret_format.generate(
        secret_format.credential_id("credential-uid"), lambda n: bytes(range(n))
    )
    hashed = secret_format.secret_hash(secret)
    assert {f.name for f in dataclasses.fields(Issuance)} >= {"secret_hash"}
    assert "secret" not in {f.name for f in dataclasses.fields(Issuance)}
    common: dict[str, Any] = {"generation": 1, "now": NOW}
    active = active_status(
        {}, created_at=CREATED_TEXT, issuance=issuance(secret_hash=hashed), **common
    )
    statuses = [
        active,
        pending_status(
            {}, created_at=CREATED_TEXT, reason=Reason.LIMIT_EXCEEDED, message="wait", **common
        ),
        secret_deleted_status(active, **common),
        issued_ready_status(active, **common),
        expiring_soon(active, lead=7 * DAY, **common),
        ended_status(
            active,
            created_at=CREATED_TEXT,
            state=State.EXPIRED,
            reason=Reason.EXPIRED,
            message="Expired.",
            **common,
        ),
    ]
    assert active["secretHash"] == hashed
    assert hashed.startswith("sha256:")
    for status in statuses:
        text = repr(status)
        assert secret not in text
        assert SECRET_LOOKALIKE.search(text) is None


# -- limit_message -------------------------------------------------------------------------


def test_the_limit_message_names_the_limit_and_the_order() -> None:
    message = limit_message(5)
    assert "5 Active credentials" in message
    assert "limit of 5" in message
    assert "oldest first" in message
    assert "queue" not in message  # a position would go stale


# -- CredentialView ------------------------------------------------------------------------


def view(state: str | None, *, revoked: bool, issued: bool) -> CredentialView:
    return CredentialView(
        namespace="team-a",
        name="ci-deploy",
        uid="credential-uid",
        account=ACCOUNT_NAME,
        created_at=CREATED_TEXT,
        state=state,
        revoked=revoked,
        issued=issued,
        expires_at=None,
    )


@pytest.mark.parametrize(
    ("state", "revoked", "issued_", "ended", "waiting"),
    [
        (None, False, False, False, True),
        ("Pending", False, False, False, True),
        ("Pending", True, False, True, False),
        (None, True, False, True, False),
        ("Active", False, True, False, False),
        ("Active", True, True, True, False),
        ("Pending", False, True, False, False),
        ("Expired", False, False, True, False),
        ("Expired", False, True, True, False),
        ("Revoked", True, True, True, False),
        ("Revoked", False, False, True, False),
        ("Failed", False, False, True, False),
    ],
)
def test_a_view_is_ended_or_waiting_as_the_table_says(
    state: str | None, revoked: bool, issued_: bool, ended: bool, waiting: bool
) -> None:
    subject = view(state, revoked=revoked, issued=issued_)
    assert (subject.ended, subject.waiting) == (ended, waiting)


# -- properties ----------------------------------------------------------------------------

SECONDS_IN_MAXIMUM = int(MAXIMUM.total_seconds())


@dataclasses.dataclass(frozen=True)
class Request:
    """A lifetime request and what it resolves to under POLICY (an expiry, or a refusal)."""

    expires_at: datetime.datetime | None
    expires_in: str | None
    outcome: datetime.datetime | Reason


def _requests() -> st.SearchStrategy[Request]:
    seconds = st.integers(min_value=1, max_value=SECONDS_IN_MAXIMUM)
    over = st.integers(min_value=SECONDS_IN_MAXIMUM + 1, max_value=3 * SECONDS_IN_MAXIMUM)
    delta = datetime.timedelta
    granted = st.one_of(
        st.just(Request(None, None, CREATED + DEFAULT)),
        seconds.map(lambda s: Request(None, f"{s}s", CREATED + delta(seconds=s))),
        seconds.map(
            lambda s: Request(CREATED + delta(seconds=s), None, CREATED + delta(seconds=s))
        ),
    )
    refused = st.one_of(
        over.map(lambda s: Request(None, f"{s}s", Reason.LIFETIME_EXCEEDED)),
        over.map(lambda s: Request(CREATED + delta(seconds=s), None, Reason.LIFETIME_EXCEEDED)),
        st.integers(min_value=0, max_value=SECONDS_IN_MAXIMUM).map(
            lambda s: Request(CREATED - delta(seconds=s), None, Reason.INVALID_EXPIRY)
        ),
    )
    # Granted three times as often as refused: a refusal ends the chain early.
    return st.sampled_from([granted, granted, granted, refused]).flatmap(lambda chosen: chosen)


REQUESTS = _requests()
ACCOUNTS = st.one_of(
    st.none(),
    st.builds(account, disabled=st.booleans(), holds_slot=st.booleans()),
)
# Mostly within the first year, so the later links of the chain are reached often.
MOMENTS = st.integers(min_value=0, max_value=SECONDS_IN_MAXIMUM + 86400).map(
    lambda s: CREATED + datetime.timedelta(seconds=s)
)
# Revocation settles almost everything; drawn less often so the rest of the chain is explored.
REVOKED = st.sampled_from([False, False, False, True])


@given(
    state=st.sampled_from(TERMINAL_STATES),
    revoked=st.booleans(),
    request_=REQUESTS,
    owner=ACCOUNTS,
    is_issued=st.booleans(),
    now=MOMENTS,
)
def test_a_terminal_state_is_never_left(
    state: State,
    revoked: bool,
    request_: Request,
    owner: Account | None,
    is_issued: bool,
    now: datetime.datetime,
) -> None:
    status = {**(issued() if is_issued else {}), "state": str(state)}
    subject = facts(
        revoked=revoked,
        expires_at=request_.expires_at,
        expires_in=request_.expires_in,
        status=status,
        account_=owner,
        now=now,
    )
    assert decide(subject, POLICY) == Settled()


def expected_step_type(
    *,
    revoked: bool,
    request_: Request,
    owner: Account | None,
    is_issued: bool,
    now: datetime.datetime,
) -> tuple[type[Step], State | Reason | None]:
    """The priority order, written out: revoked, refused lifetime, expired, issued, account."""
    if revoked:
        return End, State.REVOKED
    if isinstance(request_.outcome, Reason):
        return Fail, request_.outcome
    if request_.outcome <= now:
        return End, State.EXPIRED
    if is_issued:
        return KeepActive, None
    if owner is None:
        return Wait, Reason.ACCOUNT_MISSING
    if owner.holds_slot:
        return Issue, None
    if owner.disabled:
        return Wait, Reason.ACCOUNT_DISABLED
    return Admit, None


def _detail(step: Step) -> State | Reason | None:
    if isinstance(step, End):
        return step.state
    if isinstance(step, Fail | Wait):
        return step.reason
    return None


@given(
    state=st.sampled_from([None, State.PENDING, State.ACTIVE]),
    revoked=REVOKED,
    request_=REQUESTS,
    owner=ACCOUNTS,
    is_issued=st.booleans(),
    now=MOMENTS,
)
def test_the_step_follows_the_priority_order(
    state: State | None,
    revoked: bool,
    request_: Request,
    owner: Account | None,
    is_issued: bool,
    now: datetime.datetime,
) -> None:
    # Only a lifetime granted under this policy can have been issued.
    is_issued = is_issued and isinstance(request_.outcome, datetime.datetime)
    status: dict[str, Any] = {}
    if is_issued:
        assert isinstance(request_.outcome, datetime.datetime)
        status = issued(request_.outcome)
    if state is not None:
        status["state"] = str(state)
    subject = facts(
        revoked=revoked,
        expires_at=request_.expires_at,
        expires_in=request_.expires_in,
        status=status,
        account_=owner,
        now=now,
    )
    step = decide(subject, POLICY)

    if revoked:
        assert isinstance(step, End)
        assert step.state == State.REVOKED
    if is_issued:
        assert not isinstance(step, Admit | Issue)
    assert not isinstance(step, Settled)
    expected = expected_step_type(
        revoked=revoked, request_=request_, owner=owner, is_issued=is_issued, now=now
    )
    assert (type(step), _detail(step)) == expected
    if isinstance(step, Issue | KeepActive):
        assert step.expires_at == request_.outcome


def test_a_refused_secret_is_explained_by_name_status_and_retry() -> None:
    message = secret_refused_message("ci-deploy-secret", "HTTP 403 Forbidden", 10.0)
    assert "'ci-deploy-secret'" in message
    assert "HTTP 403 Forbidden" in message
    assert "ResourceQuota" in message
    assert "every 10s" in message
    assert "nothing was issued" in message


def test_the_display_name_is_the_spec_s_or_else_the_object_s_name() -> None:
    assert display_name({"displayName": "Nightly CI"}, "ci") == "Nightly CI"
    assert display_name({}, "ci") == "ci"


# -- an account replaced under its name (issue 15, item 3) ---------------------------------


def test_an_issued_credential_of_a_replaced_account_ends_as_account_replaced() -> None:
    step = decide(facts(status={**issued(), "accountUid": "earlier-account"}), POLICY)
    assert isinstance(step, End)
    assert (step.state, step.reason) == (State.REVOKED, Reason.ACCOUNT_REPLACED)
    assert repr(ACCOUNT_NAME) in step.message


def test_a_credential_of_the_same_account_or_issued_before_uids_were_recorded_stays() -> None:
    assert isinstance(
        decide(facts(status={**issued(), "accountUid": "account-uid"}), POLICY), KeepActive
    )
    assert isinstance(decide(facts(status=issued()), POLICY), KeepActive)
    # Without the account at hand (a start-up resume), nothing is concluded.
    unread = facts(status={**issued(), "accountUid": "earlier-account"}, account_=None)
    assert isinstance(decide(unread, POLICY), KeepActive)


def test_revocation_still_wins_over_a_replaced_account() -> None:
    step = decide(facts(revoked=True, status={**issued(), "accountUid": "other"}), POLICY)
    assert isinstance(step, End)
    assert step.reason == Reason.REVOKED


@given(st.sampled_from([None, "", "a", "b"]), st.sampled_from([None, "", "a", "b"]))
def test_only_two_known_and_different_uids_mean_replaced(
    recorded: str | None, current: str | None
) -> None:
    replaced = issued_for_another_account(recorded, current)
    assert replaced == (bool(recorded) and bool(current) and recorded != current)


def test_a_view_counts_as_issued_for_another_account_only_while_active() -> None:
    view = CredentialView(
        namespace="team-a",
        name="old",
        uid="u",
        account=ACCOUNT_NAME,
        created_at="",
        state="Active",
        revoked=False,
        issued=True,
        expires_at=None,
        account_uid="earlier",
    )
    assert view.issued_for_another("now")
    assert not view.issued_for_another("earlier")
    assert not dataclasses.replace(view, state="Revoked").issued_for_another("now")
    assert not dataclasses.replace(view, issued=False).issued_for_another("now")


def test_issuance_records_the_secret_and_account_uids() -> None:
    status = active_status({}, generation=1, created_at="x", issuance=issuance(), now=NOW)
    assert (status["secretUid"], status["accountUid"]) == ("secret-uid", "account-uid")


def test_a_replaced_secret_is_reported_and_the_credential_stays_active() -> None:
    status = secret_replaced_status(issued(), generation=1, now=NOW)
    assert ready(status)["reason"] == Reason.SECRET_REPLACED
    assert ready(status)["status"] == "False"
    assert "'ci-deploy'" in ready(status)["message"]
    assert "state" not in status
