"""The ServiceAccountCredential kind: one client secret of an account, with a fixed expiry."""

from __future__ import annotations

import datetime
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import ConfigDict, Field, StringConstraints

from kubeiam.api.common import (
    AGE_COLUMN,
    GROUP,
    READY_COLUMN,
    AccountName,
    ApiModel,
    Description,
    DisplayName,
    DnsSubdomain,
    ObjectStatus,
    PrinterColumn,
    Resource,
    ResourceNames,
    RoleList,
    Rule,
    SourceCidrList,
    cel,
    immutable,
    immutable_optional,
    on_create,
    rules_extra,
)

# Go's duration syntax (time.ParseDuration, which CEL's duration() uses), without a sign so
# that a negative lifetime cannot be written.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"
DATA_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"


class CredentialState(StrEnum):
    """Where a credential is in its life."""

    PENDING = "Pending"
    ACTIVE = "Active"
    EXPIRED = "Expired"
    REVOKED = "Revoked"
    FAILED = "Failed"


class SecretDeletionPolicy(StrEnum):
    """What happens to the generated Secret when the credential ends."""

    RETAIN = "Retain"
    DELETE = "Delete"


SecretKey = Annotated[
    str,
    StringConstraints(min_length=1, max_length=253, pattern=DATA_KEY_PATTERN),
    # The pattern admits them, and the API server refuses them as Secret data keys: refused
    # here, so the credential fails when applied rather than at issuance.
    cel(
        Rule(
            rule="self != '.' && !self.startsWith('..')",
            message=(
                "spec.secretTemplate.keys: a Secret key must not be '.' or '..', nor start with"
                " '..' (Kubernetes refuses such data keys)"
            ),
        )
    ),
]
LabelValue = Annotated[str, StringConstraints(max_length=63, pattern=LABEL_VALUE_PATTERN)]


# The default key names, once: the field descriptions, the distinctness rule and
# SecretKeys.resolved() all read them from this table.
DEFAULT_SECRET_KEYS: dict[str, str] = {
    "clientId": "client-id",
    "clientSecret": "client-secret",
    "tokenUrl": "token-url",
    "expiresAt": "expires-at",
}

# The key of the token endpoint's CA bundle, set when KUBEIAM_TOKEN_CA_FILE names one: the name
# kubernetes.io/tls and ServiceAccount token Secrets use, so no key of the four may take it.
CA_BUNDLE_KEY = "ca.crt"


def _ca_key_reserved_rule() -> Rule:
    free = [
        f"(!has(self.{field}) || self.{field} != '{CA_BUNDLE_KEY}')"
        for field in DEFAULT_SECRET_KEYS
    ]
    return Rule(
        rule=" && ".join(free),
        message=(
            f"spec.secretTemplate.keys must not name the key {CA_BUNDLE_KEY}: kube-iam puts the"
            " token endpoint's CA bundle there"
        ),
    )


def _distinct_keys_rule() -> Rule:
    # Pairwise rather than lists' distinct(), which needs Kubernetes 1.34; six comparisons are
    # cheap for the cost budget.
    effective = [
        f"(has(self.{field}) ? self.{field} : '{default}')"
        for field, default in DEFAULT_SECRET_KEYS.items()
    ]
    pairs = [
        f"{effective[i]} != {effective[j]}"
        for i in range(len(effective))
        for j in range(i + 1, len(effective))
    ]
    defaults = ", ".join(DEFAULT_SECRET_KEYS.values())
    return Rule(
        rule=" && ".join(pairs),
        message=(
            "spec.secretTemplate.keys must name four different Secret keys"
            f" (a key not given takes its default: {defaults})"
        ),
    )


def _key_description(holding: str, field: str) -> str:
    return (
        f"The key holding {holding}. Default {DEFAULT_SECRET_KEYS[field]}. Letters, digits,"
        " '-', '_' and '.'; at most 253 characters."
    )


