"""Credentials as users meet them: issuance, the active limit, expiry, revocation, Secrets."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest

from kubeiam.devcluster.binaries import REPO_ROOT

from .conftest import ORGANIZATION
from .credentials_support import (
    StateRecorder,
    account_manifest,
    credential_manifest,
    managed_secrets,
    many,
    read_secret,
    ready,
    revoke,
    sha256,
    state_in,
    states,
    wait_state,
    well_formed,
)
from .support import ClusterHandle, admitted_before_the_webhook, wait_for

pytestmark = pytest.mark.usefixtures("operator")


def settle(
    cluster: ClusterHandle, namespace: str, expected: dict[str, int]
) -> dict[str, str | None]:
    """Wait until the namespace's credentials are in the expected numbers per state."""

    def probe() -> dict[str, str | None] | None:
        current = states(cluster, namespace)
        counts: dict[str, int] = {}
        for state in current.values():
            counts[str(state)] = counts.get(str(state), 0) + 1
        return current if counts == expected else None

    try:
        return wait_for(probe, timeout=90, what=f"credentials to settle as {expected}")
    except AssertionError as error:
        raise AssertionError(f"{error}; states now: {states(cluster, namespace)}") from None


def test_seven_at_once_five_active_two_pending_and_revocation_admits_the_oldest(
    cluster: ClusterHandle, namespace: str
) -> None:
    names = [f"key-{i}" for i in range(1, 8)]
    cluster.apply(
        many([account_manifest(), *(credential_manifest(n, expiresIn="720h") for n in names)]),
        namespace,
    )
    settle(cluster, namespace, {"Active": 5, "Pending": 2})
    # Oldest first: creation times tie within a second, so the name decides.
    assert [n for n, s in states(cluster, namespace).items() if s == "Pending"] == names[5:]
    pending = cluster.get("iamcred", "key-6", namespace)
    assert pending is not None
    condition = ready(pending)
    assert condition["reason"] == "LimitExceeded"
    assert "limit of 5" in condition["message"]

    account = cluster.get("iamsa", "pipeline", namespace)
    assert account is not None
    assert account["status"]["activeCredentialCount"] == 5

    # Every Active credential has exactly one Secret, as a pod would mount it.
    for name in names[:5]:
        obj = wait_state(cluster, namespace, name, "Active")
        status = obj["status"]
        mounted = read_secret(cluster, namespace, status["secretName"])
        secret = mounted.client_secret()
        assert well_formed(secret), "the client secret is not in the documented format"
        assert sha256(secret) == status["secretHash"]
        assert status["credentialId"] in secret
        assert mounted.immutable
        assert mounted.type == "iam.kubeiam.io/client-credentials"
        assert mounted.data["client-id"] == f"pipeline@{namespace}.{ORGANIZATION}.iam"
        assert mounted.data["client-id"] == status["clientId"]
        assert mounted.data["expires-at"] == status["expiresAt"]
        assert mounted.data["token-url"].startswith("https://")
        owners = mounted.metadata["ownerReferences"]
        assert [(o["kind"], o["name"], o["uid"]) for o in owners] == [
            ("ServiceAccountCredential", name, obj["metadata"]["uid"])
        ]
        assert mounted.metadata["labels"]["iam.kubeiam.io/credential"] == name
        assert mounted.metadata["annotations"]["iam.kubeiam.io/service-account"] == "pipeline"
        expected_expiry = datetime.datetime.fromisoformat(
            obj["metadata"]["creationTimestamp"].replace("Z", "+00:00")
        ) + datetime.timedelta(hours=720)
        assert status["expiresAt"] == expected_expiry.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert status["effectiveRoles"] == ["compute.deployer", "storage.reader"]
    assert len(managed_secrets(cluster, namespace)) == 5

    revoke(cluster, namespace, "key-2")
    wait_state(cluster, namespace, "key-2", "Revoked")
    wait_state(cluster, namespace, "key-6", "Active")
    assert states(cluster, namespace)["key-7"] == "Pending"
    # The default deletion policy (Delete) removed the revoked credential's Secret.
    wait_for(
        lambda: "key-2" not in {s["metadata"]["name"] for s in managed_secrets(cluster, namespace)},
        what="the revoked credential's Secret to be deleted",
    )

    cluster.kubectl("delete", "iamcred", "key-3", "-n", namespace)
    wait_state(cluster, namespace, "key-7", "Active")
    wait_for(
        lambda: (
            (a := cluster.get("iamsa", "pipeline", namespace))
            and a["status"]["activeCredentialCount"] == 5
        ),
        what="the account's count to settle at 5",
    )


