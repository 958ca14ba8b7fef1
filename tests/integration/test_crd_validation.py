"""The CRDs' schemas and CEL rules: the API server refuses bad objects, naming the field."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

import pytest

from kubeiam.api.common import API_VERSION

from .support import ClusterHandle

pytestmark = pytest.mark.integration

Manifest = dict[str, Any]
REMOVE = object()

ACCOUNT: Manifest = {
    "apiVersion": API_VERSION,
    "kind": "ServiceAccount",
    "metadata": {"name": "pipeline"},
    "spec": {
        "displayName": "Deploy pipeline",
        "description": "Deploys the team's services from CI.",
        "scope": "project",
        "scopeId": "team-a",
        "roles": ["compute.deployer", "storage.reader"],
        "owners": [{"kind": "Group", "name": "team-a-admins"}],
    },
}
CREDENTIAL: Manifest = {
    "apiVersion": API_VERSION,
    "kind": "ServiceAccountCredential",
    "metadata": {"name": "ci"},
    "spec": {
        "serviceAccountName": "pipeline",
        "displayName": "CI runner",
        "expiresIn": "720h",
    },
}
TRUST: Manifest = {
    "apiVersion": API_VERSION,
    "kind": "FederationTrust",
    "metadata": {"name": "github"},
    "spec": {
        "serviceAccountName": "pipeline",
        "displayName": "GitHub Actions of acme/deploy",
        "issuer": "https://token.actions.githubusercontent.com",
        "audiences": ["https://github.com/acme"],
        "condition": "claims.repository == 'acme/deploy'",
    },
}
JWK: Manifest = {
    "kty": "EC",
    "kid": "key-1",
    "crv": "P-256",
    "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
    "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
}


def edited(base: Manifest, changes: dict[str, Any]) -> Manifest:
    """A copy of `base` with dotted paths set to new values, or removed with REMOVE."""
    manifest = copy.deepcopy(base)
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = manifest
        for key in parents:
            node = node.setdefault(key, {})
        if value is REMOVE:
            node.pop(last, None)
        else:
            node[last] = value
    return manifest


def account(changes: dict[str, Any] | None = None) -> Manifest:
    return edited(ACCOUNT, changes or {})


def credential(changes: dict[str, Any] | None = None) -> Manifest:
    return edited(CREDENTIAL, changes or {})


def trust(changes: dict[str, Any] | None = None) -> Manifest:
    return edited(TRUST, changes or {})


@dataclass(frozen=True)
class Refusal:
    """A manifest the API server must refuse, and what its error must say.

    With `before`, that manifest is applied first and the refusal is of the change to
    `manifest`: the way to exercise transition rules (immutability, revocation).
    """

    manifest: Manifest
    expect: str
    before: Manifest | None = None


def refused(id: str, manifest: Manifest, expect: str, *, before: Manifest | None = None) -> Any:
    return pytest.param(Refusal(manifest, expect, before), id=id)


LONG_NAME = "a" * 64

REFUSALS = [
    # -- ServiceAccount ------------------------------------------------------------------------
    refused("account-name-starts-with-digit", account({"metadata.name": "1pipeline"}),
            "metadata.name must be 1 to 63 characters"),
    refused("account-name-has-dot", account({"metadata.name": "pipe.line"}),
            "metadata.name must be 1 to 63 characters"),
    refused("account-name-64-characters", account({"metadata.name": LONG_NAME}),
            "metadata.name must be 1 to 63 characters"),
    refused("account-display-name-missing", account({"spec.displayName": REMOVE}),
            "spec.displayName: Required value"),
    refused("account-display-name-empty", account({"spec.displayName": ""}),
            "spec.displayName"),
    refused("account-display-name-256-characters", account({"spec.displayName": "x" * 256}),
            "spec.displayName: Too long"),
    refused("account-description-1025-characters", account({"spec.description": "x" * 1025}),
            "spec.description: Too long"),
    refused("account-scope-unknown", account({"spec.scope": "team"}),
            'spec.scope: Unsupported value: "team"'),
    refused("account-scope-missing", account({"spec.scope": REMOVE}),
            "spec.scope: Required value"),
    refused("account-project-scope-without-scope-id", account({"spec.scopeId": REMOVE}),
            "spec.scopeId is required when spec.scope is project"),
    refused("account-role-uppercase", account({"spec.roles": ["Compute.Deployer"]}),
            "spec.roles[0]"),
    refused("account-role-trailing-dot", account({"spec.roles": ["compute."]}),
            "spec.roles[0]"),
    refused("account-role-duplicate",
            account({"spec.roles": ["compute.deployer", "compute.deployer"]}),
            "spec.roles[1]: Duplicate value"),
    refused("account-65-roles", account({"spec.roles": [f"role-{i}" for i in range(65)]}),
            "spec.roles: Too many"),
    refused("account-owner-kind-unknown",
            account({"spec.owners": [{"kind": "Robot", "name": "r2d2"}]}),
            "spec.owners[0].kind: Unsupported value"),
    refused("account-owner-name-missing", account({"spec.owners": [{"kind": "User"}]}),
            "spec.owners[0].name: Required value"),
    refused("account-disabled-not-boolean", account({"spec.disabled": "yes"}),
            "spec.disabled"),
    # -- ServiceAccountCredential ----------------------------------------------------------------
    refused("credential-account-missing", credential({"spec.serviceAccountName": REMOVE}),
            "spec.serviceAccountName: Required value"),
    refused("credential-account-name-uppercase",
            credential({"spec.serviceAccountName": "Pipeline"}),
            "spec.serviceAccountName"),
    refused("credential-display-name-empty", credential({"spec.displayName": ""}),
            "spec.displayName"),
    refused("credential-expires-at-and-expires-in",
            credential({"spec.expiresAt": "2030-01-01T00:00:00Z"}),
            "spec.expiresAt and spec.expiresIn are mutually exclusive"),
    refused("credential-expires-in-days", credential({"spec.expiresIn": "30d"}),
            "spec.expiresIn must be a positive duration"),
    refused("credential-expires-in-zero", credential({"spec.expiresIn": "0h"}),
            "spec.expiresIn must be a positive duration"),
    refused("credential-expires-in-negative", credential({"spec.expiresIn": "-1h"}),
            "spec.expiresIn"),
    refused("credential-expires-at-not-a-timestamp",
            credential({"spec.expiresIn": REMOVE, "spec.expiresAt": "next year"}),
            "spec.expiresAt"),
    refused("credential-cidr-octet-too-large",
            credential({"spec.allowSourceCidrs": ["10.0.0.300/8"]}),
            "spec.allowSourceCidrs[0]: Invalid value"),
    refused("credential-cidr-without-prefix-length",
            credential({"spec.allowSourceCidrs": ["10.0.0.0/8", "192.168.1.1"]}),
            "allowSourceCidrs entries must be IPv4 or IPv6 CIDR blocks"),
    refused("credential-cidr-ipv6-prefix-too-long",
            credential({"spec.allowSourceCidrs": ["2001:db8::/129"]}),
            "spec.allowSourceCidrs[0]"),
    refused("credential-scoped-role-invalid",
            credential({"spec.scopedRoles": ["compute deployer"]}),
            "spec.scopedRoles[0]"),
    refused("credential-secret-name-invalid", credential({"spec.secretName": "My_Secret"}),
            "spec.secretName"),
    refused("credential-secret-keys-collide",
            credential({"spec.secretTemplate.keys": {"clientId": "id", "tokenUrl": "id"}}),
            "spec.secretTemplate.keys must name four different Secret keys"),
    refused("credential-secret-key-collides-with-a-default",
            credential({"spec.secretTemplate.keys": {"clientId": "client-secret"}}),
            "spec.secretTemplate.keys must name four different Secret keys"),
    refused("credential-secret-key-takes-the-ca-bundles-key",
            credential({"spec.secretTemplate.keys": {"clientSecret": "ca.crt"}}),
            "spec.secretTemplate.keys must not name the key ca.crt"),
    refused("credential-secret-key-has-space",
            credential({"spec.secretTemplate.keys": {"clientId": "client id"}}),
            "spec.secretTemplate.keys.clientId"),
    refused("credential-secret-label-value-invalid",
            credential({"spec.secretTemplate.labels": {"team": "a b"}}),
            "spec.secretTemplate.labels"),
    refused("credential-secret-label-key-invalid",
            credential({"spec.secretTemplate.labels": {"not a key!": "x"}}),
            "spec.secretTemplate.labels keys must be valid Kubernetes label keys"),
    refused("credential-secret-annotation-key-invalid",
            credential({"spec.secretTemplate.annotations": {"acme.example/": "x"}}),
            "spec.secretTemplate.annotations keys must be valid Kubernetes annotation keys"),
    refused("credential-secret-annotation-key-name-too-long",
            credential({"spec.secretTemplate.annotations": {"acme.example/" + "a" * 64: "x"}}),
            "spec.secretTemplate.annotations keys must be valid"),
    refused("credential-secret-too-many-labels",
            credential({"spec.secretTemplate.labels": {f"l{i}": "x" for i in range(65)}}),
            "spec.secretTemplate.labels"),
    refused("credential-deletion-policy-unknown",
            credential({"spec.secretDeletionPolicy": "Orphan"}),
            'spec.secretDeletionPolicy: Unsupported value: "Orphan"'),
    refused("credential-change-expires-in", credential({"spec.expiresIn": "24h"}),
            "spec.expiresIn is immutable", before=credential()),
    refused("credential-remove-expires-in", credential({"spec.expiresIn": REMOVE}),
            "spec.expiresIn is immutable", before=credential()),
    refused("credential-change-expires-at",
            credential({"spec.expiresIn": REMOVE, "spec.expiresAt": "2031-01-01T00:00:00Z"}),
            "spec.expiresAt is immutable",
            before=credential({"spec.expiresIn": REMOVE,
                               "spec.expiresAt": "2030-01-01T00:00:00Z"})),
    refused("credential-add-expires-at",
            credential({"spec.expiresIn": REMOVE, "spec.expiresAt": "2030-01-01T00:00:00Z"}),
            "spec.expiresAt is immutable",
            before=credential({"spec.expiresIn": REMOVE})),
    refused("credential-change-account", credential({"spec.serviceAccountName": "other"}),
            "spec.serviceAccountName is immutable", before=credential()),
    refused("credential-change-secret-name", credential({"spec.secretName": "ci-two"}),
            "spec.secretName is immutable", before=credential({"spec.secretName": "ci-one"})),
    refused("credential-add-secret-name", credential({"spec.secretName": "ci-secret"}),
            "spec.secretName is immutable", before=credential()),
    refused("credential-remove-secret-name", credential(),
            "spec.secretName is immutable", before=credential({"spec.secretName": "ci-secret"})),
    refused("credential-unrevoke", credential({"spec.revoked": False}),
            "spec.revoked cannot go back to false", before=credential({"spec.revoked": True})),
    refused("credential-unrevoke-by-dropping-the-field", credential(),
            "spec.revoked cannot go back to false", before=credential({"spec.revoked": True})),
    # -- FederationTrust -------------------------------------------------------------------------
    refused("trust-issuer-http", trust({"spec.issuer": "http://issuer.example.com"}),
            "spec.issuer must be an absolute https URL"),
    refused("trust-issuer-ftp", trust({"spec.issuer": "ftp://issuer.example.com"}),
            "spec.issuer must be an absolute https URL"),
    refused("trust-issuer-without-scheme", trust({"spec.issuer": "issuer.example.com"}),
            "spec.issuer must be an absolute https URL"),
    refused("trust-issuer-2049-characters",
            trust({"spec.issuer": "https://example.com/" + "a" * 2029}),
            "spec.issuer: Too long"),
    refused("trust-issuer-missing", trust({"spec.issuer": REMOVE}),
            "spec.issuer: Required value"),
    refused("trust-change-issuer", trust({"spec.issuer": "https://gitlab.com"}),
            "spec.issuer is immutable", before=trust()),
    refused("trust-change-account", trust({"spec.serviceAccountName": "other"}),
            "spec.serviceAccountName is immutable", before=trust()),
    refused("trust-jwks-and-jwks-uri",
            trust({"spec.jwksUri": "https://issuer.example.com/jwks",
                   "spec.jwks": {"keys": [JWK]}}),
            "spec.jwks and spec.jwksUri are mutually exclusive"),
    refused("trust-jwks-uri-http", trust({"spec.jwksUri": "http://issuer.example.com/jwks"}),
            "spec.jwksUri must be an absolute https URL"),
    refused("trust-jwks-without-keys", trust({"spec.jwks": {"keys": []}}),
            "spec.jwks.keys"),
    refused("trust-jwk-without-key-type", trust({"spec.jwks": {"keys": [{"kid": "key-1"}]}}),
            "spec.jwks.keys[0].kty: Required value"),
    refused("trust-audiences-empty", trust({"spec.audiences": []}),
            "spec.audiences"),
    refused("trust-17-audiences", trust({"spec.audiences": [f"aud-{i}" for i in range(17)]}),
            "spec.audiences: Too many"),
    refused("trust-condition-missing", trust({"spec.condition": REMOVE}),
            "spec.condition: Required value"),
    refused("trust-condition-empty", trust({"spec.condition": ""}),
            "spec.condition"),
    refused("trust-cidr-invalid", trust({"spec.allowSourceCidrs": ["everywhere"]}),
            "allowSourceCidrs entries must be IPv4 or IPv6 CIDR blocks"),
]  # fmt: skip


def apply(cluster: ClusterHandle, namespace: str, manifest: Manifest, *, check: bool = True) -> Any:
    if manifest["kind"] != "ServiceAccount":
        # Admission refuses a credential or trust whose account is missing; the schema is
        # checked before admission, so what these cases expect of it is unchanged.
        cluster.kubectl(
            "create", "-n", namespace, "-f", "-", input=json.dumps(ACCOUNT), check=False
        )
    return cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=check
    )


@pytest.mark.parametrize("case", REFUSALS)
def test_the_api_server_refuses(cluster: ClusterHandle, namespace: str, case: Refusal) -> None:
    if case.before is not None:
        apply(cluster, namespace, case.before)
    result = apply(cluster, namespace, case.manifest, check=False)
    assert result.returncode != 0, f"accepted: {json.dumps(case.manifest)}\n{result.stdout}"
    assert case.expect in result.stderr, result.stderr


def accepted(id: str, *manifests: Manifest) -> Any:
    """Manifests applied in order, each accepted: creations, then valid changes."""
    return pytest.param(manifests, id=id)


ACCEPTANCES = [
    accepted("account-organization-scope-minimal",
             account({"spec": {"displayName": "Billing exporter", "scope": "organization"}})),
    accepted("account-project-scope-full", account()),
    accepted("account-name-63-characters", account({"metadata.name": "a" * 63})),
    accepted("account-change-roles-owners-and-disable",
             account(),
             account({"spec.roles": ["compute.deployer"], "spec.disabled": True,
                      "spec.owners": [{"kind": "User", "name": "alice@example.com"}]})),
    accepted("credential-expires-in-with-cidrs-and-template",
             credential({"spec.expiresIn": "1h30m",
                          "spec.allowSourceCidrs": ["10.0.0.0/8", "2001:db8::/32"],
                          "spec.scopedRoles": ["compute.deployer"],
                          "spec.secretTemplate": {
                              "labels": {"team": "a"},
                              "annotations": {"example.com/owner": "team a"},
                              "keys": {"clientId": "CLIENT_ID",
                                       "clientSecret": "CLIENT_SECRET"}}})),
    accepted("credential-expires-at-with-secret-name-and-policy",
             credential({"spec.expiresIn": REMOVE, "spec.expiresAt": "2030-01-01T00:00:00Z",
                         "spec.secretName": "ci-client", "spec.requireDpop": True,
                         "spec.secretDeletionPolicy": "Delete"})),
    accepted("credential-without-expiry", credential({"spec.expiresIn": REMOVE})),
    accepted("credential-without-display-name", credential({"spec.displayName": REMOVE})),
    accepted("credential-template-keys-of-every-valid-shape",
             credential({"spec.secretTemplate": {
                 "labels": {"app.kubernetes.io/part-of": "ci", "Team_1.x": "a"},
                 "annotations": {"a" * 63: "x", "sub.acme.example/" + "b" * 63: "y"}}})),
    accepted("credential-change-mutable-fields-then-revoke",
             credential({"spec.secretName": "ci-client"}),
             credential({"spec.secretName": "ci-client", "spec.displayName": "CI runner (old)",
                         "spec.allowSourceCidrs": ["192.0.2.0/24"],
                         "spec.secretDeletionPolicy": "Retain"}),
             credential({"spec.secretName": "ci-client", "spec.revoked": True})),
    accepted("trust-with-jwks-uri",
             trust({"spec.jwksUri": "https://token.actions.githubusercontent.com/.well-known/jwks",
                    "spec.subject": "repo:acme/deploy:ref:refs/heads/main",
                    "spec.allowSourceCidrs": ["2001:db8::/32"]})),
    accepted("trust-with-inline-jwks", trust({"spec.jwks": {"keys": [JWK]}})),
    accepted("trust-change-audiences-condition-and-disable",
             trust(),
             trust({"spec.audiences": ["sts.example.com", "https://github.com/acme"],
                    "spec.condition": "claims.repository_owner == 'acme'",
                    "spec.disabled": True})),
]  # fmt: skip


@pytest.mark.parametrize("manifests", ACCEPTANCES)
def test_the_api_server_accepts(
    cluster: ClusterHandle, namespace: str, manifests: tuple[Manifest, ...]
) -> None:
    for manifest in manifests:
        result = apply(cluster, namespace, manifest, check=False)
        assert result.returncode == 0, f"refused: {json.dumps(manifest)}\n{result.stderr}"


def _get(cluster: ClusterHandle, namespace: str, resource: str, name: str) -> Manifest:
    result = cluster.kubectl("get", resource, name, "-n", namespace, "-o", "json")
    loaded: Manifest = json.loads(result.stdout)
    return loaded


def test_defaults_are_filled_in_by_the_api_server(cluster: ClusterHandle, namespace: str) -> None:
    apply(cluster, namespace, account())
    apply(cluster, namespace, credential())
    assert _get(cluster, namespace, "iamsa", "pipeline")["spec"]["disabled"] is False
    spec = _get(cluster, namespace, "iamcred", "ci")["spec"]
    assert spec["revoked"] is False
    assert spec["requireDpop"] is False
    assert "secretName" not in spec


def test_inline_key_material_is_kept(cluster: ClusterHandle, namespace: str) -> None:
    apply(cluster, namespace, trust({"spec.jwks": {"keys": [JWK]}}))
    stored = _get(cluster, namespace, "iamtrust", "github")["spec"]["jwks"]["keys"][0]
    assert stored == JWK