class SecretKeys(ApiModel):
    """Data key names of the generated Secret, for workloads that expect other names."""

    model_config = ConfigDict(
        json_schema_extra=rules_extra(_distinct_keys_rule(), _ca_key_reserved_rule())
    )

    client_id: SecretKey | None = Field(
        default=None, description=_key_description("the client id", "clientId")
    )
    client_secret: SecretKey | None = Field(
        default=None, description=_key_description("the client secret", "clientSecret")
    )
    token_url: SecretKey | None = Field(
        default=None,
        description=_key_description("the URL of the token endpoint", "tokenUrl"),
    )
    expires_at: SecretKey | None = Field(
        default=None,
        description=_key_description("the expiry time (RFC 3339)", "expiresAt"),
    )

    def resolved(self) -> dict[str, str]:
        """Every key name, the default where none is given, by its camelCase field name."""
        given = self.model_dump(by_alias=True, exclude_none=True)
        return {field: given.get(field, default) for field, default in DEFAULT_SECRET_KEYS.items()}


# A label or annotation key as Kubernetes accepts it: an optional DNS-subdomain prefix and a
# slash, then a name of at most 63 characters. Checked in the CRD: a key the API server would
# refuse on the Secret must be refused when the credential is applied, not at issuance.
QUALIFIED_NAME_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
MAX_TEMPLATE_ENTRIES = 64
# Kubernetes refuses an object whose annotations, keys and values, exceed 256 KiB in bytes. The
# generated Secret also carries kube-iam's own (under 1 KiB: the credential, its UID and id, the
# account, the hash), so a template may use the rest.
MAX_TEMPLATE_ANNOTATION_BYTES = 255 * 1024
# The labels and annotations the operator sets on the generated Secret itself, once: the
# Secret writer (kube/secrets.py) writes these, and a template entry with one of these keys
# would be silently replaced by kube-iam's value, so the schema refuses it instead.
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
CREDENTIAL_LABEL = f"{GROUP}/credential"
ACCOUNT_LABEL = f"{GROUP}/service-account"
CREDENTIAL_ANNOTATION = f"{GROUP}/credential"
CREDENTIAL_UID_ANNOTATION = f"{GROUP}/credential-uid"
ACCOUNT_ANNOTATION = f"{GROUP}/service-account"
CREDENTIAL_ID_ANNOTATION = f"{GROUP}/credential-id"
HASH_ANNOTATION = f"{GROUP}/secret-hash"
PROOF_ANNOTATION = f"{GROUP}/secret-proof"
SECRET_LABEL_KEYS = (MANAGED_BY_LABEL, CREDENTIAL_LABEL, ACCOUNT_LABEL)
SECRET_ANNOTATION_KEYS = (
    CREDENTIAL_ANNOTATION,
    CREDENTIAL_UID_ANNOTATION,
    ACCOUNT_ANNOTATION,
    CREDENTIAL_ID_ANNOTATION,
    HASH_ANNOTATION,
    PROOF_ANNOTATION,
)


def _qualified_keys_rule(field: str) -> Rule:
    return Rule(
        rule=(
            f"!has(self.{field}) || self.{field}.all(k, size(k) <= 317 && "
            f"k.matches('{QUALIFIED_NAME_PATTERN}'))"
        ),
        message=(
            f"spec.secretTemplate.{field} keys must be valid Kubernetes {field[:-1]} keys:"
            " an optional DNS subdomain prefix and '/', then a name of at most 63 letters,"
            " digits, '-', '_' or '.', beginning and ending with a letter or digit"
        ),
        field_path=f".{field}",
        reason="FieldValueInvalid",
    )


def _reserved_keys_rule(field: str, reserved: tuple[str, ...]) -> Rule:
    # A lookup of each reserved key rather than a scan of the map: cheap for the cost budget.
    listed = ", ".join(f"'{key}'" for key in reserved)
    return Rule(
        rule=f"!has(self.{field}) || ![{listed}].exists(k, k in self.{field})",
        message=(
            f"spec.secretTemplate.{field} must not use the {field[:-1]} keys kube-iam sets on"
            f" the generated Secret itself ({', '.join(reserved)}): kube-iam's values would"
            " replace them"
        ),
        field_path=f".{field}",
        reason="FieldValueForbidden",
    )


