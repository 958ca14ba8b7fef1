"""The admission rules, without a cluster: each rule's refusal, its field and its message."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
from kubeiam.domain.credentials import effective_roles

ALICE = Requester("alice", groups=("system:authenticated",))
BOB = Requester("bob", groups=("team-b", "system:authenticated"))
ACCOUNT = AccountFacts("pipeline", owners=(Owner("User", "alice"), Owner("Group", "team-a")))
CATALOGUE = Policy(role_catalogue=frozenset({"compute.deployer", "storage.reader"}))


def _stamps(operation: Operation, requester: Requester) -> dict[str, str | None]:
    """The created-by annotation as the mutating webhook leaves it."""
    if operation == Operation.CREATE:
        return {"new_creator": requester.username}
    return {"new_creator": "alice", "old_creator": "alice"}


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
        **_stamps(operation, requester),
    )


def account(
    operation: Operation = Operation.CREATE,
    new: dict[str, Any] | None = None,
    old: dict[str, Any] | None = None,
    requester: Requester = ALICE,
) -> Request:
    base = {
        "displayName": "Pipeline",
        "scope": "organization",
        "owners": [{"kind": "User", "name": "alice"}, {"kind": "Group", "name": "team-a"}],
    }
    return Request(
        Kind.ACCOUNT,
        operation,
        "team-a",
        "pipeline",
        requester,
        new_spec=None if operation == Operation.DELETE else {**base, **(new or {})},
        old_spec=None if operation == Operation.CREATE else {**base, **(old or {})},
        **_stamps(operation, requester),
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


ACCOUNT_ROLES = ("compute.deployer", "storage.reader", "storage.admin")


def test_an_empty_scoped_roles_grants_nothing_and_needs_no_bind() -> None:
    assert rules.granted_roles(credential(new={"scopedRoles": []}), ACCOUNT_ROLES) == ()
    narrowed = credential(Operation.UPDATE, new={"scopedRoles": []}, old={})
    assert rules.granted_roles(narrowed, ACCOUNT_ROLES) == ()


@pytest.mark.parametrize(
    ("old", "new", "granted"),
    [
        (["compute.deployer"], None, ("storage.reader", "storage.admin")),
        ([], None, ACCOUNT_ROLES),
        (None, [], ()),
        (None, ["compute.deployer"], ()),
        ([], ["storage.reader"], ("storage.reader",)),
        (None, ["not.held"], ("not.held",)),
    ],
    ids=["removed", "removed from empty", "emptied", "narrowed", "widened", "unheld named"],
)
def test_an_update_needs_bind_on_what_its_effective_grant_adds(
    old: list[str] | None, new: list[str] | None, granted: tuple[str, ...]
) -> None:
    request = credential(
        Operation.UPDATE,
        new={} if new is None else {"scopedRoles": new},
        old={} if old is None else {"scopedRoles": old},
    )
    assert rules.granted_roles(request, ACCOUNT_ROLES) == granted


SLUGS = st.lists(st.sampled_from(["a.read", "a.write", "b.admin", "c.audit"]), max_size=4)


@given(account_roles=SLUGS, old=st.none() | SLUGS, new=st.none() | SLUGS)
def test_whatever_an_update_adds_to_the_effective_grant_needs_bind(
    account_roles: list[str], old: list[str] | None, new: list[str] | None
) -> None:
    """No update of scopedRoles widens the roles tokens carry without `bind` on each."""
    request = credential(
        Operation.UPDATE,
        new={} if new is None else {"scopedRoles": new},
        old={} if old is None else {"scopedRoles": old},
    )
    added = set(effective_roles(account_roles, new)) - set(effective_roles(account_roles, old))
    assert added <= set(rules.granted_roles(request, account_roles))


def test_removing_scoped_roles_is_refused_on_the_field_itself() -> None:
    request = credential(Operation.UPDATE, new={}, old={"scopedRoles": ["compute.deployer"]})
    refusal = rules.scope_down_refusal(request, {"storage.reader": True}, ACCOUNT_ROLES)
    assert refusal is not None
    assert refusal.field == "spec.scopedRoles"
    assert "granting 'storage.admin' needs the RBAC verb 'bind'" in refusal.message
    assert "unset spec.scopedRoles means all of the account's roles" in refusal.message
    assert (
        rules.scope_down_refusal(
            request, {"storage.reader": True, "storage.admin": True}, ACCOUNT_ROLES
        )
        is None
    )


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


def test_creating_an_account_answers_to_rbac_not_to_owners() -> None:
    assert not rules.needs_owner(account())
    assert rules.owner_refusal(account(requester=BOB), None, may_manage=False) is None


@pytest.mark.parametrize("operation", [Operation.UPDATE, Operation.DELETE])
def test_changing_or_deleting_an_account_needs_one_of_its_owners(operation: Operation) -> None:
    request = account(operation, new={"displayName": "x"}, requester=BOB)
    assert rules.needs_owner(request)
    refusal = rules.decide(request, None, may_manage=False, may_bind={})
    assert refusal is not None
    assert refusal.rule == Rule.OWNERS
    verb = "change" if operation == Operation.UPDATE else "delete"
    assert refusal.message.startswith(
        f"bob may not {verb} ServiceAccount 'pipeline': only its owners (User alice,"
        " Group team-a) or whoever holds the RBAC verb 'manage' on"
    )
    assert rules.decide(request, None, may_manage=True, may_bind={}) is None
    owner = account(operation, new={"displayName": "x"}, requester=ALICE)
    assert rules.decide(owner, None, may_manage=False, may_bind={}) is None


def test_nobody_makes_themselves_an_owner() -> None:
    """The owners judged are the account's before the change, not the ones it asks for."""
    erin = Requester("erin")
    request = account(
        Operation.UPDATE,
        new={"owners": [{"kind": "User", "name": "alice"}, {"kind": "User", "name": "erin"}]},
        requester=erin,
    )
    refusal = rules.decide(request, None, may_manage=False, may_bind={})
    assert refusal is not None
    assert refusal.rule == Rule.OWNERS


