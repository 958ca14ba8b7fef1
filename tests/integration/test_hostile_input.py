"""Hostile input: malformed and adversarial manifests of all three kinds, and what becomes of them.

Each case is either refused by the API server (schema, CEL or the admission webhook) with a
message naming the field and the rule, or, where only the operator can judge it (an expiry in
the past, a lifetime beyond the organisation's maximum, a condition that does not compile, keys
that cannot be used), admitted and then Ready=False with a reason and a message naming the
field. After the table the operator is still running, logged no unhandled error, and issues a
valid credential. test_crd_validation.py holds the plain schema cases; these go beyond them.

Refusals are server-side dry runs: the API server runs the schema, the CEL rules and the
webhook and stores nothing, so the table stays fast and one namespace serves every case. An
object where a string or list belongs is refused by the API server's strict decoding, which
names the path it did not expect (`unknown field "spec.displayName.en"`).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from kubeiam.api.common import API_VERSION
from kubeiam.api.credential import MAX_TEMPLATE_ANNOTATION_BYTES, SecretKeys

from .credentials_support import read_secret, ready, wait_state
from .fault_support import keep_for_leak_scan
from .support import ClusterHandle, OperatorProcess, wait_for
from .test_crd_validation import JWK, REMOVE, edited

pytestmark = pytest.mark.integration

Manifest = dict[str, Any]

# Every case is named after its id, unless the case is about the name itself.
PLACEHOLDER = "hostile"
ISSUER = "https://issuer.hostile.example"
GITHUB = "https://token.actions.githubusercontent.com"
# Accounts of their own, beside the `pipeline` every case names, so that no case takes a slot
# of the account limit from them: the credentials stored before a change is refused, and the
# credential whose Secret a case tries to take.
CHANGED = "changed"
VICTIM = "victim-account"
CYRILLIC_A = "\u0430"  # looks like 'a'
CYRILLIC_E = "\u0435"  # looks like 'e'
CYRILLIC_O = "\u043e"  # looks like 'o'
ZERO_WIDTH_SPACE = "\u200b"
FULLWIDTH_720H = "\uff17\uff12\uff10h"  # looks like 720h
FULLWIDTH_10 = "\uff11\uff10"  # looks like 10
MIB = 1024 * 1024
ANNOTATION_BYTES = MAX_TEMPLATE_ANNOTATION_BYTES

ACCOUNT: Manifest = {
    "apiVersion": API_VERSION,
    "kind": "ServiceAccount",
    "metadata": {"name": PLACEHOLDER},
    "spec": {
        "displayName": "Hostile input target",
        "scope": "organization",
        "roles": ["compute.deployer", "storage.reader"],
    },
}
CREDENTIAL: Manifest = {
    "apiVersion": API_VERSION,
    "kind": "ServiceAccountCredential",
    "metadata": {"name": PLACEHOLDER},
    "spec": {"serviceAccountName": "pipeline", "displayName": "CI runner"},
}
TRUST: Manifest = {
    "apiVersion": API_VERSION,
    "kind": "FederationTrust",
    "metadata": {"name": PLACEHOLDER},
    "spec": {
        "serviceAccountName": "pipeline",
        "displayName": "Hostile issuer",
        "issuer": ISSUER,
        "audiences": ["sts.hostile.example"],
        "condition": "claims.sub == 'ci'",
        "jwks": {"keys": [JWK]},
    },
}
RESOURCES = {
    "ServiceAccount": "iamsa",
    "ServiceAccountCredential": "iamcred",
    "FederationTrust": "iamtrust",
}


def variants(base: Manifest) -> Callable[..., Manifest]:
    """`base` with dotted paths changed (see test_crd_validation.edited)."""
    return lambda changes=None: edited(base, changes or {})


account, credential, trust = variants(ACCOUNT), variants(CREDENTIAL), variants(TRUST)


def cidrs(count: int) -> list[str]:
    """`count` distinct IPv4 /32 blocks."""
    return [f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}/32" for i in range(count)]


def annotations_of(total: int) -> dict[str, str]:
    """Template annotations of `total` bytes in all, keys and values, in as few as can be."""
    annotations: dict[str, str] = {}
    while total > 0:
        key = f"note-{len(annotations):02d}"
        annotations[key] = "n" * min(4096, total - len(key))
        total -= len(key) + len(annotations[key])
    return annotations


def rsa_key(**members: Any) -> Manifest:
    """An RSA public key whose members the case overrides (it is never used to verify)."""
    key: Manifest = {"kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256", "e": "AQAB"}
    key["n"] = "sXch" * 86  # 344 base64url characters: a 2048-bit modulus
    key.update(members)
    return key


@dataclass(frozen=True)
class Refusal:
    """A manifest the API server must refuse: its message names `field` and says `words`.

    With `before`, that manifest is stored first and the refusal is of the change: the way to
    exercise transition rules. With `patch`, the change is that merge patch instead.
    """

    manifest: Manifest
    field: str
    words: tuple[str, ...]
    before: Manifest | None = None
    patch: Manifest | None = None


def refused(
    id: str,
    manifest: Manifest,
    field: str,
    *words: str,
    before: Manifest | None = None,
    patch: Manifest | None = None,
) -> Any:
    return pytest.param(Refusal(manifest, field, words, before, patch), id=id)


REFUSALS = [
    # -- ServiceAccount: names and look-alikes ---------------------------------------------------
    refused("account-name-cyrillic-a", account({"metadata.name": f"pipeline-{CYRILLIC_A}pi"}),
            "metadata.name", "lowercase"),
    refused("account-name-zero-width-space",
            account({"metadata.name": f"pipe{ZERO_WIDTH_SPACE}line"}),
            "metadata.name", "lowercase"),
    refused("account-name-trailing-hyphen", account({"metadata.name": "pipeline-"}),
            "metadata.name", "end with a letter or digit"),
    refused("account-role-cyrillic-o", account({"spec.roles": [f"c{CYRILLIC_O}mpute.deployer"]}),
            "spec.roles[0]", "should match"),
    refused("account-role-path-traversal", account({"spec.roles": ["../admin"]}),
            "spec.roles[0]", "should match"),
    # -- ServiceAccount: wrong types, nulls, nesting ----------------------------------------------
    refused("account-display-name-integer", account({"spec.displayName": 42}),
            "spec.displayName", "must be of type string"),
    refused("account-display-name-object", account({"spec.displayName": {"en": "Pipeline"}}),
            "spec.displayName.en", "unknown field"),
    refused("account-display-name-null", account({"spec.displayName": None}),
            "spec.displayName", "Required value"),
    refused("account-scope-null", account({"spec.scope": None}),
            "spec.scope", "Required value"),
    refused("account-scope-capitalised", account({"spec.scope": "Organization"}),
            "spec.scope", "Unsupported value"),
    refused("account-roles-a-string", account({"spec.roles": "compute.deployer"}),
            "spec.roles", "must be of type array"),
    refused("account-roles-an-object", account({"spec.roles": {"compute.deployer": True}}),
            "spec.roles.compute.deployer", "unknown field"),
    refused("account-owners-an-object", account({"spec.owners": {"kind": "User", "name": "a"}}),
            "spec.owners.kind", "unknown field"),
    refused("account-owner-twice",
            account({"spec.owners": [{"kind": "User", "name": "alice"}] * 2}),
            "spec.owners[1]", "Duplicate value"),
    refused("account-owner-name-empty", account({"spec.owners": [{"kind": "User", "name": ""}]}),
            "spec.owners[0].name", "at least 1"),
    refused("account-spec-a-string", account({"spec": "everything"}),
            "spec", "must be of type object"),
    refused("account-unknown-spec-field", account({"spec.superuser": True}),
            "spec.superuser", "unknown field"),
    # -- ServiceAccount: sizes ---------------------------------------------------------------------
    refused("account-display-name-1-mib", account({"spec.displayName": "x" * MIB}),
            "spec.displayName", "Too long"),
    refused("account-scope-id-254-characters",
            account({"spec.scope": "project", "spec.scopeId": "p" * 254}),
            "spec.scopeId", "Too long"),
    refused("account-10000-roles", account({"spec.roles": [f"r{i}" for i in range(10_000)]}),
            "spec.roles", "Too many"),
    refused("account-65-owners",
            account({"spec.owners": [{"kind": "User", "name": f"u{i}"} for i in range(65)]}),
            "spec.owners", "Too many"),
    # -- ServiceAccountCredential: the account reference -------------------------------------------
    refused("credential-account-in-another-namespace",
            credential({"spec.serviceAccountName": "other/pipeline"}),
            "spec.serviceAccountName", "should match"),
    refused("credential-account-dotted-namespace",
            credential({"spec.serviceAccountName": "pipeline.other"}),
            "spec.serviceAccountName", "should match"),
    refused("credential-account-cyrillic-e",
            credential({"spec.serviceAccountName": f"pip{CYRILLIC_E}line"}),
            "spec.serviceAccountName", "should match"),
    refused("credential-account-does-not-exist", credential({"spec.serviceAccountName": "ghost"}),
            "spec.serviceAccountName", "does not exist", "account-exists"),
    refused("credential-account-an-object",
            credential({"spec.serviceAccountName": {"name": "pipeline"}}),
            "spec.serviceAccountName.name", "unknown field"),
    refused("credential-account-null", credential({"spec.serviceAccountName": None}),
            "spec.serviceAccountName", "Required value"),
    refused("credential-name-64-characters", credential({"metadata.name": "c" * 64}),
            "metadata.name", "at most 63 characters"),
    refused("credential-name-cyrillic-a", credential({"metadata.name": f"{CYRILLIC_A}pi-key"}),
            "metadata.name", "RFC 1123"),
    # -- ServiceAccountCredential: expiry ---------------------------------------------------------
    refused("credential-expires-in-garbage", credential({"spec.expiresIn": "forever"}),
            "spec.expiresIn", "positive duration"),
    refused("credential-expires-in-integer", credential({"spec.expiresIn": 3600}),
            "spec.expiresIn", "must be of type string"),
    refused("credential-expires-in-fullwidth-digits",
            credential({"spec.expiresIn": FULLWIDTH_720H}),
            "spec.expiresIn", "positive duration"),
    refused("credential-expires-in-with-a-space", credential({"spec.expiresIn": "720 h"}),
            "spec.expiresIn", "positive duration"),
    refused("credential-expires-in-rounds-to-zero", credential({"spec.expiresIn": "0.1ns"}),
            "spec.expiresIn", "positive duration"),
    refused("credential-expires-in-overflows",
            credential({"spec.expiresIn": "9999999999999999999h"}),
            "spec.expiresIn", "positive duration"),
    refused("credential-expires-in-33-characters",
            credential({"spec.expiresIn": "1h" + "0s" * 15 + "1"}),
            "spec.expiresIn", "Too long"),
    refused("credential-expires-at-date-only", credential({"spec.expiresAt": "2030-01-01"}),
            "spec.expiresAt", "date-time"),
    refused("credential-expires-at-unix-seconds", credential({"spec.expiresAt": 1893456000}),
            "spec.expiresAt", "must be of type date-time"),
    refused("credential-expires-at-year-10000",
            credential({"spec.expiresAt": "10000-01-01T00:00:00Z"}),
            "spec.expiresAt", "date-time"),
    refused("credential-expires-at-and-in-both-garbage",
            credential({"spec.expiresAt": "2000-01-01T00:00:00Z", "spec.expiresIn": "-5m"}),
            "spec.expiresIn", "positive duration"),
    # -- ServiceAccountCredential: source CIDRs ---------------------------------------------------
    refused("credential-10000-cidrs", credential({"spec.allowSourceCidrs": cidrs(10_000)}),
            "spec.allowSourceCidrs", "Too many"),
    refused("credential-cidrs-a-string", credential({"spec.allowSourceCidrs": "10.0.0.0/8"}),
            "spec.allowSourceCidrs", "must be of type array"),
    refused("credential-cidr-prefix-33", credential({"spec.allowSourceCidrs": ["10.0.0.0/33"]}),
            "spec.allowSourceCidrs[0]", "must be IPv4 or IPv6 CIDR blocks"),
    refused("credential-cidr-leading-zero",
            credential({"spec.allowSourceCidrs": ["010.0.0.0/8"]}),
            "spec.allowSourceCidrs[0]", "must be IPv4 or IPv6 CIDR blocks"),
    refused("credential-cidr-fullwidth-digits",
            credential({"spec.allowSourceCidrs": [FULLWIDTH_10 + ".0.0.0/8"]}),
            "spec.allowSourceCidrs[0]", "must be IPv4 or IPv6 CIDR blocks"),
    refused("credential-cidr-surrounding-space",
            credential({"spec.allowSourceCidrs": [" 10.0.0.0/8"]}),
            "spec.allowSourceCidrs[0]", "must be IPv4 or IPv6 CIDR blocks"),
    refused("credential-cidr-ipv6-zone",
            credential({"spec.allowSourceCidrs": ["fe80::/10%eth0"]}),
            "spec.allowSourceCidrs[0]", "must be IPv4 or IPv6 CIDR blocks"),
    refused("credential-cidr-twice",
            credential({"spec.allowSourceCidrs": ["10.0.0.0/8", "10.0.0.0/8"]}),
            "spec.allowSourceCidrs[1]", "Duplicate value"),
    refused("credential-cidr-65-characters",
            credential({"spec.allowSourceCidrs": ["2001:db8::" + "0" * 60 + "/32"]}),
            "spec.allowSourceCidrs[0]", "Too long"),
    # -- ServiceAccountCredential: roles, flags, unknown fields -----------------------------------
    refused("credential-scoped-role-cyrillic-e",
            credential({"spec.scopedRoles": [f"compute.d{CYRILLIC_E}ployer"]}),
            "spec.scopedRoles[0]", "should match"),
    refused("credential-scoped-roles-an-object",
            credential({"spec.scopedRoles": {"compute.deployer": "yes"}}),
            "spec.scopedRoles.compute.deployer", "unknown field"),
    refused("credential-revoked-a-string", credential({"spec.revoked": "true"}),
            "spec.revoked", "must be of type boolean"),
    refused("credential-require-dpop-an-integer", credential({"spec.requireDpop": 1}),
            "spec.requireDpop", "must be of type boolean"),
    refused("credential-client-secret-given", credential({"spec.clientSecret": "kiam_guess"}),
            "spec.clientSecret", "unknown field"),
    refused("credential-display-name-a-list", credential({"spec.displayName": ["CI", "runner"]}),
            "spec.displayName", "must be of type string"),
    refused("credential-deletion-policy-lowercase",
            credential({"spec.secretDeletionPolicy": "delete"}),
            "spec.secretDeletionPolicy", "Unsupported value"),
    # -- ServiceAccountCredential: the Secret -----------------------------------------------------
    refused("credential-secret-name-with-slash", credential({"spec.secretName": "kube-system/ci"}),
            "spec.secretName", "should match"),
    refused("credential-secret-name-double-dot", credential({"spec.secretName": "ci..secret"}),
            "spec.secretName", "should match"),
    refused("credential-secret-name-cyrillic-a",
            credential({"spec.secretName": f"ci-{CYRILLIC_A}ccess"}),
            "spec.secretName", "should match"),
    refused("credential-secret-name-254-characters",
            credential({"spec.secretName": "s" * 254}),
            "spec.secretName", "Too long"),
    refused("credential-secret-template-a-string",
            credential({"spec.secretTemplate": "labels: {a: b}"}),
            "spec.secretTemplate", "must be of type object"),
    refused("credential-secret-labels-a-list",
            credential({"spec.secretTemplate": {"labels": ["team=a"]}}),
            "spec.secretTemplate.labels", "must be of type object"),
    refused("credential-secret-10000-labels",
            credential({"spec.secretTemplate.labels": {f"l{i}": "x" for i in range(10_000)}}),
            "spec.secretTemplate.labels", "Too many"),
    refused("credential-secret-10000-annotations",
            credential({"spec.secretTemplate.annotations": {f"a{i}": "x" for i in range(10_000)}}),
            "spec.secretTemplate.annotations", "Too many"),
    refused("credential-secret-label-value-integer",
            credential({"spec.secretTemplate.labels": {"team": 7}}),
            "spec.secretTemplate.labels.team", "must be of type string"),
    refused("credential-secret-label-value-64-characters",
            credential({"spec.secretTemplate.labels": {"team": "t" * 64}}),
            "spec.secretTemplate.labels.team", "Too long"),
    refused("credential-secret-annotation-value-4097-characters",
            credential({"spec.secretTemplate.annotations": {"note": "n" * 4097}}),
            "spec.secretTemplate.annotations.note", "Too long"),
    refused("credential-secret-annotations-over-255-kib",
            credential({"spec.secretTemplate.annotations": {
                f"note-{i}": "n" * 4096 for i in range(64)}}),
            "spec.secretTemplate.annotations", "at most 255 KiB"),
    refused("credential-secret-annotations-one-byte-over-255-kib",
            credential({"spec.secretTemplate.annotations": annotations_of(ANNOTATION_BYTES + 1)}),
            "spec.secretTemplate.annotations", "at most 255 KiB"),
    refused("credential-secret-annotations-multibyte-over-255-kib",
            credential({"spec.secretTemplate.annotations": {
                f"note-{i}": "\U0001f511" * 1100 for i in range(64)}}),
            "spec.secretTemplate.annotations", "at most 255 KiB"),
    refused("credential-secret-label-key-cyrillic",
            credential({"spec.secretTemplate.labels": {f"t{CYRILLIC_E}am": "a"}}),
            "spec.secretTemplate.labels", "valid Kubernetes label keys"),
    refused("credential-secret-label-claims-to-be-managed-by-someone-else",
            credential({"spec.secretTemplate.labels": {"app.kubernetes.io/managed-by": "argo"}}),
            "spec.secretTemplate.labels", "kube-iam sets on the generated Secret"),
    refused("credential-secret-annotation-forges-the-hash",
            credential({"spec.secretTemplate.annotations": {
                "iam.kubeiam.io/secret-hash": "sha256:" + "0" * 64}}),
            "spec.secretTemplate.annotations", "kube-iam sets on the generated Secret"),
    refused("credential-secret-annotation-forges-the-proof",
            credential({"spec.secretTemplate.annotations": {
                "iam.kubeiam.io/secret-proof": "v1.k." + "0" * 64}}),
            "spec.secretTemplate.annotations", "kube-iam sets on the generated Secret"),
    refused("credential-secret-label-forges-the-credential",
            credential({"spec.secretTemplate.labels": {"iam.kubeiam.io/credential": "other"}}),
            "spec.secretTemplate.labels", "kube-iam's values would replace them"),
    refused("credential-secret-key-dot", credential({"spec.secretTemplate.keys.clientId": "."}),
            "spec.secretTemplate.keys.clientId", "'.'"),
    refused("credential-secret-key-dot-dot",
            credential({"spec.secretTemplate.keys.clientSecret": ".."}),
            "spec.secretTemplate.keys.clientSecret", "'..'"),
    refused("credential-secret-key-starts-with-dot-dot",
            credential({"spec.secretTemplate.keys.tokenUrl": "..data"}),
            "spec.secretTemplate.keys.tokenUrl", "'..'"),
    refused("credential-secret-keys-all-the-same",
            credential({"spec.secretTemplate.keys": {
                "clientId": "k", "clientSecret": "k", "tokenUrl": "k", "expiresAt": "k"}}),
            "spec.secretTemplate.keys", "four different Secret keys"),
    refused("credential-secret-keys-unknown-key",
            credential({"spec.secretTemplate.keys.password": "pw"}),
            "spec.secretTemplate.keys.password", "unknown field"),
    # -- ServiceAccountCredential: changes after creation -----------------------------------------
    refused("credential-unrevoke-by-null-patch", credential(),
            "spec.revoked", "cannot go back to false",
            before=credential({"spec.revoked": True, "spec.serviceAccountName": CHANGED}),
            patch={"spec": {"revoked": None}}),
    refused("credential-swap-expires-in-for-expires-at", credential(),
            "spec.expiresAt", "immutable",
            before=credential({"spec.expiresIn": "720h", "spec.serviceAccountName": CHANGED}),
            patch={"spec": {"expiresIn": None, "expiresAt": "2030-01-01T00:00:00Z"}}),
    refused("credential-move-to-a-look-alike-account", credential(),
            "spec.serviceAccountName", "should match",
            before=credential({"spec.serviceAccountName": CHANGED}),
            patch={"spec": {"serviceAccountName": f"pip{CYRILLIC_E}line"}}),
    # -- FederationTrust: the issuer ---------------------------------------------------------------
    refused("trust-issuer-javascript", trust({"spec.issuer": "javascript:alert(1)"}),
            "spec.issuer", "https URL"),
    refused("trust-issuer-an-integer", trust({"spec.issuer": 443}),
            "spec.issuer", "must be of type string"),
    refused("trust-issuer-a-list", trust({"spec.issuer": [GITHUB]}),
            "spec.issuer", "must be of type string"),
    refused("trust-issuer-with-user-info", trust({"spec.issuer": "https://admin:pw@issuer.example"}),
            "spec.issuer", "user info"),
    refused("trust-issuer-with-query", trust({"spec.issuer": "https://issuer.example/?tenant=x"}),
            "spec.issuer", "query"),
    refused("trust-issuer-with-fragment", trust({"spec.issuer": "https://issuer.example/#x"}),
            "spec.issuer", "fragment"),
    refused("trust-issuer-cyrillic-look-alike",
            trust({"spec.issuer": f"https://t{CYRILLIC_O}ken.actions.githubusercontent.com"}),
            "spec.issuer", "ASCII"),
    refused("trust-issuer-percent-encoded-look-alike",
            trust({"spec.issuer": "https://t%D0%BEken.actions.githubusercontent.com"}),
            "spec.issuer", "must not percent-encode its host"),
    refused("trust-jwks-uri-percent-encoded-host",
            trust({"spec.jwks": REMOVE, "spec.jwksUri": "https://issuer%2Eexample/jwks"}),
            "spec.jwksUri", "must not percent-encode its host"),
    refused("trust-issuer-gains-a-trailing-slash", trust({"spec.issuer": ISSUER + "/"}),
            "spec.issuer", "immutable", before=trust()),
    refused("trust-jwks-uri-with-user-info",
            trust({"spec.jwks": REMOVE, "spec.jwksUri": "https://u:p@issuer.example/jwks"}),
            "spec.jwksUri", "user info"),
    # -- FederationTrust: audiences, condition, keys, sizes ---------------------------------------
    refused("trust-audiences-a-string", trust({"spec.audiences": "sts.example.com"}),
            "spec.audiences", "must be of type array"),
    refused("trust-audience-twice", trust({"spec.audiences": ["sts", "sts"]}),
            "spec.audiences[1]", "Duplicate value"),
    refused("trust-audience-513-characters", trust({"spec.audiences": ["a" * 513]}),
            "spec.audiences[0]", "Too long"),
    refused("trust-condition-an-object", trust({"spec.condition": {"cel": "true"}}),
            "spec.condition.cel", "unknown field"),
    refused("trust-condition-100-kib", trust({"spec.condition": "true && " * 12_800 + "true"}),
            "spec.condition", "Too long"),
    refused("trust-subject-empty", trust({"spec.subject": ""}),
            "spec.subject", "at least 1"),
    refused("trust-10000-cidrs", trust({"spec.allowSourceCidrs": cidrs(10_000)}),
            "spec.allowSourceCidrs", "Too many"),
    refused("trust-10000-scoped-roles",
            trust({"spec.scopedRoles": [f"r{i}" for i in range(10_000)]}),
            "spec.scopedRoles", "Too many"),
    refused("trust-jwks-a-string", trust({"spec.jwks": "garbage"}),
            "spec.jwks", "must be of type object"),
    refused("trust-jwks-keys-an-object", trust({"spec.jwks": {"keys": JWK}}),
            "spec.jwks.keys.kty", "unknown field"),
    refused("trust-jwks-21-keys", trust({"spec.jwks": {"keys": [JWK] * 21}}),
            "spec.jwks.keys", "Too many"),
    refused("trust-jwk-key-type-an-integer", trust({"spec.jwks": {"keys": [{"kty": 3}]}}),
            "spec.jwks.keys[0].kty", "must be of type string"),
    refused("trust-disabled-a-string", trust({"spec.disabled": "false"}),
            "spec.disabled", "must be of type boolean"),
    refused("trust-unknown-spec-field", trust({"spec.allowAnyToken": True}),
            "spec.allowAnyToken", "unknown field"),
]  # fmt: skip


@dataclass(frozen=True)
class Judged:
    """A manifest the API server admits but the operator must refuse: Ready becomes False with
    `reason`, and the message names `field`. `state` is the credential's state, if any.

    `taken` names a Secret that exists before, written by someone else or, with `by_credential`,
    issued to another credential: the case must leave it exactly as it was.
    """

    manifest: Manifest
    reason: str
    field: str
    state: str | None = None
    taken: str | None = None
    by_credential: bool = False


def judged(id: str, manifest: Manifest, reason: str, field: str, **extra: Any) -> Any:
    state = "Failed" if manifest["kind"] == "ServiceAccountCredential" else None
    return pytest.param(Judged(manifest, reason, field, state=state, **extra), id=id)


JUDGED = [
    # -- credentials: only the operator knows the time of creation and the organisation's policy --
    judged("credential-expires-at-in-the-past",
           credential({"spec.expiresAt": "2000-01-01T00:00:00Z"}),
           "InvalidExpiry", "spec.expiresAt"),
    judged("credential-expires-at-year-1", credential({"spec.expiresAt": "0001-01-01T00:00:00Z"}),
           "InvalidExpiry", "spec.expiresAt"),
    judged("credential-expires-at-year-9999",
           credential({"spec.expiresAt": "9999-12-31T23:59:59Z"}),
           "LifetimeExceeded", "spec.expiresAt"),
    judged("credential-expires-in-one-hour-over-a-year", credential({"spec.expiresIn": "8761h"}),
           "LifetimeExceeded", "spec.expiresIn"),
    judged("credential-expires-in-the-longest-go-duration",
           credential({"spec.expiresIn": "2562047h47m16.854775807s"}),
           "LifetimeExceeded", "spec.expiresIn"),
    judged("credential-expires-in-one-nanosecond", credential({"spec.expiresIn": "1ns"}),
           "InvalidExpiry", "spec.expiresIn"),
    judged("credential-secret-name-of-a-foreign-secret",
           credential({"spec.secretName": "someone-elses"}),
           "SecretConflict", "someone-elses", taken="someone-elses"),
    judged("credential-secret-name-of-another-credentials-secret",
           credential({"spec.secretName": "victim"}),
           "SecretConflict", "victim", taken="victim", by_credential=True),
    # -- trusts: the condition compiles only in the operator --------------------------------------
    judged("trust-condition-syntax-error", trust({"spec.condition": "claims.sub = 'ci'"}),
           "ConditionInvalid", "spec.condition"),
    judged("trust-condition-unknown-variable", trust({"spec.condition": "request.sub == 'ci'"}),
           "ConditionInvalid", "spec.condition"),
    judged("trust-condition-nested-200-deep",
           trust({"spec.condition": "(" * 200 + "claims.sub == 'ci'" + ")" * 200}),
           "ConditionInvalid", "spec.condition"),
    judged("trust-condition-unterminated-string", trust({"spec.condition": "claims.sub == 'ci"}),
           "ConditionInvalid", "spec.condition"),
    judged("trust-condition-null-bytes", trust({"spec.condition": "claims.sub\u0000== 'ci'"}),
           "ConditionInvalid", "spec.condition"),
    judged("trust-condition-invalid-regular-expression",
           trust({"spec.condition": "claims.sub.matches('ci-(main')"}),
           "ConditionInvalid", "spec.condition"),
    judged("trust-github-condition-pins-no-repository",
           trust({"spec.issuer": GITHUB, "spec.condition": "claims.ref == 'refs/heads/main'"}),
           "ConditionTooBroad", "spec.condition"),
    judged("trust-github-condition-pins-under-negation",
           trust({"spec.issuer": GITHUB, "spec.condition": "!(claims.repository != 'acme/api')"}),
           "ConditionTooBroad", "spec.condition"),
    # -- trusts: where the operator will not connect (the guard's own words, which a failed
    # connection to the same address would not say) ---------------------------------------------
    judged("trust-issuer-cloud-metadata-address",
           trust({"spec.issuer": "https://169.254.169.254", "spec.jwks": REMOVE}),
           "IssuerUnreachable", "points at 169.254.169.254, a link-local address, which issuers"),
    judged("trust-issuer-cloud-metadata-address-inside-6to4",
           trust({"spec.issuer": "https://[2002:a9fe:a9fe::1]", "spec.jwks": REMOVE}),
           "IssuerUnreachable", "a link-local address (169.254.169.254, inside 6to4), which"),
    judged("trust-issuer-loopback",
           trust({"spec.issuer": "https://127.0.0.1:6443", "spec.jwks": REMOVE}),
           "IssuerUnreachable", "points at 127.0.0.1, a loopback address, which issuers"),
    judged("trust-jwks-uri-private-address",
           trust({"spec.jwks": REMOVE, "spec.jwksUri": "https://10.0.0.1/keys"}),
           "IssuerUnreachable", "points at 10.0.0.1, a private address, which issuers"),
    # -- trusts: inline keys are only parsed by the operator --------------------------------------
    judged("trust-jwks-garbage-modulus", trust({"spec.jwks": {"keys": [rsa_key(n="!!!")]}}),
           "JwksInvalid", "spec.jwks"),
    judged("trust-jwks-rsa-modulus-of-a-megabit",
           trust({"spec.jwks": {"keys": [rsa_key(n="x8fH" * 43_691)]}}),
           "JwksInvalid", "spec.jwks"),
    judged("trust-jwks-modulus-false-from-yaml",
           trust({"spec.jwks": {"keys": [rsa_key(n=False)]}}),
           "JwksInvalid", "spec.jwks"),
    judged("trust-jwks-private-key", trust({"spec.jwks": {"keys": [{**JWK, "d": "c2VjcmV0"}]}}),
           "JwksInvalid", "spec.jwks"),
    judged("trust-jwks-symmetric-key",
           trust({"spec.jwks": {"keys": [{"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}]}}),
           "JwksInvalid", "spec.jwks"),
    judged("trust-jwks-repeated-kid", trust({"spec.jwks": {"keys": [JWK, JWK]}}),
           "JwksInvalid", "spec.jwks"),
    judged("trust-jwks-unknown-key-type", trust({"spec.jwks": {"keys": [{"kty": "XYZ"}]}}),
           "JwksInvalid", "spec.jwks"),
]  # fmt: skip


# At the edge of the rules, on the side that must be admitted: a rule a little too strict would
# refuse these. A credential is issued (on an account of its own) and its Secret written as the
# template says; a trust is created in a dry run.
ADMITTED = [
    pytest.param(credential({"metadata.name": "c" * 63}), id="credential-name-63-characters"),
    pytest.param(credential({"spec.secretTemplate.annotations": annotations_of(ANNOTATION_BYTES)}),
                 id="credential-secret-annotations-of-exactly-255-kib"),
    pytest.param(credential({"spec.secretTemplate.keys": {"clientId": ".hidden",
                                                          "clientSecret": "a..b"}}),
                 id="credential-secret-keys-hidden-and-with-a-double-dot-inside"),
    pytest.param(credential({"spec.secretTemplate": {
                     "labels": {"iam.kubeiam.io.example/x": "a", "iam.kubeiam.io/other": "b"},
                     "annotations": {"app.kubernetes.io/managed-by": "argo"}}}),
                 id="credential-secret-keys-kube-iam-does-not-set"),
    pytest.param(trust({"spec.issuer": "https://issuer.hostile.example:8443/tenants/acme"}),
                 id="trust-issuer-with-a-port-and-a-path"),
    pytest.param(trust({"spec.issuer": "https://issuer.hostile.example/tenant%20a"}),
                 id="trust-issuer-percent-encoded-in-the-path"),
    pytest.param(trust({"spec.jwks": REMOVE,
                        "spec.jwksUri": "https://keys.hostile.example:8443/v1/keys?set=2"}),
                 id="trust-jwks-uri-with-a-port-a-path-and-a-query"),
]  # fmt: skip


@dataclass
class Ground:
    """Where the table runs: one namespace with the accounts the cases name, and the processes
    that must survive it (the operator, and the session's webhook server if there is one), each
    with the size of its log before the table, so only what the table caused is read. `ran`
    holds the ids of the cases that ran, so the survivor test knows it came after some."""

    namespace: str
    processes: dict[str, tuple[OperatorProcess, int]]
    ran: list[str]


def _log_size(process: OperatorProcess) -> int:
    log = process.log_path
    return log.stat().st_size if log is not None and log.exists() else 0


@pytest.fixture(scope="module")
def ground(cluster: ClusterHandle, session_operator: OperatorProcess) -> Iterator[Ground]:
    if not session_operator.running:
        session_operator.start()
    processes = {"operator": session_operator}
    if cluster.admission is not None:
        processes["webhook"] = cluster.admission
    namespace = f"t-hostile-input-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", namespace)
    for name in ("pipeline", CHANGED, VICTIM):
        cluster.apply(json.dumps(account({"metadata.name": name})), namespace)
    try:
        yield Ground(namespace, {k: (p, _log_size(p)) for k, p in processes.items()}, [])
    finally:
        keep_for_leak_scan(cluster, namespace)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def named(manifest: Manifest, case_id: str) -> Manifest:
    """The case's manifest under a name of its own, unless the case is about the name."""
    if manifest["metadata"]["name"] != PLACEHOLDER:
        return manifest
    slug = re.sub(r"[^a-z0-9]+", "-", case_id.lower())[:63].strip("-")
    return edited(manifest, {"metadata.name": slug})


def _case_id(request: pytest.FixtureRequest) -> str:
    return str(request.node.callspec.id)


def _shown(case_id: str, manifest: Manifest, limit: int = 2000) -> str:
    """The case for a failure message: its id and the start of its manifest (a case may hold a
    1 MiB string or 10,000 CIDRs)."""
    text = json.dumps(manifest)
    more = f"... ({len(text):,} characters in all)" if len(text) > limit else ""
    return f"{case_id}: {text[:limit]}{more}"


@pytest.mark.parametrize("case", REFUSALS)
def test_refused_naming_the_field(
    cluster: ClusterHandle, ground: Ground, case: Refusal, request: pytest.FixtureRequest
) -> None:
    ground.ran.append(_case_id(request))
    manifest = named(case.manifest, _case_id(request))
    ns = ground.namespace
    if case.before is not None:
        before = named(case.before, _case_id(request))
        cluster.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(before))
    if case.patch is not None:
        resource = RESOURCES[manifest["kind"]]
        name = manifest["metadata"]["name"]
        result = cluster.kubectl(
            "patch", resource, name, "-n", ns, "--type=merge", "--dry-run=server",
            "-p", json.dumps(case.patch), check=False,
        )  # fmt: skip
    else:
        verb = "apply" if case.before is not None else "create"
        result = cluster.kubectl(
            verb, "-n", ns, "--dry-run=server", "-f", "-", input=json.dumps(manifest), check=False
        )
    error = result.stderr
    assert result.returncode != 0, (
        f"accepted: {_shown(_case_id(request), manifest)}\n{result.stdout[:2000]}"
    )
    assert "InternalError" not in error, error[:2000]
    assert "Internal error" not in error, error[:2000]
    # A body past a server's size limit is answered 413, never by the rule naming the field.
    assert not re.search(r"\b413\b", error), error[:2000]
    assert "Too Large" not in error, error[:2000]
    assert case.field in error, error[:2000]
    for words in case.words:
        assert words in error, error[:2000]