ANNOTATION_BYTES_RULE = Rule(
    rule=(
        "!has(self.annotations) || self.annotations.map(k,"
        " size(bytes(k)) + size(bytes(self.annotations[k]))).sum()"
        f" <= {MAX_TEMPLATE_ANNOTATION_BYTES}"
    ),
    message=(
        "spec.secretTemplate.annotations must total at most"
        f" {MAX_TEMPLATE_ANNOTATION_BYTES // 1024} KiB, keys and values counted in bytes:"
        " Kubernetes allows 256 KiB of annotations on the generated Secret, and kube-iam adds"
        " its own"
    ),
    field_path=".annotations",
    reason="FieldValueInvalid",
)


class SecretTemplate(ApiModel):
    """How the generated Secret looks: its labels, annotations and data key names."""

    model_config = ConfigDict(
        json_schema_extra=rules_extra(
            _qualified_keys_rule("labels"),
            _qualified_keys_rule("annotations"),
            _reserved_keys_rule("labels", SECRET_LABEL_KEYS),
            _reserved_keys_rule("annotations", SECRET_ANNOTATION_KEYS),
            ANNOTATION_BYTES_RULE,
        )
    )

    labels: Annotated[dict[str, LabelValue], Field(max_length=MAX_TEMPLATE_ENTRIES)] | None = Field(
        default=None,
        description=(
            "Labels to put on the generated Secret, for example for a tool that selects"
            " Secrets. Values follow the Kubernetes label value rules (at most 63 characters)."
            f" kube-iam sets {', '.join(SECRET_LABEL_KEYS)} itself, so those keys are refused."
        ),
    )
    annotations: (
        Annotated[
            dict[str, Annotated[str, StringConstraints(max_length=4096)]],
            Field(max_length=MAX_TEMPLATE_ENTRIES),
        ]
        | None
    ) = Field(
        default=None,
        description=(
            "Annotations to put on the generated Secret: at most 64, each value at most 4096"
            " characters, and at most 255 KiB in all (keys and values, in bytes). kube-iam sets"
            f" {', '.join(SECRET_ANNOTATION_KEYS)} itself, so those keys are refused."
        ),
    )
    keys: SecretKeys | None = Field(
        default=None,
        description=(
            "The data key names of the generated Secret. Each defaults to"
            f" {', '.join(DEFAULT_SECRET_KEYS.values())}; the four must be different."
        ),
    )