def test_a_credential_expires_on_time_frees_its_slot_and_keeps_a_retained_secret(
    cluster: ClusterHandle, namespace: str
) -> None:
    cluster.apply(
        many(
            [
                account_manifest(),
                credential_manifest("short", expiresIn="10s", secretDeletionPolicy="Retain"),
            ]
        ),
        namespace,
    )
    active = wait_state(cluster, namespace, "short", "Active")
    expires_at = datetime.datetime.fromisoformat(
        active["status"]["expiresAt"].replace("Z", "+00:00")
    )
    expired = wait_state(cluster, namespace, "short", "Expired", timeout=60)
    observed = datetime.datetime.now(datetime.UTC)
    print(f"expiry observed {(observed - expires_at).total_seconds():.1f}s after expiresAt")
    assert ready(expired)["reason"] == "Expired"
    assert expired["status"]["secretHash"] == active["status"]["secretHash"]
    # Retain: the Secret stays; the slot is free.
    assert [s["metadata"]["name"] for s in managed_secrets(cluster, namespace)] == ["short"]
    wait_for(
        lambda: (
            (a := cluster.get("iamsa", "pipeline", namespace))
            and a["status"]["activeCredentialCount"] == 0
        ),
        what="the slot of the expired credential to be freed",
    )
    events = json.loads(
        cluster.kubectl(
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            "involvedObject.name=short",
            "-o",
            "json",
        ).stdout
    )["items"]
    reasons = {e["reason"] for e in events}
    assert {"Issued", "Expired", "ExpiringSoon"} <= reasons, reasons


def test_a_pending_credential_expires_without_being_issued(
    cluster: ClusterHandle, namespace: str
) -> None:
    with admitted_before_the_webhook(cluster):
        cluster.apply(credential_manifest("orphan", account="nobody", expiresIn="5s"), namespace)
    waiting = wait_state(cluster, namespace, "orphan", "Pending")
    assert ready(waiting)["reason"] == "AccountMissing"
    expired = wait_state(cluster, namespace, "orphan", "Expired")
    assert "secretHash" not in expired["status"]
    assert managed_secrets(cluster, namespace) == []


def test_a_lifetime_above_the_maximum_is_refused_naming_the_maximum(
    cluster: ClusterHandle, namespace: str
) -> None:
    cluster.apply(
        many([account_manifest(), credential_manifest("forever", expiresIn="9000h")]), namespace
    )
    failed = wait_state(cluster, namespace, "forever", "Failed")
    condition = ready(failed)
    assert condition["reason"] == "LifetimeExceeded"
    assert "maximum of 365d" in condition["message"]
    assert managed_secrets(cluster, namespace) == []


def test_a_credential_waits_for_its_account_to_exist_and_to_be_enabled(
    cluster: ClusterHandle, namespace: str
) -> None:
    with admitted_before_the_webhook(cluster):
        cluster.apply(credential_manifest("early"), namespace)
    assert ready(wait_state(cluster, namespace, "early", "Pending"))["reason"] == "AccountMissing"

    cluster.apply(account_manifest(disabled=True), namespace)
    wait_for(
        lambda: (
            (o := cluster.get("iamcred", "early", namespace))
            and ready(o)["reason"] == "AccountDisabled"
        ),
        what="the credential to wait for its disabled account",
    )
    cluster.apply(account_manifest(disabled=False), namespace)
    wait_state(cluster, namespace, "early", "Active")


def test_a_foreign_secret_of_that_name_is_never_touched(
    cluster: ClusterHandle, namespace: str
) -> None:
    cluster.kubectl(
        "create", "secret", "generic", "taken", "-n", namespace, "--from-literal=mine=yes"
    )
    before = json.loads(
        cluster.kubectl("get", "secret", "taken", "-n", namespace, "-o", "json").stdout
    )
    cluster.apply(
        many([account_manifest(), credential_manifest("clash", secretName="taken")]), namespace
    )
    failed = wait_state(cluster, namespace, "clash", "Failed")
    assert ready(failed)["reason"] == "SecretConflict"
    assert "'taken'" in ready(failed)["message"]
    after = json.loads(
        cluster.kubectl("get", "secret", "taken", "-n", namespace, "-o", "json").stdout
    )
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["data"] == before["data"]
    wait_for(
        lambda: (
            (a := cluster.get("iamsa", "pipeline", namespace))
            and a["status"].get("activeCredentialCount") == 0
        ),
        what="the failed credential to hold no slot",
    )