def _ready(cluster: ClusterHandle, resource: str, name: str, namespace: str) -> Manifest | None:
    """The Ready condition of the object's current generation, once it has one."""
    obj = cluster.get(resource, name, namespace)
    if obj is None:
        return None
    observed = (obj.get("status") or {}).get("observedGeneration")
    if observed != obj["metadata"]["generation"]:
        return None
    try:
        return ready(obj)
    except StopIteration:
        return None


def _fingerprint(cluster: ClusterHandle, namespace: str, name: str) -> tuple[str, ...] | None:
    """Which Secret of that name exists and what it holds, without its data: the UID, the
    resourceVersion and a hash of the data. Safe to print, unlike the Secret itself."""
    secret = cluster.get("secret", name, namespace)
    if secret is None:
        return None
    data = json.dumps(secret.get("data") or {}, sort_keys=True).encode()
    metadata = secret["metadata"]
    return (metadata["uid"], metadata["resourceVersion"], hashlib.sha256(data).hexdigest())


def _take(cluster: ClusterHandle, namespace: str, name: str, by_credential: bool) -> None:
    """A Secret of that name, written by someone else or issued to a credential of that name
    (on an account of its own, so the table's credentials can never leave it Pending)."""
    if by_credential:
        victim = credential({"metadata.name": name, "spec.serviceAccountName": VICTIM})
        cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(victim))
        wait_state(cluster, namespace, name, "Active")
        read_secret(cluster, namespace, name)  # so the leak scan looks for this secret too
    else:
        cluster.kubectl("create", "secret", "generic", name, "-n", namespace, "--from-literal=a=b")


