"""Organisation policy and operator settings: one typed object read from KUBEIAM_* variables."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import Field, TypeAdapter, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kubeiam.domain import key_rotation

DEFAULT_ORGANIZATION = "example"
# Issuers whose tokens are minted for every customer alike: any repository on GitHub, any
# project on gitlab.com, any Google account, any Buildkite organisation. A trust that does not
# pin the tenant trusts all of them.
MULTI_TENANT_ISSUERS = (
    "https://token.actions.githubusercontent.com",
    "https://gitlab.com",
    "https://app.terraform.io",
    "https://accounts.google.com",
    "https://agent.buildkite.com",
)
# Google: `sub` is the account's id, never reused; `hd` the Workspace domain of a managed account
# (`email` may be unverified and `azp` is any client's). Buildkite: the organisation; a pipeline
# slug is unique only within one. GitHub's `sub` does not count (guards.py says why).
TENANT_CLAIMS = (
    "repository",
    "repository_id",
    "repository_owner",
    "repository_owner_id",
    "project_path",
    "project_id",
    "namespace_path",
    "namespace_id",
    "terraform_organization_id",
    "terraform_organization_name",
    "terraform_workspace_id",
    "sub",
    "hd",
    "organization_slug",
    "organization_id",
)


# Below the token server's issuer (KUBEIAM_TOKEN_ISSUER).
TOKEN_PATH = "/oauth2/token"
# Settings that were removed, and what replaces them: one still set is refused at start rather
# than silently ignored (a deployment that sets it expects it to matter).
REMOVED_VARIABLES = {
    "KUBEIAM_TOKEN_URL": "set KUBEIAM_TOKEN_ISSUER instead: the token URL is the issuer's "
    "URL plus " + TOKEN_PATH,
}

Scope = Literal["organization", "project"]
SCOPES: tuple[Scope, ...] = ("organization", "project")


class _Group(BaseSettings):
    """A group of settings, each field read from the variable KUBEIAM_<FIELD> unless its alias
    names another (the variables are the ConfigMap's keys, unchanged by the grouping)."""

    model_config = SettingsConfigDict(
        env_prefix="KUBEIAM_", frozen=True, extra="ignore", populate_by_name=True
    )

    @field_validator("*", mode="before")
    @classmethod
    def _seconds_as_durations(cls, value: object, info: ValidationInfo) -> object:
        """A plain number of seconds is a duration too, as the docstring promises: pydantic
        reads a bare "30" from the environment as a malformed ISO 8601 duration otherwise."""
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and field.annotation is datetime.timedelta and isinstance(value, str):
            stripped = value.strip()
            if stripped.replace(".", "", 1).isdigit():
                return datetime.timedelta(seconds=float(stripped))
        return value


class CredentialSettings(_Group):
    """Organisation policy for credentials: the limit, lifetimes, the Secret they get."""

    max_active_credentials: int = Field(
        default=5, ge=1, le=100, description="Most credentials of one account Active at once."
    )
    default_credential_lifetime: datetime.timedelta = Field(
        default=datetime.timedelta(days=90),
        description="Lifetime of a credential that asks for none.",
    )
    max_credential_lifetime: datetime.timedelta = Field(
        default=datetime.timedelta(days=365),
        description="Longest lifetime a credential may ask for.",
    )
    expiry_warning_lead: datetime.timedelta = Field(
        default=datetime.timedelta(days=7),
        description="How long before expiry a Warning event is posted on a credential.",
    )
    token_ca_file: Path | None = Field(
        default=None,
        description="A PEM file of the CA certificates that sign the token endpoint's serving "
        "certificate; when set, every generated Secret also carries it under `ca.crt`, so a "
        "workload that mounts the Secret can verify the endpoint. Read at each issuance.",
    )
    secret_deletion_policy: Literal["Retain", "Delete"] = Field(
        default="Delete",
        description="What happens to a credential's Secret when it ends, unless the credential "
        "says otherwise.",
    )

    @field_validator("token_ca_file")
    @classmethod
    def _readable_ca_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                text = value.read_text()
            except (OSError, UnicodeDecodeError):
                raise ValueError("KUBEIAM_TOKEN_CA_FILE must name a readable PEM file") from None
            if "-----BEGIN CERTIFICATE-----" not in text:
                raise ValueError("KUBEIAM_TOKEN_CA_FILE holds no PEM certificate") from None
        return value

    @model_validator(mode="after")
    def _lifetimes_fit(self) -> CredentialSettings:
        if self.default_credential_lifetime <= datetime.timedelta(0):
            raise ValueError("KUBEIAM_DEFAULT_CREDENTIAL_LIFETIME must be positive")
        if self.default_credential_lifetime > self.max_credential_lifetime:
            raise ValueError(
                "KUBEIAM_DEFAULT_CREDENTIAL_LIFETIME must not exceed "
                "KUBEIAM_MAX_CREDENTIAL_LIFETIME"
            )
        return self


class SecretAuditSettings(_Group):
    """How often the operator checks that issued Secrets are still there (it may not watch them)."""

    model_config = SettingsConfigDict(env_prefix="KUBEIAM_SECRET_AUDIT_")

    rest_rate: float = Field(
        default=20.0,
        gt=0,
        le=6000,
        description="At rest, at most this many Secret checks (one metadata GET each) a minute, "
        "however many credentials there are. Right after a start, a credential's deletion or a "
        "finding, the audit checks every Secret once at 20 a second instead.",
    )
    rest_pass: datetime.timedelta = Field(
        default=datetime.timedelta(minutes=5),
        description="At rest, a full pass over the issued Secrets takes at least this long. A "
        "Secret deleted at rest is reported within max(this, credentials / rest rate) "
        "(docs/credentials.md).",
    )

    @model_validator(mode="after")
    def _positive_pass(self) -> SecretAuditSettings:
        if self.rest_pass <= datetime.timedelta(0):
            raise ValueError("KUBEIAM_SECRET_AUDIT_REST_PASS must be positive")
        return self


class TrustSettings(_Group):
    """Organisation policy for FederationTrusts: which issuers, which guard rails."""

    allowed_issuers: list[str] = Field(
        default_factory=list,
        description="Issuer URLs trusts may name (JSON list); empty allows any https issuer.",
    )
    multi_tenant_issuers: list[str] = Field(
        default_factory=lambda: list(MULTI_TENANT_ISSUERS),
        description="Issuers shared by many tenants (JSON list): a trust on one must pin a "
        "tenant claim in its condition.",
    )
    tenant_claims: list[str] = Field(
        default_factory=lambda: list(TENANT_CLAIMS),
        description="Claims that name a tenant (repository, project, owner); a condition on a "
        "multi-tenant issuer must pin one of them to a literal.",
    )
    max_trusts_per_account: int = Field(
        default=20, ge=1, le=1000, description="Most FederationTrusts one account may have."
    )
    token_leeway: datetime.timedelta = Field(
        default=datetime.timedelta(seconds=60),
        description="Clock skew allowed on a token's exp, nbf and iat.",
    )


class IssuerSettings(_Group):
    """How far kube-iam goes to reach an issuer, and how often it looks again."""

    model_config = SettingsConfigDict(env_prefix="KUBEIAM_ISSUER_")

    ca_bundle: Path | None = Field(
        default=None,
        description="PEM file of extra CA certificates trusted for issuer https (beside the "
        "system's); verification is never turned off.",
    )
    allowed_networks: list[str] = Field(
        default_factory=list,
        description="CIDRs of loopback, link-local or private addresses issuers may resolve to "
        "(JSON list); empty: only public addresses.",
    )
    connect_timeout: float = Field(
        default=5.0, gt=0, le=60, description="Seconds to connect to an issuer."
    )
    read_timeout: float = Field(
        default=10.0, gt=0, le=120, description="Seconds to wait for an issuer's response."
    )
    max_response_bytes: int = Field(
        default=256 * 1024,
        ge=1024,
        description="Largest discovery document or JWKS accepted, in bytes.",
    )
    max_keys: int = Field(
        default=20, ge=1, le=100, description="Most keys accepted in an issuer's JWKS."
    )
    refresh_concurrency: int = Field(
        default=8,
        ge=1,
        le=64,
        description="Most issuer checks in flight at once; a slow issuer holds one of them for "
        "up to the read timeout while the others go on.",
    )
    refresh_min: datetime.timedelta = Field(
        default=datetime.timedelta(minutes=5),
        description="Shortest time between two checks of a reachable issuer, whatever its "
        "Cache-Control says.",
    )
    refresh_max: datetime.timedelta = Field(
        default=datetime.timedelta(hours=1),
        description="Longest time between two checks of a reachable issuer.",
    )
    retry_min: datetime.timedelta = Field(
        default=datetime.timedelta(seconds=5),
        description="First retry delay after an issuer check failed; doubles on each failure.",
    )
    retry_max: datetime.timedelta = Field(
        default=datetime.timedelta(minutes=5),
        description="Longest retry delay after repeated issuer check failures.",
    )


class AdmissionSettings(_Group):
    """The admission webhook's rules (catalogue, scopes) and its budget for API reads."""

    role_catalogue: list[str] = Field(
        default_factory=list,
        description="The organisation's role slugs (JSON list): admission refuses any other role "
        "on an account, credential or trust. Empty: any well-formed slug.",
    )
    allowed_scopes: list[Scope] = Field(
        default_factory=lambda: list(SCOPES),
        description="The scopes accounts may use (JSON list); admission refuses others.",
    )
    timeout: float = Field(
        validation_alias="KUBEIAM_ADMISSION_TIMEOUT",
        default=2.0,
        gt=0,
        le=10,
        description="Seconds the webhook waits for the API server when it reads an account or "
        "reviews access; the webhook configuration allows 5 in all.",
    )
    access_review_ttl: float = Field(
        default=10.0,
        ge=0,
        le=300,
        description="Seconds an answer of a SubjectAccessReview is reused for the same user, "
        "verb and name.",
    )


class WebhookSettings(_Group):
    """Where and with which certificate the admission webhook is served."""

    model_config = SettingsConfigDict(env_prefix="KUBEIAM_WEBHOOK_")

    port: int = Field(
        default=9443,
        ge=0,
        le=65535,
        description="Port of the admission webhook (https, every replica serves it); 0 turns it "
        "off, for a cluster where the webhook is not registered.",
    )
    address: str = Field(
        default="0.0.0.0",  # noqa: S104  (the API server calls the pod IP)
        description="Address the admission webhook listens on.",
    )
    cert_dir: Path = Field(
        default=Path("/etc/kube-iam/webhook"),
        description="Directory holding the webhook's serving certificate as tls.crt and tls.key "
        "(a mounted kubernetes.io/tls Secret); re-read when the files change.",
    )
    max_review_bytes: int = Field(
        # An update's review of the largest object etcd stores (1.5 MiB) measured 3,145,887
        # bytes on the local control plane; the rest is room for the requester's groups.
        default=3_407_872,
        ge=64 * 1024,
        le=64 * 1024 * 1024,
        description="Largest AdmissionReview body the webhook reads; a larger one is answered "
        "413 unread. The default holds an update's two copies of the largest object the local "
        "control plane stores (docs/security.md).",
    )
    concurrency: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="Reviews the webhook judges at once (large bodies: one at a time, apart); "
        "a request that waits a second for a slot gets 503.",
    )
    client_ca: Path | None = Field(
        default=None,
        description="PEM file of the CA that signs the API server's client certificate for "
        "webhooks; set, the webhook refuses a TLS connection without such a certificate.",
    )
    cert_warning_lead: datetime.timedelta = Field(
        default=datetime.timedelta(days=14),
        description="The webhook logs a warning this long before its serving certificate expires.",
    )