def test_a_deleted_secret_is_not_recreated_and_the_condition_says_so(
    cluster: ClusterHandle, namespace: str
) -> None:
    cluster.apply(many([account_manifest(), credential_manifest("lost")]), namespace)
    active = wait_state(cluster, namespace, "lost", "Active")
    read_secret(cluster, namespace, "lost").client_secret()
    cluster.kubectl("delete", "secret", "lost", "-n", namespace)
    gone = wait_for(
        lambda: (
            (o := cluster.get("iamcred", "lost", namespace))
            and ready(o)["reason"] == "SecretDeleted"
            and o
        ),
        what="the credential to report its deleted Secret",
    )
    assert "not re-created" in ready(gone)["message"]
    assert gone["status"]["state"] == "Active"
    assert gone["status"]["secretHash"] == active["status"]["secretHash"]
    assert managed_secrets(cluster, namespace) == []


def test_the_secret_template_names_keys_and_adds_labels_and_annotations(
    cluster: ClusterHandle, namespace: str
) -> None:
    template = {
        "labels": {"team": "a"},
        "annotations": {"example.com/rotate": "monthly"},
        "keys": {"clientId": "CLIENT_ID", "clientSecret": "CLIENT_SECRET"},
    }
    cluster.apply(
        many(
            [
                account_manifest(),
                credential_manifest(
                    "templated",
                    secretName="app-credentials",
                    secretTemplate=template,
                    scopedRoles=["storage.reader", "billing.admin"],
                ),
            ]
        ),
        namespace,
    )
    obj = wait_state(cluster, namespace, "templated", "Active")
    assert obj["status"]["secretName"] == "app-credentials"
    assert obj["status"]["effectiveRoles"] == ["storage.reader"]
    mounted = read_secret(cluster, namespace, "app-credentials")
    assert set(mounted.data) == {"CLIENT_ID", "CLIENT_SECRET", "token-url", "expires-at"}
    assert sha256(mounted.client_secret("CLIENT_SECRET")) == obj["status"]["secretHash"]
    assert mounted.metadata["labels"]["team"] == "a"
    assert mounted.metadata["annotations"]["example.com/rotate"] == "monthly"


def test_a_credential_deleted_and_created_again_under_its_name_gets_a_new_secret(
    cluster: ClusterHandle, namespace: str
) -> None:
    """What `kubectl replace --force` or a GitOps re-create does."""
    cluster.apply(many([account_manifest(), credential_manifest("again")]), namespace)
    first = wait_state(cluster, namespace, "again", "Active")
    cluster.kubectl("delete", "iamcred", "again", "-n", namespace)
    cluster.apply(credential_manifest("again"), namespace)
    second = wait_for(
        lambda: (
            (o := cluster.get("iamcred", "again", namespace))
            and o["metadata"]["uid"] != first["metadata"]["uid"]
            and (o.get("status") or {}).get("state") == "Active"
            and o
        ),
        what="the new credential to be issued",
    )
    assert second["status"]["secretHash"] != first["status"]["secretHash"]
    mounted = read_secret(cluster, namespace, "again")
    assert sha256(mounted.client_secret()) == second["status"]["secretHash"]


def test_effective_roles_follow_the_account_roles(cluster: ClusterHandle, namespace: str) -> None:
    cluster.apply(
        many(
            [
                account_manifest(roles="compute.deployer, storage.reader"),
                credential_manifest("narrow", scopedRoles=["storage.reader", "billing.admin"]),
            ]
        ),
        namespace,
    )
    obj = wait_state(cluster, namespace, "narrow", "Active")
    assert obj["status"]["effectiveRoles"] == ["storage.reader"]
    cluster.apply(account_manifest(roles="compute.deployer, billing.admin"), namespace)
    wait_for(
        lambda: (
            (o := cluster.get("iamcred", "narrow", namespace))
            and o["status"]["effectiveRoles"] == ["billing.admin"]
        ),
        what="effectiveRoles to follow the account's new roles",
    )


def test_deleting_the_account_removes_its_credentials_and_their_secrets(
    cluster: ClusterHandle, namespace: str
) -> None:
    cluster.apply(
        many([account_manifest(), credential_manifest("one"), credential_manifest("two")]),
        namespace,
    )
    wait_state(cluster, namespace, "one", "Active")
    wait_state(cluster, namespace, "two", "Active")
    cluster.kubectl("delete", "iamsa", "pipeline", "-n", namespace)
    wait_for(
        lambda: states(cluster, namespace) == {} and managed_secrets(cluster, namespace) == [],
        what="the garbage collector to remove credentials and Secrets",
    )