@pytest.mark.parametrize("case", JUDGED)
def test_judged_by_the_operator(
    cluster: ClusterHandle, ground: Ground, case: Judged, request: pytest.FixtureRequest
) -> None:
    ground.ran.append(_case_id(request))
    manifest = named(case.manifest, _case_id(request))
    ns, name = ground.namespace, manifest["metadata"]["name"]
    resource = RESOURCES[manifest["kind"]]
    if case.taken is not None:
        _take(cluster, ns, case.taken, case.by_credential)
    # Taken before the case is applied: the Secret as it was, or None when there is none.
    before = _fingerprint(cluster, ns, case.taken or name)
    result = cluster.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(manifest), check=False)
    assert result.returncode == 0, f"refused, but only the operator can judge it: {result.stderr}"

    condition = wait_for(
        lambda: _ready(cluster, resource, name, ns),
        what=f"{resource} {name} to get a Ready condition",
    )
    assert (condition["status"], condition["reason"]) == ("False", case.reason), condition
    assert case.field in condition["message"], condition["message"]
    if case.state is not None:
        obj = cluster.get(resource, name, ns)
        assert obj is not None
        assert obj["status"]["state"] == case.state, obj["status"]
        # A refused credential writes no Secret, and leaves one that was there as it was.
        after = _fingerprint(cluster, ns, case.taken or name)
        assert after == before, (
            f"the Secret {case.taken or name} was written or changed by a refused credential"
            " (compared by UID, resourceVersion and a hash of its data)"
        )


