"""The admission rules, without a cluster: each rule's refusal, its field and its message."""

from __future__ import annotations

from typing import Any

import pytest

from kubeiam.domain import admission as rules
from kubeiam.domain.admission import (
    AccountFacts,
    Kind,
    Operation,
    Owner,
    Policy,
    Request,
    Requester,
    Rule,
)

ALICE = Requester("alice", groups=("system:authenticated",))
BOB = Requester("bob", groups=("team-b", "system:authenticated"))
ACCOUNT = AccountFacts("pipeline", owners=(Owner("User", "alice"), Owner("Group", "team-a")))
CATALOGUE = Policy(role_catalogue=frozenset({"compute.deployer", "storage.reader"}))


def credential(
    operation: Operation = Operation.CREATE,
    requester: Requester = ALICE,
    new: dict[str, Any] | None = None,
    old: dict[str, Any] | None = None,
) -> Request:
    base = {"serviceAccountName": "pipeline", "displayName": "CI"}
    return Request(
        Kind.CREDENTIAL,
        operation,
        "team-a",
        "ci",
        requester,
        new_spec=None if operation == Operation.DELETE else {**base, **(new or {})},
        old_spec=None if operation == Operation.CREATE else {**base, **(old or {})},
    )


def account(
    operation: Operation = Operation.CREATE,
    new: dict[str, Any] | None = None,
    old: dict[str, Any] | None = None,
) -> Request:
    base = {"displayName": "Pipeline", "scope": "organization"}
    return Request(
        Kind.ACCOUNT,
        operation,
        "team-a",
        "pipeline",
        ALICE,
        new_spec={**base, **(new or {})},
        old_spec=None if operation == Operation.CREATE else {**base, **(old or {})},
    )


# -- role-catalogue ------------------------------------------------------------------------------


def test_an_unknown_role_is_refused_with_its_index_and_the_closest_known_one() -> None:
    request = account(new={"roles": ["storage.reader", "compute.deployr"]})
    refusal = rules.catalogue_refusal(request, CATALOGUE)
    assert refusal is not None
    assert refusal.rule == Rule.ROLE_CATALOGUE
    assert refusal.field == "spec.roles[1]"
    assert "'compute.deployr' is not in the organisation's role catalogue" in str(refusal)
    assert "did you mean 'compute.deployer'" in str(refusal)
    assert str(refusal).endswith("(rule: role-catalogue)")


def test_scoped_roles_of_credentials_are_checked_against_the_catalogue() -> None:
    refusal = rules.catalogue_refusal(credential(new={"scopedRoles": ["admin.all"]}), CATALOGUE)
    assert refusal is not None
    assert refusal.field == "spec.scopedRoles[0]"


def test_an_empty_catalogue_is_not_enforced() -> None:
    assert rules.catalogue_refusal(account(new={"roles": ["any.role"]}), Policy()) is None


def test_a_role_kept_from_before_is_not_checked_again() -> None:
    """A catalogue that shrank must not block an unrelated edit of an old account."""
    request = account(
        Operation.UPDATE,
        new={"roles": ["retired.role"], "displayName": "New name"},
        old={"roles": ["retired.role"]},
    )
    assert rules.catalogue_refusal(request, CATALOGUE) is None
    assert rules.granted_roles(request) == ()


# -- allowed-scopes ------------------------------------------------------------------------------


def test_a_scope_policy_does_not_allow_is_refused() -> None:
    policy = Policy(allowed_scopes=frozenset({"project"}))
    refusal = rules.scope_refusal(account(), policy)
    assert refusal is not None
    assert refusal.field == "spec.scope"
    assert "scope 'organization' is not allowed by organisation policy (allowed: project)" in str(
        refusal
    )


def test_an_unchanged_scope_is_not_judged_again() -> None:
    policy = Policy(allowed_scopes=frozenset({"project"}))
    assert rules.scope_refusal(account(Operation.UPDATE), policy) is None


# -- scope-down ----------------------------------------------------------------------------------


