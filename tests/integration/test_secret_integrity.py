"""Attacks on the issued Secret by a namespace editor, composed as the attacker would run them.

The attacker (`mallory`, who may edit the namespace, so create and read Secrets) plants a
Secret before kube-iam writes its own, replaces one after, or holds one in the way; and an
admin replaces an account under its name. Every test checks kube-iam adopts nothing it
cannot prove it wrote and touches nothing that is not its own. The attacker's client secret
is made up here and never issued, so showing its hash in a failure leaks nothing.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest

from .credentials_support import (
    StateRecorder,
    account_manifest,
    credential_manifest,
    many,
    read_secret,
    ready,
    sha256,
    wait_state,
)
from .support import ClusterHandle, wait_for

pytestmark = pytest.mark.usefixtures("operator")

ATTACKER = "--as=mallory"
SECRET_TYPE = "iam.kubeiam.io/client-credentials"
# Not a secret kube-iam made: the one the attacker wants the account to accept.
CHOSEN = "kiam_aaaaaaaaaaaaaaaaaaaa_attackerchosenattackerchosenattackerchosen12345"


def _editor(cluster: ClusterHandle, namespace: str) -> None:
    """mallory edits the namespace, as Kubernetes' own edit role allows: Secrets included."""
    cluster.kubectl(
        *("create", "rolebinding", "mallory-edits", "--clusterrole=edit", "--user=mallory"),
        *("-n", namespace),
    )
    wait_for(
        lambda: (
            cluster.kubectl(
                *("auth", "can-i", "create", "secrets", "-n", namespace, ATTACKER), check=False
            ).stdout.strip()
            == "yes"
        ),
        what="RBAC to let mallory create Secrets",
    )


def _as_attacker(cluster: ClusterHandle, *args: str, input: str | None = None) -> None:
    cluster.kubectl(*args, ATTACKER, input=input)


def _whole_secret(cluster: ClusterHandle, namespace: str, name: str) -> dict[str, Any]:
    """The Secret as stored, managed fields included: any write by anyone changes it."""
    raw = cluster.kubectl(
        *("get", "secret", name, "-n", namespace, "-o", "json", "--show-managed-fields")
    ).stdout
    loaded: dict[str, Any] = json.loads(raw)
    return loaded


def _plant(
    cluster: ClusterHandle,
    namespace: str,
    name: str,
    *,
    owner: dict[str, Any] | None,
    annotations: dict[str, str],
    immutable: bool = True,
    finalizers: list[str] | None = None,
) -> dict[str, Any]:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": SECRET_TYPE,
        "immutable": immutable,
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/managed-by": "kube-iam",
                "iam.kubeiam.io/credential": name,
                "iam.kubeiam.io/service-account": "pipeline",
            },
            "annotations": annotations,
            "ownerReferences": [owner] if owner else [],
            "finalizers": finalizers or [],
        },
        "data": {"client-secret": base64.b64encode(CHOSEN.encode()).decode()},
    }
    _as_attacker(cluster, "create", "-n", namespace, "-f", "-", input=json.dumps(secret))
    return _whole_secret(cluster, namespace, name)


def _owner(credential: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "iam.kubeiam.io/v1alpha1",
        "kind": "ServiceAccountCredential",
        "name": credential["metadata"]["name"],
        "uid": credential["metadata"]["uid"],
        "controller": True,
    }


def _failed_with_conflict(
    cluster: ClusterHandle, namespace: str, name: str, timeout: float = 60
) -> dict[str, Any]:
    failed = wait_state(cluster, namespace, name, "Failed", timeout=timeout)
    assert ready(failed)["reason"] == "SecretConflict", ready(failed)
    assert f"Secret {name!r}" in ready(failed)["message"]
    return failed


@pytest.mark.parametrize("immutable", [True, False], ids=["immutable", "mutable"])
def test_a_secret_planted_while_the_credential_waits_is_never_adopted(
    cluster: ClusterHandle, namespace: str, immutable: bool
) -> None:
    _editor(cluster, namespace)
    # A real issued Secret, whose proof annotation the attacker copies (editors read Secrets).
    cluster.apply(many([account_manifest(), credential_manifest("genuine")]), namespace)
    wait_state(cluster, namespace, "genuine", "Active")
    genuine = read_secret(cluster, namespace, "genuine").metadata["annotations"]
    cluster.apply(account_manifest(disabled=True), namespace)
    cluster.apply(credential_manifest("victim"), namespace)
    waiting = wait_state(cluster, namespace, "victim", "Pending")

    annotations = {
        "iam.kubeiam.io/credential": "victim",
        "iam.kubeiam.io/credential-uid": waiting["metadata"]["uid"],
        "iam.kubeiam.io/secret-hash": sha256(CHOSEN),
        **{k: v for k, v in genuine.items() if k == "iam.kubeiam.io/secret-proof"},
    }
    planted = _plant(
        cluster,
        namespace,
        "victim",
        owner=_owner(waiting),
        annotations=annotations,
        immutable=immutable,
    )
    cluster.apply(account_manifest(disabled=False), namespace)  # the slot frees

    failed = _failed_with_conflict(cluster, namespace, "victim")
    assert sha256(CHOSEN) not in json.dumps(failed)
    assert _whole_secret(cluster, namespace, "victim") == planted


