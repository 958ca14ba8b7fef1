"""What kubectl teaches a person about the API: explain, categories, short names, columns."""

from __future__ import annotations

import pytest

from .support import ClusterHandle

ONE_OF_EACH = """
apiVersion: iam.kubeiam.io/v1alpha1
kind: ServiceAccount
metadata:
  name: lister
spec:
  displayName: Lister
  scope: organization
---
apiVersion: iam.kubeiam.io/v1alpha1
kind: ServiceAccountCredential
metadata:
  name: lister-key
spec:
  serviceAccountName: lister
  displayName: Lister key
---
apiVersion: iam.kubeiam.io/v1alpha1
kind: FederationTrust
metadata:
  name: lister-ci
spec:
  serviceAccountName: lister
  displayName: Lister from CI
  issuer: https://token.actions.githubusercontent.com
  audiences: [kube-iam]
  condition: claims.repository == "acme/lister"
"""


@pytest.mark.parametrize(
    ("path", "phrases"),
    [
        ("serviceaccountcredentials.spec", ["serviceAccountName", "expiresIn", "revoked"]),
        ("serviceaccountcredentials.status", ["credentialId", "secretHash", "expiresAt"]),
        ("iamsa.spec", ["displayName", "scope", "owners"]),
        ("iamsa.status", ["clientId", "activeCredentialCount", "conditions"]),
        ("federationtrusts.spec", ["issuer", "condition", "audiences"]),
    ],
)
def test_kubectl_explain_teaches_every_field(
    cluster: ClusterHandle, path: str, phrases: list[str]
) -> None:
    text = cluster.kubectl("explain", path).stdout
    assert "DESCRIPTION" in text
    assert "<empty>" not in text, text
    for phrase in phrases:
        assert phrase in text
    # Every field listed under FIELDS carries a description line below its name.
    fields = text.split("FIELDS:", 1)[1].strip().split("\n\n")
    for entry in fields:
        lines = [line for line in entry.splitlines() if line.strip()]
        assert len(lines) >= 2, f"{path}: a field without a description: {entry!r}"


def test_kubectl_get_iam_lists_all_three_kinds(cluster: ClusterHandle, namespace: str) -> None:
    cluster.apply(ONE_OF_EACH, namespace)
    listed = cluster.kubectl("get", "iam", "-n", namespace, "-o", "name").stdout.split()
    assert sorted(listed) == [
        "federationtrust.iam.kubeiam.io/lister-ci",
        "serviceaccount.iam.kubeiam.io/lister",
        "serviceaccountcredential.iam.kubeiam.io/lister-key",
    ]
    short_names = (("iamsa", "lister"), ("iamcred", "lister-key"), ("iamtrust", "lister-ci"))
    for short_name, name in short_names:
        header = cluster.kubectl("get", short_name, name, "-n", namespace).stdout.splitlines()[0]
        assert "READY" in header, (short_name, header)
        assert "AGE" in header, (short_name, header)
