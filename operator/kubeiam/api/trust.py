"""The FederationTrust kind: lets tokens of an external OIDC issuer act as an account."""

from __future__ import annotations

import datetime
from typing import Annotated, ClassVar

from pydantic import ConfigDict, Field, StringConstraints

from kubeiam.api.common import (
    AGE_COLUMN,
    READY_COLUMN,
    AccountName,
    ApiModel,
    Description,
    DisplayName,
    KubeSchema,
    ObjectStatus,
    PrinterColumn,
    Resource,
    ResourceNames,
    RoleList,
    Rule,
    SourceCidrList,
    cel,
    https_url,
    immutable,
    plain_url,
    rules_extra,
)


class JsonWebKey(ApiModel):
    """One public key of the issuer, as a JSON Web Key (RFC 7517).

    Only the common members are named here; the key material (n and e, x and y, and so on)
    differs by key type and is kept as given.
    """

    # Unknown members are the key material itself, so they are kept, never pruned.
    model_config = ConfigDict(extra="allow")

    kty: str = Field(
        min_length=1,
        max_length=16,
        description="The key type, such as RSA, EC or OKP. Required.",
    )
    kid: str | None = Field(
        default=None,
        max_length=256,
        description="The key id that tokens name in their kid header.",
    )
    use: str | None = Field(
        default=None,
        max_length=16,
        description="What the key is for; sig for a signing key.",
    )
    alg: str | None = Field(
        default=None,
        max_length=32,
        description="The signing algorithm the key is used with, such as RS256 or ES256.",
    )


class JsonWebKeySet(ApiModel):
    """A static JSON Web Key Set (RFC 7517), for an issuer whose keys cannot be fetched."""

    keys: Annotated[list[JsonWebKey], Field(min_length=1, max_length=20)] = Field(
        description="The issuer's public keys; 1 to 20."
    )


class FederationTrustSpec(ApiModel):
    """Which external tokens are trusted, and what they may do as the account."""

    model_config = ConfigDict(
        json_schema_extra=rules_extra(
            Rule(
                rule="!(has(self.jwks) && has(self.jwksUri))",
                message=(
                    "spec.jwks and spec.jwksUri are mutually exclusive: give the issuer's keys"
                    " inline or the URL to fetch them from, not both (with neither, the issuer's"
                    " discovery document names the URL)"
                ),
                field_path=".jwksUri",
                reason="FieldValueForbidden",
            )
        )
    )

    service_account_name: Annotated[
        AccountName,
        cel(
            immutable(
                "spec.serviceAccountName",
                "a trust belongs to one account for its whole life",
            )
        ),
    ] = Field(
        description=(
            "The ServiceAccount, in the same namespace, that matching tokens act as. Required;"
            " immutable."
        )
    )
    display_name: DisplayName | None = Field(
        default=None,
        description=(
            "A name for people, shown in listings and audit logs; 1 to 255 characters. Optional:"
            " unset, listings show the trust's name."
        ),
    )
    description: Description | None = Field(
        default=None,
        description="What the trust is for and which workloads use it; at most 1024 characters.",
    )
    issuer: Annotated[
        str,
        StringConstraints(min_length=1, max_length=2048),
        cel(
            https_url("spec.issuer", "https://token.actions.githubusercontent.com"),
            *plain_url("spec.issuer", query=False),
            immutable(
                "spec.issuer",
                "a trust is bound to one issuer; create a new trust for another issuer",
            ),
        ),
    ] = Field(
        description=(
            "The issuer URL of the external OIDC provider, exactly as tokens carry it in their"
            " iss claim, such as https://token.actions.githubusercontent.com. Must be https, in"
            " ASCII, without user info, query or fragment; at most 2048 characters. Required;"
            " immutable. Organisation policy may restrict which issuers are allowed."
        )
    )
    audiences: Annotated[
        list[Annotated[str, StringConstraints(min_length=1, max_length=512)]],
        Field(min_length=1, max_length=16),
        KubeSchema(list_type="set"),
    ] = Field(
        description=(
            "The audiences a token must be issued for: its aud claim must contain one of them."
            " 1 to 16 values, each at most 512 characters."
        )
    )
    subject: Annotated[str, StringConstraints(min_length=1, max_length=1024)] | None = Field(
        default=None,
        description=(
            "If set, a token's sub claim must equal this exactly, such as"
            " repo:acme/deploy:ref:refs/heads/main. At most 1024 characters."
        ),
    )
    condition: Annotated[str, StringConstraints(min_length=1, max_length=4096)] = Field(
        description=(
            "A CEL expression over the token's claims (as the variable claims) that must be"
            " true for the token to be trusted, such as"
            " claims.repository == 'acme/deploy' && claims.ref == 'refs/heads/main'."
            " For a multi-tenant issuer such as GitHub Actions it must pin a repository,"
            " project or owner claim. Required; 1 to 4096 characters."
        )
    )
    jwks_uri: (
        Annotated[
            str,
            StringConstraints(min_length=1, max_length=2048),
            cel(
                https_url("spec.jwksUri", "https://issuer.example.com/.well-known/jwks.json"),
                *plain_url("spec.jwksUri", query=True),
            ),
        ]
        | None
    ) = Field(
        default=None,
        description=(
            "Where to fetch the issuer's signing keys (an https URL in ASCII without user info,"
            " at most 2048 characters), when it differs from what the issuer's discovery"
            " document says. Not together with jwks."
        ),
    )
    jwks: JsonWebKeySet | None = Field(
        default=None,
        description=(
            "The issuer's signing keys given inline, for an issuer whose keys cannot be fetched."
            " Not together with jwksUri."
        ),
    )
    allow_source_cidrs: SourceCidrList | None = Field(
        default=None,
        description=(
            "If set, tokens are exchanged through this trust only for clients whose address is"
            " in one of these IPv4 or IPv6 CIDR blocks, such as 10.0.0.0/8 or 2001:db8::/32. At"
            " most 64 blocks. Unset: any address."
        ),
    )
    scoped_roles: RoleList | None = Field(
        default=None,
        description=(
            "If set, tokens issued through this trust carry only these of the account's roles"
            " (role slugs such as compute.deployer; at most 64); an empty list means none."
            " Unset: all of the account's roles. Removing or widening it needs the RBAC verb"
            " bind on each role that adds back."
        ),
    )
    disabled: bool = Field(
        default=False,
        description=(
            "When true, no token is exchanged through this trust; the trust is kept and works"
            " again once re-enabled. Default false."
        ),
    )