def test_a_look_alike_of_a_deleted_secret_is_reported_and_left_alone(
    cluster: ClusterHandle, namespace: str
) -> None:
    _editor(cluster, namespace)
    cluster.apply(many([account_manifest(), credential_manifest("key")]), namespace)
    issued = wait_state(cluster, namespace, "key", "Active")
    original = read_secret(cluster, namespace, "key").metadata
    _as_attacker(cluster, "delete", "secret", "key", "-n", namespace)
    look_alike = _plant(
        cluster,
        namespace,
        "key",
        owner=original["ownerReferences"][0],
        annotations=original["annotations"],  # the hash and the proof included
    )

    reported = wait_for(
        lambda: (
            (o := cluster.get("iamcred", "key", namespace))
            and ready(o)["reason"] == "SecretReplaced"
            and o
        ),
        what="the credential to report its replaced Secret",
    )
    assert reported["status"]["state"] == "Active"
    assert reported["status"]["secretHash"] == issued["status"]["secretHash"]
    assert "not the Secret kube-iam wrote" in ready(reported)["message"]
    assert _whole_secret(cluster, namespace, "key") == look_alike


def test_a_planted_secret_held_by_its_planters_finalizer_ends_in_secret_conflict(
    cluster: ClusterHandle, namespace: str
) -> None:
    _editor(cluster, namespace)
    _plant(
        cluster,
        namespace,
        "held",
        owner=None,
        annotations={},
        finalizers=["example.com/hold"],
    )
    _as_attacker(cluster, "delete", "secret", "held", "-n", namespace, "--wait=false")
    held = _whole_secret(cluster, namespace, "held")
    assert held["metadata"].get("deletionTimestamp")
    try:
        cluster.apply(many([account_manifest(), credential_manifest("held")]), namespace)
        # Retried for 30 s after the credential's creation, then given up: well within 90 s.
        _failed_with_conflict(cluster, namespace, "held", timeout=90)
        assert _whole_secret(cluster, namespace, "held") == held
    finally:
        # Let the namespace go: only the planter's finalizer holds the Secret.
        cluster.kubectl(
            *("patch", "secret", "held", "-n", namespace, "--type=merge"),
            *("-p", '{"metadata":{"finalizers":null}}'),
            check=False,
        )


def test_a_planted_secret_owned_by_a_namesake_credential_ends_in_secret_conflict(
    cluster: ClusterHandle, namespace: str
) -> None:
    _editor(cluster, namespace)
    # Another UID under the credential's name, in a group the garbage collector cannot
    # resolve, so it does not remove the plant either.
    namesake = {
        "apiVersion": "example.com/v1",
        "kind": "ServiceAccountCredential",
        "name": "twin",
        "uid": str(uuid.uuid4()),
    }
    planted = _plant(cluster, namespace, "twin", owner=namesake, annotations={})
    cluster.apply(many([account_manifest(), credential_manifest("twin")]), namespace)
    _failed_with_conflict(cluster, namespace, "twin", timeout=90)
    assert _whole_secret(cluster, namespace, "twin") == planted


def test_an_account_replaced_under_its_name_ends_the_credentials_of_the_old_one(
    cluster: ClusterHandle, namespace: str
) -> None:
    old_names = [f"old-{i}" for i in range(5)]
    cluster.apply(
        many([account_manifest(), *(credential_manifest(n) for n in old_names)]), namespace
    )
    for name in old_names:
        wait_state(cluster, namespace, name, "Active")
    old_account = cluster.get("iamsa", "pipeline", namespace)
    assert old_account is not None
    recorder = StateRecorder(cluster, namespace).start()
    try:
        cluster.kubectl("delete", "iamsa", "pipeline", "-n", namespace, "--cascade=orphan")
        new_names = [f"new-{i}" for i in range(5)]
        cluster.apply(
            many(
                [
                    account_manifest(roles="compute.deployer, storage.reader, billing.admin"),
                    *(credential_manifest(n) for n in new_names),
                ]
            ),
            namespace,
        )
        new_account = cluster.get("iamsa", "pipeline", namespace)
        assert new_account is not None
        assert new_account["metadata"]["uid"] != old_account["metadata"]["uid"]
        for name in new_names:
            wait_state(cluster, namespace, name, "Active", timeout=90)
        for name in old_names:
            ended = wait_state(cluster, namespace, name, "Revoked")
            assert ready(ended)["reason"] == "AccountReplaced", ready(ended)
            assert "billing.admin" not in ended["status"]["effectiveRoles"]
        cluster.apply(credential_manifest("new-5"), namespace)
        assert ready(wait_state(cluster, namespace, "new-5", "Pending"))["reason"] == (
            "LimitExceeded"
        )
        assert recorder.running
        assert recorder.max_active["pipeline"] <= 5, recorder.max_active
    finally:
        recorder.stop()
    account = cluster.get("iamsa", "pipeline", namespace)
    assert account is not None
    assert account["status"]["activeCredentialCount"] == 5