def test_applying_the_same_manifests_again_changes_nothing(
    cluster: ClusterHandle, namespace: str
) -> None:
    manifest = many([account_manifest(), credential_manifest("steady", expiresIn="48h")])
    cluster.apply(manifest, namespace)
    wait_state(cluster, namespace, "steady", "Active")
    before = cluster.get("iamcred", "steady", namespace)
    assert before is not None
    cluster.apply(manifest, namespace)
    cluster.apply(manifest, namespace, "--server-side", "--force-conflicts")
    after = cluster.get("iamcred", "steady", namespace)
    assert after is not None
    assert after["metadata"]["generation"] == before["metadata"]["generation"] == 1
    assert after["status"] == before["status"]
    cluster.assert_no_drift(
        "iamcred", "steady", namespace, manifest, "kubectl", "kubectl-client-side-apply"
    )
    refused = cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=credential_manifest("steady", expiresIn="96h"),
        check=False,
    )
    assert refused.returncode != 0
    assert "spec.expiresIn is immutable" in refused.stderr


def test_twenty_at_once_never_more_than_five_active_at_any_observed_instant(
    cluster: ClusterHandle, namespace: str
) -> None:
    recorder = StateRecorder(cluster, namespace).start()
    try:
        names = [f"burst-{i:02d}" for i in range(20)]
        cluster.apply(account_manifest(), namespace)
        cluster.wait_condition("iamsa", "pipeline", namespace)
        cluster.apply(many([credential_manifest(n) for n in names]), namespace)
        settle(cluster, namespace, {"Active": 5, "Pending": 15})
        revoke(cluster, namespace, *names[:3])
        cluster.kubectl("delete", "iamcred", names[3], names[4], "-n", namespace)
        settle(cluster, namespace, {"Active": 5, "Pending": 10, "Revoked": 3})
        wait_for(lambda: recorder.events >= 40, what="the watch to see the burst")
    finally:
        recorder.stop()
    assert recorder.max_active == {"pipeline": 5}
    assert len(managed_secrets(cluster, namespace)) == 5


def test_every_example_manifest_applies_and_settles(cluster: ClusterHandle, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(REPO_ROOT / "examples"))
    cluster.wait_condition("iamsa", "pipeline-prod", namespace)
    for obj in json.loads(cluster.kubectl("get", "iamcred", "-n", namespace, "-o", "json").stdout)[
        "items"
    ]:
        cluster.wait_condition("iamcred", obj["metadata"]["name"], namespace)
        mounted = read_secret(cluster, namespace, obj["metadata"]["name"])
        mounted.client_secret()


def _writes_since(
    cluster: ClusterHandle, plural: str, namespace: str, name: str, resource_version: str
) -> list[dict[str, Any]]:
    """Every version of one object written after `resource_version`, as a watch from there
    replays them; the watch then stays open a few seconds for any write still to come."""
    path = (
        f"/apis/iam.kubeiam.io/v1alpha1/namespaces/{namespace}/{plural}"
        f"?watch=1&resourceVersion={resource_version}&timeoutSeconds=5"
        f"&fieldSelector=metadata.name%3D{name}"
    )
    lines = cluster.kubectl("get", "--raw", path, timeout=30).stdout.splitlines()
    events = [json.loads(line) for line in lines if line.strip()]
    return [event["object"] for event in events if event["type"] == "MODIFIED"]


