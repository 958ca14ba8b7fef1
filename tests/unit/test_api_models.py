"""The API models and the CRDs generated from them, without a cluster."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from kubeiam.api import (
    FederationTrust,
    FederationTrustSpec,
    Scope,
    SecretKeys,
    ServiceAccount,
    ServiceAccountCredential,
    ServiceAccountCredentialSpec,
    ServiceAccountSpec,
)
from kubeiam.api.common import Resource
from kubeiam.api.crdgen import HEADER, RESOURCES, crd_documents, openapi_schema, render_crds

Schema = dict[str, Any]

CONDITIONS = [
    {
        "type": "Ready",
        "status": "True",
        "reason": "Active",
        "message": "The credential is active.",
        "observedGeneration": 2,
        "lastTransitionTime": "2025-06-01T12:00:00Z",
    }
]
METADATA = {
    "name": "pipeline",
    "namespace": "team-a",
    "uid": "0b6e2f2a-5d0c-4c53-9f44-0c1c8e7d1a11",
    "generation": 2,
    "resourceVersion": "4711",
    "creationTimestamp": "2025-06-01T12:00:00Z",
    "labels": {"app.kubernetes.io/part-of": "deploy"},
    "annotations": {"example.com/ticket": "OPS-1"},
    "finalizers": ["kopf.zalando.org/KopfFinalizerMarker"],
}
ACCOUNT = {
    "apiVersion": "iam.kubeiam.io/v1alpha1",
    "kind": "ServiceAccount",
    "metadata": METADATA,
    "spec": {
        "displayName": "Production deploy pipeline",
        "description": "Deploys the team's services to production from CI.",
        "scope": "project",
        "scopeId": "team-a",
        "roles": ["compute.deployer", "storage.reader"],
        "disabled": False,
        "owners": [{"kind": "Group", "name": "team-a-admins"}],
    },
    "status": {
        "observedGeneration": 2,
        "conditions": CONDITIONS,
        "createdBy": "alice@example.com",
        "clientId": "pipeline@team-a.acme.iam",
        "state": "Active",
        "activeCredentialCount": 1,
        "activeCredentials": [{"name": "ci", "uid": "4f9c1e7e-0000-4000-8000-000000000001"}],
        "createdAt": "2025-06-01T12:00:00Z",
    },
}
CREDENTIAL = {
    "apiVersion": "iam.kubeiam.io/v1alpha1",
    "kind": "ServiceAccountCredential",
    "metadata": {**METADATA, "name": "ci"},
    "spec": {
        "serviceAccountName": "pipeline",
        "displayName": "CI runner",
        "expiresIn": "720h",
        "allowSourceCidrs": ["10.0.0.0/8", "2001:db8::/32"],
        "scopedRoles": ["compute.deployer"],
        "requireDpop": True,
        "revoked": False,
        "secretName": "ci-client",
        "secretTemplate": {
            "labels": {"team": "a"},
            "annotations": {"example.com/rotate": "monthly"},
            "keys": {"clientId": "CLIENT_ID", "clientSecret": "CLIENT_SECRET"},
        },
        "secretDeletionPolicy": "Delete",
    },
    "status": {
        "observedGeneration": 2,
        "conditions": CONDITIONS,
        "createdBy": "alice@example.com",
        "credentialId": "c8f3k2m9q4",
        "clientId": "pipeline@team-a.acme.iam",
        "secretName": "ci-client",
        "state": "Active",
        "createdAt": "2025-06-01T12:00:05Z",
        "expiresAt": "2025-07-01T12:00:05Z",
        "effectiveRoles": ["compute.deployer"],
        "lastUsedAt": "2025-06-02T08:30:00.250000Z",
        "lastUsedIp": "10.1.2.3",
        "secretHash": "sha256:" + "ab" * 32,
        "secretDeletionPolicy": "Delete",
    },
}
TRUST = {
    "apiVersion": "iam.kubeiam.io/v1alpha1",
    "kind": "FederationTrust",
    "metadata": {**METADATA, "name": "github"},
    "spec": {
        "serviceAccountName": "pipeline",
        "displayName": "GitHub Actions of acme/deploy",
        "issuer": "https://token.actions.githubusercontent.com",
        "audiences": ["https://github.com/acme"],
        "subject": "repo:acme/deploy:ref:refs/heads/main",
        "condition": "claims.repository == 'acme/deploy'",
        "jwks": {"keys": [{"kty": "RSA", "kid": "k1", "use": "sig", "n": "0vx7", "e": "AQAB"}]},
        "allowSourceCidrs": ["192.0.2.0/24"],
        "scopedRoles": ["compute.deployer"],
        "disabled": False,
    },
    "status": {
        "observedGeneration": 2,
        "conditions": CONDITIONS,
        "createdBy": "alice@example.com",
        "effectiveRoles": ["compute.deployer"],
        "jwksKeyIds": ["k1"],
        "lastCheckedAt": "2025-06-01T12:00:10Z",
    },
}


def kind_id(model: type[Resource]) -> str:
    return model.names.kind


def properties(node: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Every property of a schema at any depth, with its path."""
    for name, child in node.get("properties", {}).items():
        yield f"{path}.{name}", child
        yield from properties(child, f"{path}.{name}")
    if "items" in node:
        yield from properties(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from properties(node["additionalProperties"], f"{path}[*]")


def nodes(node: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Every schema node, the root (path "") included, with its path."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from nodes(child, f"{path}.{name}")
    if "items" in node:
        yield from nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from nodes(node["additionalProperties"], f"{path}[*]")


@pytest.mark.parametrize("model", RESOURCES, ids=kind_id)
def test_every_property_has_a_description(model: type[Resource]) -> None:
    # metadata is the one exception: the API server forbids describing it in a CRD.
    missing = [
        path
        for path, schema in properties(openapi_schema(model))
        if path != ".metadata" and not schema.get("description", "").strip()
    ]
    assert not missing, f"properties without a description: {missing}"


@pytest.mark.parametrize("model", RESOURCES, ids=kind_id)
def test_the_schema_is_structural(model: type[Resource]) -> None:
    for path, schema in nodes(openapi_schema(model)):
        for key in ("$ref", "$defs", "anyOf", "allOf", "oneOf", "not", "title", "const"):
            assert key not in schema, f"{path} has {key}"
        assert "type" in schema, f"{path} has no type"
        if "properties" in schema:
            assert schema["type"] == "object", path
            assert "additionalProperties" not in schema, f"{path}: properties and a map at once"
        if "additionalProperties" in schema:
            assert isinstance(schema["additionalProperties"], dict), path
        assert schema.get("default", ...) is not None, f"{path} defaults to null"


def test_only_inline_keys_keep_unknown_fields() -> None:
    preserving = [
        (model.names.kind, path)
        for model in RESOURCES
        for path, schema in nodes(openapi_schema(model))
        if schema.get("x-kubernetes-preserve-unknown-fields")
    ]
    assert preserving == [("FederationTrust", ".spec.jwks.keys[]")]


def _referenced(schema: Schema, rule: str) -> Iterator[tuple[str, Schema]]:
    for reference in set(re.findall(r"\b(?:self|oldSelf)((?:\.[A-Za-z_]\w*(?![\w(]))*)", rule)):
        node = schema
        for name in filter(None, reference.split(".")):
            node = node["properties"][name]
        yield reference or "self", node


@pytest.mark.parametrize("model", RESOURCES, ids=kind_id)
def test_what_cel_rules_read_is_bounded(model: type[Resource]) -> None:
    """Unbounded strings and lists make the API server's cost estimate refuse a CRD."""
    for path, schema in nodes(openapi_schema(model)):
        for entry in schema.get("x-kubernetes-validations", []):
            assert entry["message"], f"{path}: a rule without a message"
            for reference, node in _referenced(schema, entry["rule"]):
                where = f"{path}: {reference} in {entry['rule']!r}"
                if node["type"] == "string":
                    assert {"maxLength", "enum", "format"} & node.keys(), f"{where} is unbounded"
                if node["type"] == "array":
                    assert "maxItems" in node, f"{where} is unbounded"


@pytest.mark.parametrize("model", RESOURCES, ids=kind_id)
def test_every_rule_message_names_a_field(model: type[Resource]) -> None:
    for path, schema in nodes(openapi_schema(model)):
        for entry in schema.get("x-kubernetes-validations", []):
            assert re.match(r"^(spec|metadata)\.\w+|^allowSourceCidrs ", entry["message"]), (
                f"{path}: {entry['message']!r}"
            )


def test_the_crds_name_group_version_and_kinds() -> None:
    documents = {doc["spec"]["names"]["kind"]: doc for doc in crd_documents()}
    assert set(documents) == {"ServiceAccount", "ServiceAccountCredential", "FederationTrust"}
    expected = {
        "ServiceAccount": (
            "serviceaccounts",
            "iamsa",
            ["State", "Client ID", "Active", "Ready", "Age"],
        ),
        "ServiceAccountCredential": (
            "serviceaccountcredentials",
            "iamcred",
            ["Display Name", "Account", "State", "Expires", "Secret", "Ready", "Age"],
        ),
        "FederationTrust": (
            "federationtrusts",
            "iamtrust",
            ["Display Name", "Account", "Issuer", "Ready", "Age"],
        ),
    }
    for kind, (plural, short_name, columns) in expected.items():
        spec = documents[kind]["spec"]
        assert documents[kind]["metadata"]["name"] == f"{plural}.iam.kubeiam.io"
        assert spec["group"] == "iam.kubeiam.io"
        assert spec["scope"] == "Namespaced"
        assert spec["names"]["plural"] == plural
        assert spec["names"]["shortNames"] == [short_name]
        assert spec["names"]["categories"] == ["iam"]
        [version] = spec["versions"]
        assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
        assert version["subresources"] == {"status": {}}
        assert [column["name"] for column in version["additionalPrinterColumns"]] == columns


def test_rendered_files_carry_the_header_and_parse_back() -> None:
    rendered = render_crds()
    assert sorted(rendered) == [
        "iam.kubeiam.io_federationtrusts.yaml",
        "iam.kubeiam.io_serviceaccountcredentials.yaml",
        "iam.kubeiam.io_serviceaccounts.yaml",
    ]
    by_name = {
        f"iam.kubeiam.io_{doc['spec']['names']['plural']}.yaml": doc for doc in crd_documents()
    }
    for name, text in rendered.items():
        assert text.startswith(HEADER)
        assert yaml.safe_load(text) == by_name[name]


@pytest.mark.parametrize(
    ("model", "document"),
    [(ServiceAccount, ACCOUNT), (ServiceAccountCredential, CREDENTIAL), (FederationTrust, TRUST)],
    ids=["ServiceAccount", "ServiceAccountCredential", "FederationTrust"],
)
def test_objects_round_trip_in_camel_case(model: type[Resource], document: Schema) -> None:
    given = copy.deepcopy(document)
    assert model.model_validate(given).to_kube() == document


def test_python_names_are_snake_case_and_the_wire_is_camel_case() -> None:
    spec = ServiceAccountSpec(display_name="Deploy", scope=Scope.PROJECT, scope_id="team-a")
    assert spec.to_kube() == {"displayName": "Deploy", "scope": "project", "scopeId": "team-a"}
    parsed = ServiceAccountSpec.model_validate({"displayName": "Deploy", "scope": "organization"})
    assert parsed.scope is Scope.ORGANIZATION
    assert parsed.disabled is False


def test_unknown_fields_are_ignored_not_refused() -> None:
    parsed = ServiceAccountSpec.model_validate(
        {"displayName": "Deploy", "scope": "organization", "addedInALaterVersion": 1}
    )
    assert "addedInALaterVersion" not in parsed.to_kube()


def test_inline_key_material_survives_parsing() -> None:
    parsed = FederationTrust.model_validate(TRUST)
    assert parsed.spec.jwks is not None
    assert parsed.spec.jwks.keys[0].to_kube()["n"] == "0vx7"


@pytest.mark.parametrize(
    "spec",
    [
        {"displayName": "", "scope": "organization"},
        {"displayName": "x" * 256, "scope": "organization"},
        {"displayName": "Deploy", "scope": "team"},
        {"displayName": "Deploy", "scope": "organization", "description": "x" * 1025},
        {"displayName": "Deploy", "scope": "organization", "roles": ["Compute.Deployer"]},
        {"displayName": "Deploy", "scope": "organization", "roles": ["compute."]},
        {"displayName": "Deploy", "scope": "organization", "owners": [{"kind": "Robot"}]},
        {"scope": "organization"},
    ],
    ids=[
        "empty-display-name",
        "display-name-too-long",
        "unknown-scope",
        "description-too-long",
        "role-uppercase",
        "role-trailing-dot",
        "owner-kind-unknown",
        "display-name-missing",
    ],
)
def test_invalid_account_specs_are_refused(spec: Schema) -> None:
    with pytest.raises(ValidationError):
        ServiceAccountSpec.model_validate(spec)


@pytest.mark.parametrize(
    "changes",
    [
        {"serviceAccountName": "Pipeline"},
        {"expiresIn": "30d"},
        {"expiresIn": "-1h"},
        {"secretName": "My_Secret"},
        {"secretDeletionPolicy": "Orphan"},
        {"secretTemplate": {"keys": {"clientId": "client id"}}},
    ],
    ids=[
        "account-name-uppercase",
        "duration-in-days",
        "negative-duration",
        "secret-name-not-dns",
        "unknown-deletion-policy",
        "secret-key-with-space",
    ],
)
def test_invalid_credential_specs_are_refused(changes: Schema) -> None:
    spec = {"serviceAccountName": "pipeline", "displayName": "CI", **changes}
    with pytest.raises(ValidationError):
        ServiceAccountCredentialSpec.model_validate(spec)


def test_display_name_of_credentials_and_trusts_is_optional() -> None:
    """As in the seeds' create APIs; unset, status.displayName is the object's name."""
    assert ServiceAccountCredentialSpec.model_validate({"serviceAccountName": "pipeline"})
    trust = {
        "serviceAccountName": "pipeline",
        "issuer": "https://token.actions.githubusercontent.com",
        "audiences": ["https://github.com/acme"],
        "condition": "claims.repository == 'acme/shop'",
    }
    assert FederationTrustSpec.model_validate(trust)
    with pytest.raises(ValidationError):
        ServiceAccountCredentialSpec.model_validate(
            {"serviceAccountName": "pipeline", "displayName": ""}
        )
    for model in (ServiceAccountCredential, FederationTrust):
        columns = {c.name: c.json_path for c in model.names.printer_columns}
        assert columns["Display Name"] == ".status.displayName"


def test_secret_keys_default_where_not_given() -> None:
    assert SecretKeys().resolved() == {
        "clientId": "client-id",
        "clientSecret": "client-secret",
        "tokenUrl": "token-url",
        "expiresAt": "expires-at",
    }
    assert SecretKeys(client_secret="CLIENT_SECRET").resolved()["clientSecret"] == "CLIENT_SECRET"


def test_the_api_package_imports_neither_kopf_nor_the_kubernetes_client() -> None:
    probe = (
        "import sys, kubeiam.api, kubeiam.api.crdgen; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'kopf', 'kubernetes'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_credential_name_limit_binds_on_create_only() -> None:
    """A credential stored before the 63-character rule existed must still take status patches
    and lose its finalizer; a root rule that ran on every write would refuse them all."""
    rules = openapi_schema(ServiceAccountCredential)["x-kubernetes-validations"]
    (rule,) = [entry for entry in rules if entry.get("fieldPath") == ".metadata.name"]
    assert rule["optionalOldSelf"] is True
    assert rule["rule"] == "oldSelf.hasValue() || (size(self.metadata.name) <= 63)"