class ServiceAccountCredentialSpec(ApiModel):
    """The credential as requested. Its account, expiry and Secret name are fixed at creation."""

    model_config = ConfigDict(
        json_schema_extra=rules_extra(
            Rule(
                rule="!(has(self.expiresAt) && has(self.expiresIn))",
                message=(
                    "spec.expiresAt and spec.expiresIn are mutually exclusive: set one of them,"
                    " or neither for the organisation's default lifetime"
                ),
                field_path=".expiresIn",
                reason="FieldValueForbidden",
            ),
            immutable_optional(
                "spec", "expiresAt", "the expiry is fixed when the credential is created"
            ),
            immutable_optional(
                "spec", "expiresIn", "the lifetime is fixed when the credential is created"
            ),
            immutable_optional(
                "spec",
                "secretName",
                "the Secret is written once, when the credential is issued;"
                " create a new credential for another Secret",
            ),
        )
    )

    service_account_name: Annotated[
        AccountName,
        cel(
            immutable(
                "spec.serviceAccountName",
                "a credential belongs to one account for its whole life",
            )
        ),
    ] = Field(
        description=(
            "The ServiceAccount, in the same namespace, that this credential authenticates as."
            " Required; immutable."
        )
    )
    display_name: DisplayName | None = Field(
        default=None,
        description=(
            "A name for people, shown in listings and audit logs; 1 to 255 characters. Optional:"
            " unset, listings show the credential's name."
        ),
    )
    description: Description | None = Field(
        default=None,
        description="What the credential is for and where it is used; at most 1024 characters.",
    )
    expires_at: datetime.datetime | None = Field(
        default=None,
        description=(
            "When the credential expires (RFC 3339). Set this or expiresIn, not both; with"
            " neither, the organisation's default lifetime applies (90 days unless configured)."
            " A lifetime beyond the organisation's maximum is refused. Immutable."
        ),
    )
    expires_in: (
        Annotated[
            str,
            StringConstraints(min_length=2, max_length=32, pattern=DURATION_PATTERN),
            cel(
                Rule(
                    # The match first, so a malformed value is refused with this message
                    # rather than with a conversion error from duration().
                    rule=f"self.matches(r'{DURATION_PATTERN}') && duration(self) > duration('0s')",
                    message=(
                        "spec.expiresIn must be a positive duration such as 720h, 90m or 1h30m"
                    ),
                )
            ),
        ]
        | None
    ) = Field(
        default=None,
        description=(
            "The credential's lifetime from issuance, as a duration such as 720h, 90m or 1h30m"
            " (units h, m, s, ms, us, ns). Set this or expiresAt, not both. Immutable."
        ),
    )
    allow_source_cidrs: SourceCidrList | None = Field(
        default=None,
        description=(
            "If set, tokens are issued for this credential only to clients whose address is in"
            " one of these IPv4 or IPv6 CIDR blocks, such as 10.0.0.0/8 or 2001:db8::/32. At"
            " most 64 blocks. Unset: any address."
        ),
    )
    scoped_roles: RoleList | None = Field(
        default=None,
        description=(
            "If set, tokens issued for this credential carry only these of the account's roles"
            " (role slugs such as compute.deployer; at most 64); an empty list means none."
            " Unset: all of the account's roles. Removing or widening it needs the RBAC verb"
            " bind on each role that adds back."
        ),
    )
    require_dpop: bool = Field(
        default=False,
        description=(
            "When true, tokens are issued for this credential only with a DPoP proof (RFC 9449),"
            " binding each token to a key the client holds. Default false."
        ),
    )
    revoked: Annotated[
        bool,
        cel(
            Rule(
                rule="self || !oldSelf",
                message=(
                    "spec.revoked cannot go back to false: a revoked credential stays revoked;"
                    " create a new credential instead"
                ),
            )
        ),
    ] = Field(
        default=False,
        description=(
            "Set to true to end the credential at once: no more tokens are issued for it and"
            " existing tokens stop being accepted. Once true it stays true. Default false."
        ),
    )
    secret_name: DnsSubdomain | None = Field(
        default=None,
        description=(
            "The name of the Secret, in the same namespace, that receives the client secret."
            " Default: the credential's name. A DNS subdomain of at most 253 characters."
            " Immutable, and it can be neither added nor removed after creation."
        ),
    )
    secret_template: SecretTemplate | None = Field(
        default=None,
        description="Labels, annotations and data key names for the generated Secret.",
    )
    secret_deletion_policy: SecretDeletionPolicy | None = Field(
        default=None,
        description=(
            "What happens to the generated Secret when the credential expires, is revoked or"
            " is deleted: Retain keeps it, Delete removes it. Unset: the organisation's policy."
        ),
    )