def test_granting_a_role_one_may_not_bind_is_refused_naming_the_verb_and_resource() -> None:
    request = account(new={"roles": ["compute.deployer", "storage.reader"]})
    refusal = rules.scope_down_refusal(request, {"compute.deployer": True, "storage.reader": False})
    assert refusal is not None
    assert refusal.rule == Rule.SCOPE_DOWN
    assert refusal.field == "spec.roles[1]"
    assert "alice may grant only roles they hold" in refusal.message
    assert "'storage.reader'" in refusal.message
    assert "'compute.deployer'" not in refusal.message
    assert "'bind' on roles.iam.kubeiam.io" in refusal.message


def test_removing_a_role_needs_no_bind() -> None:
    request = account(Operation.UPDATE, new={"roles": []}, old={"roles": ["storage.reader"]})
    assert rules.scope_down_refusal(request, {}) is None


def test_only_added_scoped_roles_need_bind() -> None:
    request = credential(
        Operation.UPDATE,
        new={"scopedRoles": ["compute.deployer", "storage.reader"]},
        old={"scopedRoles": ["compute.deployer"]},
    )
    assert rules.granted_roles(request) == ("storage.reader",)


# -- owners --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "requester",
    [ALICE, Requester("dave", groups=("team-a",))],
    ids=["a User owner", "a member of a Group owner"],
)
def test_owners_may_create_credentials(requester: Requester) -> None:
    assert rules.owner_refusal(credential(requester=requester), ACCOUNT, may_manage=False) is None


def test_someone_else_is_refused_with_who_may() -> None:
    refusal = rules.owner_refusal(credential(requester=BOB), ACCOUNT, may_manage=False)
    assert refusal is not None
    assert refusal.rule == Rule.OWNERS
    assert refusal.field == "spec.serviceAccountName"
    assert refusal.message == (
        "bob may not create credentials of ServiceAccount 'pipeline': only its owners"
        " (User alice, Group team-a) or whoever holds the RBAC verb 'manage' on"
        " serviceaccounts.iam.kubeiam.io 'pipeline' in namespace 'team-a' may"
    )


def test_holding_manage_is_as_good_as_being_an_owner() -> None:
    assert rules.owner_refusal(credential(requester=BOB), ACCOUNT, may_manage=True) is None


@pytest.mark.parametrize("operation", [Operation.UPDATE, Operation.DELETE])
def test_changing_or_deleting_needs_an_owner_too(operation: Operation) -> None:
    request = credential(operation, requester=BOB, new={"revoked": True})
    refusal = rules.owner_refusal(request, ACCOUNT, may_manage=False)
    assert refusal is not None
    verb = "change" if operation == Operation.UPDATE else "delete"
    assert f"bob may not {verb} credentials" in refusal.message


def test_a_metadata_only_update_needs_no_owner() -> None:
    """Labels, finalizers and the owner reference are not the credential's spec."""
    request = credential(Operation.UPDATE, requester=BOB)
    assert not rules.needs_owner(request)
    assert rules.owner_refusal(request, ACCOUNT, may_manage=False) is None


def test_what_is_left_of_a_deleted_account_may_be_deleted() -> None:
    request = credential(Operation.DELETE, requester=BOB)
    assert rules.owner_refusal(request, None, may_manage=False) is None
    changed = credential(Operation.UPDATE, requester=BOB, new={"revoked": True})
    assert rules.owner_refusal(changed, None, may_manage=False) is not None


def test_accounts_answer_to_rbac_not_to_owners() -> None:
    assert not rules.needs_owner(account(Operation.UPDATE, new={"displayName": "x"}))


# -- account-exists ------------------------------------------------------------------------------


def test_a_missing_account_is_refused_at_once() -> None:
    refusal = rules.account_refusal(credential(), None)
    assert refusal is not None
    assert refusal.rule == Rule.ACCOUNT_EXISTS
    assert str(refusal) == (
        "spec.serviceAccountName: ServiceAccount 'pipeline' does not exist in namespace"
        " 'team-a'; create the account first (rule: account-exists)"
    )