@pytest.mark.parametrize("manifest", ADMITTED)
def test_admitted_at_the_edge_of_the_rules(
    cluster: ClusterHandle, ground: Ground, manifest: Manifest, request: pytest.FixtureRequest
) -> None:
    ground.ran.append(_case_id(request))
    manifest = named(manifest, _case_id(request))
    ns, name = ground.namespace, manifest["metadata"]["name"]
    if manifest["kind"] != "ServiceAccountCredential":
        result = cluster.kubectl(
            "create", "-n", ns, "--dry-run=server", "-f", "-", input=json.dumps(manifest),
            check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"refused: {_case_id(request)}\n{result.stderr[:2000]}"
        return
    owner = named(account(), _case_id(request))["metadata"]["name"]
    cluster.apply(json.dumps(account({"metadata.name": owner})), ns)
    manifest = edited(manifest, {"spec.serviceAccountName": owner})
    result = cluster.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(manifest), check=False)
    assert result.returncode == 0, f"refused: {_case_id(request)}\n{result.stderr[:2000]}"
    issued = wait_state(cluster, ns, name, "Active")
    secret = read_secret(cluster, ns, issued["status"]["secretName"])
    template = manifest["spec"].get("secretTemplate") or {}
    keys = SecretKeys.model_validate(template.get("keys") or {}).resolved()
    assert set(secret.data) == set(keys.values())
    for where in ("labels", "annotations"):
        wanted = template.get(where) or {}
        written = secret.metadata.get(where) or {}
        assert {k: written.get(k) for k in wanted} == wanted, f"{where} not as the template says"


