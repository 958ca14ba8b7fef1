"""ServiceAccounts as a user meets them: apply YAML, wait for Ready, read status and events."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubeiam.devcluster.binaries import REPO_ROOT

from .conftest import ORGANIZATION
from .support import ClusterHandle, OperatorProcess, wait_for

EXAMPLES = REPO_ROOT / "examples"

ACCOUNT = """
apiVersion: iam.kubeiam.io/v1alpha1
kind: ServiceAccount
metadata:
  name: builder
spec:
  displayName: Image builder
  scope: organization
  roles: [registry.pusher]
  disabled: {disabled}
"""


def account(disabled: bool = False) -> str:
    return ACCOUNT.format(disabled=str(disabled).lower())


def ready_condition(obj: dict[str, object]) -> dict[str, object]:
    status = obj.get("status") or {}
    assert isinstance(status, dict)
    return next(c for c in status.get("conditions", []) if c["type"] == "Ready")


def events_for(cluster: ClusterHandle, namespace: str, name: str) -> list[dict[str, str]]:
    result = cluster.kubectl(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.name={name},involvedObject.kind=ServiceAccount",
        "-o",
        "json",
    )
    items: list[dict[str, str]] = json.loads(result.stdout)["items"]
    return items


def reasons(events: list[dict[str, str]]) -> list[str]:
    return [event["reason"] for event in events]


@pytest.mark.usefixtures("operator")
def test_the_example_account_becomes_ready_with_its_client_id(
    cluster: ClusterHandle, namespace: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "account.yaml"))
    cluster.wait_condition("iamsa", "pipeline-prod", namespace)

    obj = cluster.get("iamsa", "pipeline-prod", namespace)
    assert obj is not None
    status = obj["status"]
    assert status["clientId"] == f"pipeline-prod@{namespace}.{ORGANIZATION}.iam"
    assert status["state"] == "Active"
    assert status["activeCredentialCount"] == 0
    assert status["createdAt"] == obj["metadata"]["creationTimestamp"]
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    condition = ready_condition(obj)
    assert condition["reason"] == "Active"
    assert condition["observedGeneration"] == obj["metadata"]["generation"]
    wait_for(
        lambda: "Active" in reasons(events_for(cluster, namespace, "pipeline-prod")),
        what="an Active event",
    )
    # What `kubectl get` shows a person at a glance.
    row = cluster.kubectl("get", "iamsa", "pipeline-prod", "-n", namespace).stdout
    assert f"pipeline-prod@{namespace}.{ORGANIZATION}.iam" in row
    assert "Active" in row


@pytest.mark.usefixtures("operator")
def test_disabling_and_enabling_follow_the_spec_with_events(
    cluster: ClusterHandle, namespace: str
) -> None:
    cluster.apply(account(), namespace)
    cluster.wait_condition("iamsa", "builder", namespace)
    before = cluster.get("iamsa", "builder", namespace)
    assert before is not None

    cluster.apply(account(disabled=True), namespace)
    disabled = wait_for(
        lambda: (
            (o := cluster.get("iamsa", "builder", namespace))
            and o["status"].get("state") == "Disabled"
            and o
        ),
        what="the account to turn Disabled",
    )
    condition = ready_condition(disabled)
    assert (condition["status"], condition["reason"]) == ("False", "Disabled")
    assert "spec.disabled" in str(condition["message"])
    assert disabled["status"]["observedGeneration"] == disabled["metadata"]["generation"]
    assert condition["lastTransitionTime"] >= ready_condition(before)["lastTransitionTime"]

    cluster.apply(account(disabled=False), namespace)
    cluster.wait_condition("iamsa", "builder", namespace)
    wait_for(
        lambda: (
            reasons(events_for(cluster, namespace, "builder")).count("Active") >= 1
            and "Disabled" in reasons(events_for(cluster, namespace, "builder"))
        ),
        what="Active and Disabled events",
    )


@pytest.mark.usefixtures("operator")
def test_server_side_apply_again_changes_nothing_and_the_operator_owns_no_spec(
    cluster: ClusterHandle, namespace: str
) -> None:
    manifest = account()
    cluster.apply(manifest, namespace, "--server-side", "--field-manager=gitops")
    cluster.wait_condition("iamsa", "builder", namespace)
    settled = cluster.get("iamsa", "builder", namespace)
    assert settled is not None

    cluster.apply(manifest, namespace, "--server-side", "--field-manager=gitops")
    again = cluster.get("iamsa", "builder", namespace)
    assert again is not None
    assert again["metadata"]["resourceVersion"] == settled["metadata"]["resourceVersion"]
    assert again["metadata"]["generation"] == settled["metadata"]["generation"] == 1
    cluster.assert_no_drift("iamsa", "builder", namespace, manifest, "gitops")


def test_a_restarted_operator_catches_up_and_leaves_settled_accounts_alone(
    cluster: ClusterHandle, namespace: str, operator: OperatorProcess
) -> None:
    cluster.apply(account(), namespace)
    cluster.wait_condition("iamsa", "builder", namespace)
    settled_name = "settled"
    cluster.apply(account().replace("name: builder", f"name: {settled_name}"), namespace)
    cluster.wait_condition("iamsa", settled_name, namespace)
    settled = cluster.get("iamsa", settled_name, namespace)
    assert settled is not None

    # More objects than kopf's workers would ever hold at once, so a start that waited for a
    # worker per object (a worker limit with indices) would hang here.
    crowd = "\n---\n".join(
        account().replace("name: builder", f"name: crowd-{i:02d}") for i in range(30)
    )
    cluster.apply(crowd, namespace)
    cluster.wait_condition("iamsa", "crowd-29", namespace)
    operator.stop()
    log = Path(str(operator.log_path))
    offset = log.stat().st_size
    try:
        # Changed while no operator runs: the next one must notice at start.
        cluster.apply(account(disabled=True), namespace)
    finally:
        operator.start()
    wait_for(
        lambda: (
            (o := cluster.get("iamsa", "builder", namespace))
            and o["status"].get("state") == "Disabled"
        ),
        what="the restarted operator to disable the account",
    )
    # The settled account was resumed too (the same pass), and nothing was written to it.
    wait_for(
        lambda: (
            f"[{namespace}/{settled_name}] Handler 'reconcile_account' succeeded"
            in log.read_text()[offset:]
        ),
        what="the restarted operator to resume the settled account",
    )
    after = cluster.get("iamsa", settled_name, namespace)
    assert after is not None
    assert after["metadata"]["resourceVersion"] == settled["metadata"]["resourceVersion"]