def test_an_account_being_deleted_takes_no_new_credentials() -> None:
    deleting = AccountFacts("pipeline", owners=ACCOUNT.owners, deleting=True)
    refusal = rules.account_refusal(credential(), deleting)
    assert refusal is not None
    assert "is being deleted" in refusal.message


def test_decide_reports_the_account_before_ownership_and_roles() -> None:
    request = credential(requester=BOB, new={"scopedRoles": ["compute.deployer"]})
    refusal = rules.decide(request, None, may_manage=False, may_bind={})
    assert refusal is not None
    assert refusal.rule == Rule.ACCOUNT_EXISTS
    refusal = rules.decide(request, ACCOUNT, may_manage=False, may_bind={})
    assert refusal is not None
    assert refusal.rule == Rule.OWNERS
    refusal = rules.decide(request, ACCOUNT, may_manage=True, may_bind={})
    assert refusal is not None
    assert refusal.rule == Rule.SCOPE_DOWN
    assert (
        rules.decide(request, ACCOUNT, may_manage=True, may_bind={"compute.deployer": True}) is None
    )


def test_checks_plan_the_lookups_only_where_needed() -> None:
    planned = rules.checks(credential(new={"scopedRoles": ["compute.deployer"]}), CATALOGUE)
    assert planned == rules.Checks(account="pipeline", bind_roles=("compute.deployer",))
    assert rules.checks(credential(Operation.UPDATE), CATALOGUE) == rules.Checks()
    refused = rules.checks(account(new={"roles": ["nope.role"]}), CATALOGUE)
    assert isinstance(refused, rules.Refusal)
    assert refused.rule == Rule.ROLE_CATALOGUE


def test_scoped_roles_the_account_lacks_give_a_warning() -> None:
    request = credential(new={"scopedRoles": ["compute.deployer", "storage.reader"]})
    (warning,) = rules.role_warnings(request, ["compute.deployer"])
    assert "does not hold 'storage.reader'" in warning


# -- createdBy -----------------------------------------------------------------------------------


def test_the_creator_is_stamped_whatever_the_manifest_says() -> None:
    forged = {rules.CREATED_BY_ANNOTATION: "mallory"}
    assert rules.stamped_annotation(Operation.CREATE, ALICE, forged, None) == (True, "alice")
    assert rules.stamped_annotation(Operation.CREATE, ALICE, None, None) == (True, "alice")


def test_the_stamp_cannot_be_changed_or_dropped_later() -> None:
    old = {rules.CREATED_BY_ANNOTATION: "alice"}
    assert rules.stamped_annotation(Operation.UPDATE, BOB, {}, old) == (True, "alice")
    forged = {rules.CREATED_BY_ANNOTATION: "bob"}
    assert rules.stamped_annotation(Operation.UPDATE, BOB, forged, old) == (True, "alice")
    assert rules.stamped_annotation(Operation.UPDATE, BOB, old, old) == (False, "alice")
    # An object created before the webhook existed cannot be given a creator afterwards.
    assert rules.stamped_annotation(Operation.UPDATE, BOB, forged, {}) == (True, None)


def test_created_by_is_recorded_once() -> None:
    stamp = {rules.CREATED_BY_ANNOTATION: "alice"}
    assert rules.with_created_by({"state": "Active"}, stamp, {}) == {
        "state": "Active",
        "createdBy": "alice",
    }
    assert rules.with_created_by({}, stamp, {"createdBy": "carol"}) == {}
    assert rules.with_created_by({}, None, {}) == {}


def test_the_requester_is_read_from_the_admission_userinfo() -> None:
    requester = Requester.from_userinfo(
        {"username": "alice", "uid": "u1", "groups": ["g"], "extra": {"scopes": ["a", "b"]}}
    )
    assert requester == Requester("alice", "u1", ("g",), (("scopes", ("a", "b")),))