def test_the_operator_survived_and_keeps_serving(cluster: ClusterHandle, ground: Ground) -> None:
    """After every case: the process still runs, logged no unhandled error, and issues a valid
    credential and checks a valid trust as it did before (on an account of their own, so the
    table's credentials take no slot from them)."""
    # Alone (-k) it would prove nothing: it is about what the table did to the processes.
    assert ground.ran, "no case of the table ran before this test: run it with the table"
    ns = ground.namespace
    cluster.apply(json.dumps(account({"metadata.name": "survivor"})), ns)
    cluster.apply(json.dumps(credential({"metadata.name": "after-the-table",
                                         "spec.serviceAccountName": "survivor"})), ns)  # fmt: skip
    cluster.apply(json.dumps(trust({"metadata.name": "after-the-table",
                                    "spec.serviceAccountName": "survivor"})), ns)  # fmt: skip
    issued = wait_state(cluster, ns, "after-the-table", "Active")
    secret = read_secret(cluster, ns, issued["status"]["secretName"])
    assert set(secret.data) == {"client-id", "client-secret", "token-url", "expires-at"}
    cluster.wait_condition("iamtrust", "after-the-table", ns)

    for what, (process, offset) in ground.processes.items():
        assert process.running, f"the {what} exited:\n{process.log_tail()}"
        if process.log_path is None:  # it runs in the cluster: its log is not ours to read
            continue
        with process.log_path.open("rb") as log:
            log.seek(offset)
            written = log.read().decode(errors="replace")
        where = written.find("Traceback")
        assert where < 0, f"the {what} logged an unhandled error:\n{written[where:][:6000]}"
