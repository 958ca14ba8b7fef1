"""The ServiceAccount status rules, without a cluster."""

from __future__ import annotations

import datetime

from hypothesis import given
from hypothesis import strategies as st

from kubeiam.domain.accounts import AccountFacts, client_id, desired_status, state_change

NOW = datetime.datetime(2026, 11, 23, 12, 0, tzinfo=datetime.UTC)
LATER = NOW + datetime.timedelta(hours=1)
NAMES = st.from_regex(r"[a-z]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)


def facts(*, disabled: bool = False, status: dict[str, object] | None = None, generation: int = 1):
    return AccountFacts(
        name="pipeline-prod",
        namespace="team-a",
        generation=generation,
        disabled=disabled,
        created_at="2026-11-23T11:00:00Z",
        current_status=status or {},
    )


def ready(status: dict[str, object]) -> dict[str, object]:
    conditions = status["conditions"]
    assert isinstance(conditions, list)
    return next(c for c in conditions if c["type"] == "Ready")


def test_a_new_account_is_active_and_ready_with_its_client_id() -> None:
    status = desired_status(facts(), organization="acme", now=NOW)
    assert status["clientId"] == "pipeline-prod@team-a.acme.iam"
    assert status["state"] == "Active"
    assert status["createdAt"] == "2026-11-23T11:00:00Z"
    assert "activeCredentialCount" not in status  # the admission ledger's, not ours
    assert status["observedGeneration"] == 1
    condition = ready(status)
    assert (condition["status"], condition["reason"]) == ("True", "Active")
    assert condition["lastTransitionTime"] == "2026-11-23T12:00:00Z"
    assert condition["observedGeneration"] == 1


def test_a_disabled_account_is_not_ready_and_says_why() -> None:
    status = desired_status(facts(disabled=True), organization="acme", now=NOW)
    condition = ready(status)
    assert status["state"] == "Disabled"
    assert (condition["status"], condition["reason"]) == ("False", "Disabled")
    assert "spec.disabled" in condition["message"]


def test_a_settled_account_needs_no_change() -> None:
    first = desired_status(facts(), organization="acme", now=NOW)
    again = desired_status(facts(status=first), organization="acme", now=LATER)
    assert again == first


def test_the_transition_time_moves_only_when_the_status_flips() -> None:
    active = desired_status(facts(), organization="acme", now=NOW)
    disabled = desired_status(
        facts(disabled=True, status=active, generation=2), organization="acme", now=LATER
    )
    assert ready(disabled)["lastTransitionTime"] == "2026-11-23T13:00:00Z"
    assert ready(disabled)["observedGeneration"] == 2
    assert disabled["observedGeneration"] == 2


def test_the_client_id_never_changes_once_issued() -> None:
    first = desired_status(facts(), organization="acme", now=NOW)
    renamed_org = desired_status(facts(status=first), organization="globex", now=LATER)
    assert renamed_org["clientId"] == "pipeline-prod@team-a.acme.iam"


def test_a_state_change_is_reported_once() -> None:
    first = desired_status(facts(), organization="acme", now=NOW)
    assert state_change({}, first) == "Active"
    assert state_change(first, first) is None
    disabled = desired_status(facts(disabled=True, status=first), organization="acme", now=NOW)
    assert state_change(first, disabled) == "Disabled"


@given(name=NAMES, namespace=NAMES, organization=NAMES)
def test_client_ids_are_distinct_per_account(name: str, namespace: str, organization: str) -> None:
    identifier = client_id(name, namespace, organization)
    assert identifier == f"{name}@{namespace}.{organization}.iam"
    assert identifier != client_id(name + "x", namespace, organization)
    assert identifier != client_id(name, namespace + "x", organization)


@given(disabled_flags=st.lists(st.booleans(), min_size=1, max_size=10))
def test_status_is_a_function_of_the_last_spec_only(disabled_flags: list[bool]) -> None:
    """Whatever history led here, the status converges to what the latest spec says."""
    status: dict[str, object] = {}
    for generation, disabled in enumerate(disabled_flags, start=1):
        status = desired_status(
            facts(disabled=disabled, status=status, generation=generation),
            organization="acme",
            now=NOW,
        )
    fresh = desired_status(
        facts(disabled=disabled_flags[-1], generation=len(disabled_flags)),
        organization="acme",
        now=NOW,
    )
    assert status == fresh