class TokenSettings(_Group):
    """The token server (`kube-iam token-server`): its issuer, where it listens, what it signs."""

    model_config = SettingsConfigDict(env_prefix="KUBEIAM_TOKEN_")

    issuer: str = Field(
        default="https://iam.example.invalid",
        description="The token server's issuer URL: the `iss` of every access token, and where "
        "discovery (`/.well-known/openid-configuration`) and the token endpoint "
        "(`/oauth2/token`) are served below. Generated Secrets carry that token endpoint as "
        "their `token-url`, so set it in the operator's environment too.",
    )
    port: int = Field(default=8443, ge=1, le=65535, description="Port of the token server (https).")
    address: str = Field(
        default="0.0.0.0",  # noqa: S104  (workloads call the pod IP through a Service)
        description="Address the token server listens on; empty: every address, IPv4 and IPv6 "
        "(for IPv6 clients and allowSourceCidrs with IPv6 blocks).",
    )
    cert_dir: Path = Field(
        default=Path("/etc/kube-iam/tokens"),
        description="Directory holding the token server's serving certificate as tls.crt and "
        "tls.key (a mounted kubernetes.io/tls Secret), read at start and again when they "
        "change (a renewal is served without a restart).",
    )
    lifetime: datetime.timedelta = Field(
        default=datetime.timedelta(hours=1),
        description="Lifetime of an access token; never past its credential's expiry.",
    )
    audiences: list[str] = Field(
        default_factory=list,
        description="Audiences a client may ask a token for with `audience` or `resource` (JSON "
        "list); the first is the audience when none is asked. Empty: only the issuer itself.",
    )
    max_request_bytes: int = Field(
        default=16 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="Largest token request body read; a larger one is answered 413 unread.",
    )
    jwks_max_age: datetime.timedelta = Field(
        default=datetime.timedelta(minutes=5),
        description="How long a verifier may cache the JWKS (its Cache-Control max-age); part "
        "of the lead a next signing key is published with.",
    )
    key_rotation_period: datetime.timedelta = Field(
        default=datetime.timedelta(days=30),
        description="How long one signing key signs before the next one takes over (the "
        "operator rotates them; docs/tokens.md). Must exceed the lead a next key needs: "
        "KUBEIAM_TOKEN_JWKS_MAX_AGE + KUBEIAM_TOKEN_KEY_REFRESH_INTERVAL + "
        "KUBEIAM_TOKEN_KEY_MARGIN. The operator's KUBEIAM_TOKEN_LIFETIME must be at least the "
        "token server's: it keeps a retired key that long.",
    )
    key_refresh_interval: datetime.timedelta = Field(
        default=datetime.timedelta(seconds=30),
        description="How often the token server rereads its signing keys Secret, and the "
        "operator checks whether a key is due to be added or dropped.",
    )
    key_margin: datetime.timedelta = Field(
        default=datetime.timedelta(seconds=60),
        description="Clock skew allowed between the operator, token servers and verifiers in "
        "key rotation: added to the next key's lead and to a retired key's stay.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="CIDRs of the proxies (ingress, load balancer) whose X-Forwarded-For the "
        "token server believes (JSON list); the client is the rightmost hop that is not one of "
        "them. Empty: X-Forwarded-For is ignored and the client is the connection's peer.",
    )
    usage_interval: datetime.timedelta = Field(
        default=datetime.timedelta(seconds=60),
        description="At most one write of a credential's status.lastUsedAt and lastUsedIp per "
        "this interval, however many tokens it gets (the latest use is written).",
    )
    workers: int = Field(
        default=0,
        ge=0,
        le=256,
        description="Worker processes of the token server, each a whole server (its own event "
        "loop, cache and watches) on the same port; 0: one for each CPU this process may use "
        "(its affinity mask and its cgroup v2 cpu.max quota, so a container's CPU limit), at "
        "least 1.",
    )
    holds_capacity: int = Field(
        default=524_288,
        ge=64,
        le=16_777_216,
        description="Slots of the table the workers share for holds (usage writes, DPoP proof "
        "ids): 24 bytes each, in shared memory (12 MiB by default). A DPoP proof is held 61 s: "
        "keep it under half full, twice the proofs a second times 61 (docs/tokens.md, Processes "
        "and replicas).",
    )
    cert_warning_lead: datetime.timedelta = Field(
        default=datetime.timedelta(days=14),
        description="The token server logs a warning this long before its serving certificate "
        "expires.",
    )
    dpop_max_age: datetime.timedelta = Field(
        default=datetime.timedelta(seconds=60),
        description="Oldest a DPoP proof may be, by its iat (RFC 9449 §4.3); its jti is "
        "remembered this long, so a replayed proof is refused.",
    )
    dpop_clock_skew: datetime.timedelta = Field(
        default=datetime.timedelta(seconds=5),
        description="How far in the future a DPoP proof's iat may be (the client's clock ahead "
        "of the token server's).",
    )
    dpop_nonces: bool = Field(
        default=False,
        description="Require a server nonce in every DPoP proof (RFC 9449 §8): a proof without "
        "a fresh one is answered use_dpop_nonce with a DPoP-Nonce header. Nonces are stateless "
        "(a time slot of KUBEIAM_TOKEN_DPOP_MAX_AGE and its HMAC, keyed from the signing key), "
        "so every replica accepts every replica's.",
    )

    @field_validator("issuer")
    @classmethod
    def _https_issuer(cls, value: str) -> str:
        if not value.startswith("https://") or "?" in value or "#" in value:
            raise ValueError("KUBEIAM_TOKEN_ISSUER must be an https:// URL without query")
        return value.rstrip("/")

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(
                    "KUBEIAM_TOKEN_TRUSTED_PROXIES entries must be IPv4 or IPv6 CIDRs"
                ) from None
        return value

    @model_validator(mode="after")
    def _positive_lifetime(self) -> TokenSettings:
        if self.lifetime <= datetime.timedelta(0):
            raise ValueError("KUBEIAM_TOKEN_LIFETIME must be positive")
        if self.usage_interval <= datetime.timedelta(0):
            raise ValueError("KUBEIAM_TOKEN_USAGE_INTERVAL must be positive")
        if self.dpop_max_age <= datetime.timedelta(0):
            raise ValueError("KUBEIAM_TOKEN_DPOP_MAX_AGE must be positive")
        if self.dpop_clock_skew < datetime.timedelta(0):
            raise ValueError("KUBEIAM_TOKEN_DPOP_CLOCK_SKEW must not be negative")
        return self

    @model_validator(mode="after")
    def _rotation_fits(self) -> TokenSettings:
        self.rotation_policy().check()
        return self

    def rotation_policy(self) -> key_rotation.Policy:
        """The signing-key rotation's timings, as the pure rule takes them."""
        return key_rotation.Policy(
            period=self.key_rotation_period,
            jwks_max_age=self.jwks_max_age,
            refresh=self.key_refresh_interval,
            token_lifetime=self.lifetime,
            margin=self.key_margin,
        )

    @property
    def token_url(self) -> str:
        """The token endpoint: discovery's `token_endpoint`, the Secrets' `token-url`, the `htu`
        of a DPoP proof. Derived, never set apart: two URLs would drift (docs/tokens.md)."""
        return self.issuer + TOKEN_PATH

    def allowed_audiences(self) -> tuple[str, ...]:
        """The audiences a token may carry: the setting's, else the issuer alone."""
        return tuple(self.audiences) or (self.issuer,)

    def proxies(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The trusted proxies as networks."""
        return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in self.trusted_proxies)


class WatchingSettings(_Group):
    """How the operator watches the API server and meets its other replicas (kopf's side)."""

    model_config = SettingsConfigDict(env_prefix="KUBEIAM_WATCH_")

    server_timeout: int = Field(
        default=300, ge=10, description="Seconds the API server keeps a watch open."
    )
    client_timeout: int = Field(
        default=330, ge=10, description="Seconds before the operator gives up on a silent watch."
    )
    peering_lifetime: int = Field(
        validation_alias="KUBEIAM_PEERING_LIFETIME",
        default=60,
        ge=10,
        le=3600,
        description="Seconds a replica's peering heartbeat counts: a paused replica takes over "
        "this long after the active one died.",
    )
    counted_kopf_toggles: bool = Field(
        validation_alias="KUBEIAM_COUNTED_KOPF_TOGGLES",
        default=True,
        description="Replace kopf's ToggleSet with one that counts its toggles (kube/"
        "kopf_toggles.py): a restart over thousands of objects resumes them in seconds, not "
        "minutes. false keeps kopf's own, for comparing.",
    )
    slim_watch_events: bool = Field(
        validation_alias="KUBEIAM_SLIM_WATCH_EVENTS",
        default=True,
        description="Drop metadata.managedFields (half of a credential) from watched objects "
        "before kopf keeps them, and share the texts many objects repeat (kube/kopf_bodies.py). "
        "false keeps kopf's events as parsed.",
    )
    worker_limit: int = Field(
        default=500,
        ge=1,
        description="Objects of a kind handled at once (in each watched namespace, when "
        "namespaces are named); the others wait their turn as their queued events alone. A "
        "burst of thousands of credentials is then not thousands of handlers in memory at once.",
    )
    worker_idle: float = Field(
        default=0.5,
        gt=0,
        le=60,
        description="Seconds a handled object's worker waits for its next event before it "
        "gives its place up (kopf's default is 5).",
    )
    list_page: int = Field(
        default=500,
        ge=1,
        description="Objects a listing asks for at a time (kube-iam's indices at start, then "
        "kopf's): the operator holds one page of parsed objects, not the whole kind.",
    )


class MemorySettings(_Group):
    """The process's C heap (glibc's malloc; elsewhere these do nothing)."""

    model_config = SettingsConfigDict(env_prefix="KUBEIAM_MEMORY_")

    malloc_arena_max: int = Field(
        default=2,
        ge=0,
        le=64,
        description="The most malloc arenas the threads of the operator, and of each token "
        "server worker, share (mallopt M_ARENA_MAX); "
        "0 keeps glibc's default of 8 per core, each keeping what a burst freed in it.",
    )
    trim: bool = Field(
        default=True,
        description="Hand memory freed after a burst back to the OS (malloc_trim) at every sweep "
        "of the credentials (30 s), and every 30 s in each token server worker, so a pod's RSS "
        "falls back after a burst.",
    )


class ObservabilitySettings(_Group):
    """Logs, metrics and the health endpoint."""

    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Log line format: text, or json (one JSON object a line, with the object "
        "it is about).",
    )
    liveness_endpoint: str | None = Field(
        default=None,
        description="Serve kopf's health endpoint here, e.g. http://0.0.0.0:8080/healthz "
        "(`kube-iam run --liveness` overrides it).",
    )
    metrics_port: int = Field(
        default=9090,
        ge=0,
        le=65535,
        description="Port of the Prometheus metrics page (/metrics, on every interface); 0 "
        "turns it off.",
    )


class Settings(_Group):
    """Every knob kube-iam has, in typed groups; each field is set by the environment variable
    named in docs/settings.md (KUBEIAM_<NAME>; the table there is generated from these models).

    Durations accept ISO 8601 (`P90D`, `PT12H`) or a number of seconds.
    """

    organization: str = Field(
        default=DEFAULT_ORGANIZATION,
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Organisation name used in client ids: `<account>@<namespace>.<org>.iam`.",
    )
    operator_namespace: str = Field(
        default="kube-iam-system",
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="The operator's own namespace: it keeps the key that proves which Secrets "
        "it wrote there, in the Secret kube-iam-secret-proof-key, and the token server's signing "
        "key in kube-iam-signing-keys (each created once).",
    )
    credentials: CredentialSettings = Field(default_factory=CredentialSettings)
    secret_audit: SecretAuditSettings = Field(default_factory=SecretAuditSettings)
    trusts: TrustSettings = Field(default_factory=TrustSettings)
    issuers: IssuerSettings = Field(default_factory=IssuerSettings)
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)
    tokens: TokenSettings = Field(default_factory=TokenSettings)
    watching: WatchingSettings = Field(default_factory=WatchingSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)

    @model_validator(mode="after")
    def _no_removed_variable(self) -> Settings:
        for variable, instead in REMOVED_VARIABLES.items():
            if variable in os.environ:
                raise ValueError(f"{variable} is no longer read: {instead}")
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()


@dataclass(frozen=True)
class Variable:
    """One environment variable kube-iam reads: the ConfigMap key that sets a setting."""

    name: str
    setting: str  # where the code reads it, e.g. credentials.max_active_credentials
    default: str  # as the ConfigMap would write it
    description: str


def _default_text(annotation: object, value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, datetime.timedelta):
        # In the unit a person would write: pydantic's own ISO form says P1Y for 365 days.
        seconds = value.total_seconds()
        for unit, size in (("D", 86400), ("H", 3600), ("M", 60)):
            if seconds >= size and seconds % size == 0:
                return (
                    f"P{int(seconds // size)}D"
                    if unit == "D"
                    else f"PT{int(seconds // size)}{unit}"
                )
        return f"PT{seconds:g}S"
    dumped = TypeAdapter[Any](cast(Any, annotation)).dump_python(value, mode="json")
    return dumped if isinstance(dumped, str) else json.dumps(dumped)


def _variables(group: type[BaseSettings], path: str) -> list[Variable]:
    prefix = str(group.model_config.get("env_prefix", ""))
    found = []
    for name, info in group.model_fields.items():
        setting = f"{path}.{name}" if path else name
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseSettings):
            found += _variables(annotation, setting)
            continue
        variable = info.validation_alias if isinstance(info.validation_alias, str) else None
        default = info.get_default(call_default_factory=True)
        found.append(
            Variable(
                name=variable or (prefix + name).upper(),
                setting=setting,
                default=_default_text(annotation, default),
                description=info.description or "",
            )
        )
    return found


def variables() -> list[Variable]:
    """Every setting with the variable that sets it: the source of docs/settings.md's table."""
    return _variables(Settings, "")


def markdown_table() -> str:
    """The table of docs/settings.md, generated (`make docs`; a unit test keeps it current)."""
    rows = ["| Variable | Setting | Default | Meaning |", "|---|---|---|---|"]
    for variable in variables():
        cells = [
            f"`{variable.name}`",
            f"`{variable.setting}`",
            f"`{variable.default}`" if variable.default != "unset" else "unset",
            variable.description.replace("|", "\\|"),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


TABLE_START = "<!-- settings table: generated by `make docs` from operator/kubeiam/settings.py -->"
TABLE_END = "<!-- end of the settings table -->"


def with_table(page: str) -> str:
    """The page with the text between its table markers replaced by the current table."""
    before, _, rest = page.partition(TABLE_START)
    _, found, after = rest.partition(TABLE_END)
    if not found:
        raise ValueError(f"the page has no {TABLE_START!r} ... {TABLE_END!r} markers")
    return f"{before}{TABLE_START}\n{markdown_table()}{TABLE_END}{after}"