class FederationTrustStatus(ObjectStatus):
    """The trust as the operator checked it; written by the operator only."""

    display_name: str | None = Field(
        default=None,
        max_length=255,
        description="What listings show: spec.displayName, or the object's name when unset.",
    )
    effective_roles: Annotated[list[str], Field(max_length=64)] | None = Field(
        default=None,
        description=(
            "The roles tokens issued through this trust carry: the account's roles, narrowed"
            " to spec.scopedRoles when that is set."
        ),
    )
    jwks_key_ids: Annotated[list[str], Field(max_length=100)] | None = Field(
        default=None,
        description="The key ids (kid) of the issuer's signing keys found at the last check.",
    )
    last_checked_at: datetime.datetime | None = Field(
        default=None,
        description="When the operator last checked the issuer and its keys (RFC 3339).",
    )
    last_used_at: datetime.datetime | None = Field(
        default=None,
        description=(
            "When a token was last exchanged through this trust (RFC 3339); written by the"
            " token server, coalesced to at most one write a trust per usage interval."
        ),
    )


class FederationTrust(Resource):
    """Lets tokens of an external OIDC issuer, such as a CI system, act as a ServiceAccount.

    A token is trusted when it is signed by the issuer's keys, carries one of the audiences,
    matches the subject if one is set, and makes the CEL condition true. The operator checks
    the issuer and compiles the condition; the condition Ready says whether the trust can work.
    """

    names: ClassVar[ResourceNames] = ResourceNames(
        kind="FederationTrust",
        plural="federationtrusts",
        short_names=("iamtrust",),
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
                description="The ServiceAccount that matching tokens act as.",
            ),
            PrinterColumn(
                name="Issuer",
                json_path=".spec.issuer",
                type="string",
                description="The external OIDC issuer.",
            ),
            READY_COLUMN,
            AGE_COLUMN,
        ),
    )

    spec: FederationTrustSpec = Field(description="Which tokens are trusted; the user's.")
    status: FederationTrustStatus | None = Field(
        default=None, description="The trust as checked; written by the operator only."
    )