class ServiceAccountCredentialStatus(ObjectStatus):
    """The credential as issued; written by the operator only. Never holds the secret."""

    credential_id: str | None = Field(
        default=None,
        max_length=128,
        description=(
            "The credential's id, generated at issuance. It is part of the client secret, so a"
            " leaked secret can be traced to its credential."
        ),
    )
    client_id: str | None = Field(
        default=None,
        max_length=512,
        description="The OAuth client id of the credential's account.",
    )
    secret_name: str | None = Field(
        default=None,
        max_length=253,
        description="The name of the Secret the client secret was written to.",
    )
    state: CredentialState | None = Field(
        default=None,
        description=(
            "Pending (waiting for issuance or for an active slot of the account), Active,"
            " Expired, Revoked, or Failed (the condition Ready says why)."
        ),
    )
    created_at: datetime.datetime | None = Field(
        default=None,
        description="When the credential was issued (RFC 3339).",
    )
    expires_at: datetime.datetime | None = Field(
        default=None,
        description=(
            "When the credential expires (RFC 3339). Resolved at issuance from spec.expiresAt,"
            " spec.expiresIn or the organisation's default, and never changed."
        ),
    )
    display_name: str | None = Field(
        default=None,
        max_length=255,
        description="What listings show: spec.displayName, or the object's name when unset.",
    )
    effective_roles: Annotated[list[str], Field(max_length=64)] | None = Field(
        default=None,
        description=(
            "The roles tokens for this credential carry: the account's roles, narrowed to"
            " spec.scopedRoles when that is set."
        ),
    )
    last_used_at: datetime.datetime | None = Field(
        default=None,
        description="When a token was last issued for this credential (RFC 3339).",
    )
    last_used_ip: str | None = Field(
        default=None,
        max_length=64,
        description="The client address a token was last issued to for this credential.",
    )
    secret_hash: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^sha256:[0-9a-f]{64}$",
        description=(
            "A hash of the client secret, such as sha256:<64 hex digits>, to recognise the"
            " secret without keeping it. The secret itself is never stored here."
        ),
    )
    secret_uid: str | None = Field(
        default=None,
        max_length=128,
        description=(
            "The metadata.uid of the Secret kube-iam wrote, recorded at issuance: a Secret"
            " deleted and created again under the name has another, and is reported (Ready"
            " reason SecretReplaced), never trusted."
        ),
    )
    account_uid: str | None = Field(
        default=None,
        max_length=128,
        description=(
            "The metadata.uid of the ServiceAccount the credential was issued for: if an"
            " account of that name is deleted and created again, the credential ends (reason"
            " AccountReplaced) rather than follow the new account."
        ),
    )
    secret_deletion_policy: SecretDeletionPolicy | None = Field(
        default=None,
        description=(
            "The deletion policy in effect for the generated Secret: spec.secretDeletionPolicy,"
            " or the organisation's default when that is unset."
        ),
    )


# The generated Secret carries the credential's name as a label value, which Kubernetes limits
# to 63 characters: a longer name would be admitted and then fail at issuance. Checked on create
# only: a credential stored before the rule must keep taking status patches and losing its
# finalizer, or it could never be deleted.
CREDENTIAL_NAME_RULE = on_create(
    "size(self.metadata.name) <= 63",
    (
        "metadata.name of a credential must be at most 63 characters: the generated Secret"
        " carries it in its label iam.kubeiam.io/credential, and label values are at most 63"
    ),
    field_path=".metadata.name",
    reason="FieldValueInvalid",
)


class ServiceAccountCredential(Resource):
    """A client credential of a ServiceAccount: a client secret with an expiry fixed at creation.

    The operator writes the generated client secret once into a Secret in the same namespace
    and keeps only its hash. Each account has at most a few Active credentials at a time (5
    unless the organisation says otherwise); more wait as Pending until a slot frees up. The
    name is at most 63 characters.
    """

    model_config = ConfigDict(json_schema_extra=rules_extra(CREDENTIAL_NAME_RULE))

    names: ClassVar[ResourceNames] = ResourceNames(
        kind="ServiceAccountCredential",
        plural="serviceaccountcredentials",
        short_names=("iamcred",),
        printer_columns=(
            PrinterColumn(
                name="Display Name",
                json_path=".status.displayName",
                type="string",
                description="spec.displayName, or the object's name when that is unset.",
            ),
            PrinterColumn(
                name="Account",
                json_path=".spec.serviceAccountName",
                type="string",
                description="The ServiceAccount the credential authenticates as.",
            ),
            PrinterColumn(
                name="State",
                json_path=".status.state",
                type="string",
                description="Pending, Active, Expired, Revoked or Failed.",
            ),
            PrinterColumn(
                # A string, not a date: kubectl prints a date as an age, which a future
                # expiry does not have.
                name="Expires",
                json_path=".status.expiresAt",
                type="string",
                description="When the credential expires.",
            ),
            PrinterColumn(
                name="Secret",
                json_path=".status.secretName",
                type="string",
                description="The Secret holding the client secret.",
            ),
            READY_COLUMN,
            AGE_COLUMN,
        ),
    )

    spec: ServiceAccountCredentialSpec = Field(
        description="The credential as requested; the user's."
    )
    status: ServiceAccountCredentialStatus | None = Field(
        default=None, description="The credential as issued; written by the operator only."
    )