def _changed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What one write changed, by top-level field of metadata and status (no values)."""
    changed: dict[str, Any] = {}
    for part in ("metadata", "status", "spec"):
        old, new = before.get(part) or {}, after.get(part) or {}
        keys = sorted(k for k in {*old, *new} if old.get(k) != new.get(k) and k != "managedFields")
        if keys:
            changed[part] = keys
    return changed


def test_an_issuance_writes_the_credential_once_and_the_account_once(
    cluster: ClusterHandle, namespace: str
) -> None:
    """Issue 7's write budget, seen on the objects: admission makes the account an owner as
    the credential is created, the operator writes its status once, and kopf writes nothing
    of its own (no annotation, no marker). A GitOps tool's next server-side apply of the same
    manifest keeps the owner reference and shows no drift."""
    cluster.apply(account_manifest(), namespace)
    cluster.wait_condition("iamsa", "pipeline", namespace)
    account = cluster.get("iamsa", "pipeline", namespace)
    assert account is not None
    manifest = credential_manifest("key", expiresIn="24h")
    created = json.loads(
        cluster.kubectl(
            *("apply", "--server-side", "--field-manager=gitops", "-n", namespace),
            *("-f", "-", "-o", "json"),
            input=manifest,
        ).stdout
    )
    owners = created["metadata"].get("ownerReferences") or []
    assert [(o["kind"], o["name"], o["uid"]) for o in owners] == [
        ("ServiceAccount", "pipeline", account["metadata"]["uid"])
    ]
    wait_state(cluster, namespace, "key", "Active")

    since = created["metadata"]["resourceVersion"]
    credential_writes = _writes_since(cluster, "serviceaccountcredentials", namespace, "key", since)
    assert [state_in(o) for o in credential_writes] == ["Active"], [
        _changed(a, b)
        for a, b in zip([created, *credential_writes], credential_writes, strict=False)
    ]
    written = credential_writes[0]
    assert written["metadata"]["ownerReferences"] == owners
    ours = [k for k in written["metadata"].get("annotations") or {} if k.startswith("kubeiam.io/")]
    assert ours == [], "kopf kept bookkeeping annotations on the credential"
    assert written["status"]["observedGeneration"] == written["metadata"]["generation"]
    # 24 hours is within the warning lead: the warning came with the issuance, not after it.
    assert [c["type"] for c in written["status"]["conditions"]] == ["ExpiringSoon", "Ready"]

    account_writes = _writes_since(
        cluster, "serviceaccounts", namespace, "pipeline", account["metadata"]["resourceVersion"]
    )
    assert [o["status"]["activeCredentialCount"] for o in account_writes] == [1]
    assert len(managed_secrets(cluster, namespace)) == 1

    cluster.kubectl(
        *("apply", "--server-side", "--field-manager=gitops", "-n", namespace, "-f", "-"),
        input=manifest,
    )
    again = cluster.get("iamcred", "key", namespace)
    assert again is not None
    assert again["metadata"]["ownerReferences"] == owners
    cluster.assert_no_drift("iamcred", "key", namespace, manifest, "gitops")


def test_a_credential_created_without_admission_is_made_owned_by_the_operator(
    cluster: ClusterHandle, namespace: str
) -> None:
    cluster.apply(account_manifest(), namespace)
    cluster.wait_condition("iamsa", "pipeline", namespace)
    with admitted_before_the_webhook(cluster):
        cluster.apply(credential_manifest("key"), namespace)
    obj = wait_state(cluster, namespace, "key", "Active")
    account = cluster.get("iamsa", "pipeline", namespace)
    assert account is not None
    owners = obj["metadata"].get("ownerReferences") or []
    assert [(o["kind"], o["name"], o["uid"]) for o in owners] == [
        ("ServiceAccount", "pipeline", account["metadata"]["uid"])
    ]


def test_a_secret_refused_by_a_quota_is_reported_and_issued_once_the_quota_allows_it(
    cluster: ClusterHandle, namespace: str
) -> None:
    """A namespace's ResourceQuota allows no Secret: the admitted credential says why it has
    none (Pending, SecretRefused, naming the Secret and the HTTP status), keeps its slot, and
    is issued, once, as soon as the quota is raised."""
    cluster.apply(
        "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: no-secrets}\n"
        "spec: {hard: {secrets: '0'}}\n",
        namespace,
    )
    wait_for(
        lambda: (
            (q := cluster.get("resourcequota", "no-secrets", namespace))
            and (q.get("status") or {}).get("hard", {}).get("secrets") == "0"
        ),
        what="the quota controller to take up the quota",
    )
    cluster.apply(many([account_manifest(), credential_manifest("key")]), namespace)
    waiting = wait_for(
        lambda: (
            (o := cluster.get("iamcred", "key", namespace))
            and ready(o).get("reason") == "SecretRefused"
            and o
        ),
        what="the credential to report the refused Secret",
    )
    assert waiting["status"]["state"] == "Pending"
    message = ready(waiting)["message"]
    assert "'key'" in message, message
    assert "HTTP 403 Forbidden" in message, message
    assert "secretHash" not in waiting["status"]
    account = cluster.get("iamsa", "pipeline", namespace)
    assert account is not None
    assert account["status"]["activeCredentialCount"] == 1, "the credential lost its slot"
    assert managed_secrets(cluster, namespace) == []

    cluster.kubectl(
        "patch",
        "resourcequota",
        "no-secrets",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"hard":{"secrets":"5"}}}',
    )
    active = wait_state(cluster, namespace, "key", "Active")
    mounted = read_secret(cluster, namespace, active["status"]["secretName"])
    assert sha256(mounted.client_secret()) == active["status"]["secretHash"]
    assert len(managed_secrets(cluster, namespace)) == 1
