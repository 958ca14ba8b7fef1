"""The ServiceAccount kind: a machine identity with a scope, roles and owners."""

from __future__ import annotations

import datetime
from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import ConfigDict, Field, StringConstraints

from kubeiam.api.common import (
    ACCOUNT_NAME_RULE,
    AGE_COLUMN,
    READY_COLUMN,
    ApiModel,
    Description,
    DisplayName,
    KubeSchema,
    ObjectName,
    ObjectStatus,
    PrinterColumn,
    Resource,
    ResourceNames,
    RoleList,
    Rule,
    rules_extra,
)


class Scope(StrEnum):
    """Where an account may act."""

    ORGANIZATION = "organization"
    PROJECT = "project"


class AccountState(StrEnum):
    """Whether tokens may be issued for an account."""

    ACTIVE = "Active"
    DISABLED = "Disabled"


class Owner(ApiModel):
    """A user or group that may manage the account's credentials and trusts."""

    kind: Literal["User", "Group"] = Field(
        description="Whether name is a User or a Group, as the API server authenticates them."
    )
    name: ObjectName = Field(
        description=(
            "The user name or group name exactly as the API server sees it, such as"
            " alice@example.com or team-a-admins; 1 to 253 characters."
        )
    )


class ServiceAccountSpec(ApiModel):
    """What the account is, where it acts and what it may do."""

    model_config = ConfigDict(
        json_schema_extra=rules_extra(
            Rule(
                rule="self.scope != 'project' || has(self.scopeId)",
                message=(
                    "spec.scopeId is required when spec.scope is project:"
                    " name the project the account belongs to"
                ),
                field_path=".scopeId",
                reason="FieldValueRequired",
            )
        )
    )

    display_name: DisplayName = Field(
        description="A name for people, shown in listings and audit logs; 1 to 255 characters."
    )
    description: Description | None = Field(
        default=None,
        description="What the account is for and who runs it; at most 1024 characters.",
    )
    scope: Scope = Field(
        description=(
            "Where the account may act: organization (across the whole organisation) or"
            " project (within the one project named by scopeId). Which scopes may be used is"
            " set by organisation policy."
        )
    )
    scope_id: Annotated[str, StringConstraints(min_length=1, max_length=253)] | None = Field(
        default=None,
        description=(
            "The project the account belongs to; required when scope is project. At most 253"
            " characters."
        ),
    )
    roles: RoleList | None = Field(
        default=None,
        description=(
            "The roles the account holds, as role slugs from the organisation's role catalogue"
            " such as compute.deployer (lowercase words joined by dots; at most 128 characters"
            " each, at most 64 roles, no duplicates). Whoever sets them must hold each role"
            " themselves. Credentials and trusts can narrow these with scopedRoles, never widen"
            " them."
        ),
    )
    disabled: bool = Field(
        default=False,
        description=(
            "When true, no token is issued for the account, but its credentials and trusts are"
            " kept and work again once it is re-enabled. Default false."
        ),
    )
    owners: (
        Annotated[
            list[Owner],
            Field(max_length=64),
            KubeSchema(list_type="map", list_map_keys=("kind", "name")),
        ]
        | None
    ) = Field(
        default=None,
        description=(
            "The users and groups that may create, change and revoke this account's credentials"
            " and trusts, besides whoever holds the RBAC verb manage on the account. At most 64,"
            " each kind and name at most once."
        ),
    )


class SlotHolder(ApiModel):
    """A credential that holds one of the account's active slots."""

    name: ObjectName = Field(description="The credential's name, in the account's namespace.")
    uid: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(
        description="The credential's UID, so that a credential re-created under the same name"
        " is not mistaken for the one that held the slot."
    )


class ServiceAccountStatus(ObjectStatus):
    """The account as the operator sees it; written by the operator only."""

    client_id: str | None = Field(
        default=None,
        max_length=512,
        description=(
            "The OAuth client id of the account, such as pipeline-prod@team-a.acme.iam."
            " Generated once by the operator and never changed."
        ),
    )
    state: AccountState | None = Field(
        default=None,
        description="Active when tokens may be issued for the account, Disabled otherwise.",
    )
    active_credential_count: int | None = Field(
        default=None,
        ge=0,
        description=(
            "How many of the account's credentials are Active. Organisation policy caps this"
            " (5 by default); credentials over the cap wait as Pending."
        ),
    )
    active_credentials: (
        Annotated[
            list[SlotHolder],
            Field(max_length=100),
            KubeSchema(list_type="map", list_map_keys=("uid",)),
        ]
        | None
    ) = Field(
        default=None,
        description=(
            "The credentials that hold an active slot: the ledger the operator updates with a"
            " compare-and-swap before it issues a credential, so the cap holds even when many"
            " credentials are created at once or two operator replicas run. At most 100."
        ),
    )
    created_at: datetime.datetime | None = Field(
        default=None,
        description="When the account was created (RFC 3339).",
    )


class ServiceAccount(Resource):
    """A machine identity of kube-iam: a client id, a scope, roles and owners.

    Credentials (ServiceAccountCredential) and federation trusts (FederationTrust) in the same
    namespace let workloads obtain tokens as this account. Deleting the account removes them
    and their Secrets. The name must be 1 to 63 characters of lowercase letters, digits and
    '-', starting with a letter.
    """

    model_config = ConfigDict(json_schema_extra=rules_extra(ACCOUNT_NAME_RULE))
    names: ClassVar[ResourceNames] = ResourceNames(
        kind="ServiceAccount",
        plural="serviceaccounts",
        short_names=("iamsa",),
        printer_columns=(
            PrinterColumn(
                name="State",
                json_path=".status.state",
                type="string",
                description="Active, or Disabled when no token is issued.",
            ),
            PrinterColumn(
                name="Client ID",
                json_path=".status.clientId",
                type="string",
                description="The OAuth client id of the account.",
            ),
            PrinterColumn(
                name="Active",
                json_path=".status.activeCredentialCount",
                type="integer",
                description="How many credentials of the account are Active.",
            ),
            READY_COLUMN,
            AGE_COLUMN,
        ),
    )

    spec: ServiceAccountSpec = Field(description="What the account is and may do; the user's.")
    status: ServiceAccountStatus | None = Field(
        default=None, description="What the operator observed; written by the operator only."
    )