def test_a_metadata_only_update_of_an_account_needs_no_owner() -> None:
    assert not rules.needs_owner(account(Operation.UPDATE, requester=BOB))


def test_owners_are_not_listed_to_who_may_not_read_the_account() -> None:
    refusal = rules.owner_refusal(
        credential(requester=BOB), ACCOUNT, may_manage=False, show_owners=False
    )
    assert refusal is not None
    assert "alice" not in refusal.message
    assert "team-a'" in refusal.message  # the namespace, not the group
    assert "only its owners or whoever holds the RBAC verb 'manage'" in refusal.message


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
    assert planned == rules.Checks(account="pipeline")
    assert rules.checks(credential(Operation.UPDATE), CATALOGUE) == rules.Checks()
    # An account's own owners come with the request: nothing to read.
    assert rules.checks(account(Operation.UPDATE, new={"displayName": "x"}), CATALOGUE) == (
        rules.Checks()
    )
    refused = rules.checks(account(new={"roles": ["nope.role"]}), CATALOGUE)
    assert isinstance(refused, rules.Refusal)
    assert refused.rule == Rule.ROLE_CATALOGUE


def test_scoped_roles_the_account_lacks_give_a_warning() -> None:
    request = credential(new={"scopedRoles": ["compute.deployer", "storage.reader"]})
    (warning,) = rules.role_warnings(request, ["compute.deployer"])
    assert "does not hold 'storage.reader'" in warning


# -- createdBy -----------------------------------------------------------------------------------


def test_the_creator_is_stamped_when_the_manifest_leaves_it_out() -> None:
    assert rules.stamped_annotation(Operation.CREATE, ALICE, None, None) == (True, "alice")
    # A value the manifest gives is left for the validating webhook to judge, not rewritten.
    forged = {rules.CREATED_BY_ANNOTATION: "mallory"}
    assert rules.stamped_annotation(Operation.CREATE, ALICE, forged, None) == (False, None)


def test_a_dropped_stamp_is_put_back() -> None:
    old = {rules.CREATED_BY_ANNOTATION: "alice"}
    assert rules.stamped_annotation(Operation.UPDATE, BOB, {}, old) == (True, "alice")
    assert rules.stamped_annotation(Operation.UPDATE, BOB, old, old) == (False, None)
    forged = {rules.CREATED_BY_ANNOTATION: "bob"}
    assert rules.stamped_annotation(Operation.UPDATE, BOB, forged, old) == (False, None)


def creator_request(
    operation: Operation, requester: Requester, new: str | None, old: str | None = None
) -> Request:
    return dataclasses.replace(credential(operation, requester), new_creator=new, old_creator=old)


def test_a_forged_creator_is_refused() -> None:
    refusal = rules.creator_refusal(creator_request(Operation.CREATE, ALICE, "bob"))
    assert refusal is not None
    assert str(refusal) == (
        "metadata.annotations[iam.kubeiam.io/created-by]: kube-iam records here who created the"
        " object; alice may not set it to 'bob': leave it out, kube-iam writes it"
        " (rule: created-by)"
    )
    assert rules.creator_refusal(creator_request(Operation.CREATE, ALICE, "alice")) is None
    # Only the admission stamp could have been missing; the mutating webhook adds it.
    assert rules.creator_refusal(creator_request(Operation.CREATE, ALICE, None)) is not None


def test_a_recorded_creator_cannot_be_changed_or_removed() -> None:
    changed = rules.creator_refusal(creator_request(Operation.UPDATE, BOB, "bob", "alice"))
    assert changed is not None
    assert "bob may not change it from 'alice' to 'bob'" in changed.message
    # Not even to the requester's own name.
    assert rules.creator_refusal(creator_request(Operation.UPDATE, ALICE, "alice", "bob"))
    assert rules.creator_refusal(creator_request(Operation.UPDATE, BOB, None, "alice"))
    assert rules.creator_refusal(creator_request(Operation.UPDATE, BOB, "alice", "alice")) is None
    # An object created before the webhook existed is not given a creator afterwards.
    assert rules.creator_refusal(creator_request(Operation.UPDATE, BOB, "bob", None))
    assert rules.creator_refusal(creator_request(Operation.UPDATE, BOB, None, None)) is None
    assert rules.creator_refusal(creator_request(Operation.DELETE, BOB, None, "alice")) is None


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
