"""Without list or watch on Secrets, the audit finds what a Secret watch used to.

Both cases are what happens while no operator runs (or one dies mid-way): at start, credentials
are resumed without reading their Secrets, and the paced audit must catch up on its own.
"""

from __future__ import annotations

import json

import pytest

from .credentials_support import (
    account_manifest,
    credential_manifest,
    managed_secrets,
    many,
    read_secret,
    ready,
    wait_state,
)
from .support import ClusterHandle, OperatorProcess, wait_for

pytestmark = pytest.mark.usefixtures("operator")


def test_a_secret_deleted_while_no_operator_runs_is_reported_after_the_start(
    cluster: ClusterHandle, namespace: str, operator: OperatorProcess
) -> None:
    cluster.apply(many([account_manifest(), credential_manifest("offline")]), namespace)
    wait_state(cluster, namespace, "offline", "Active")
    read_secret(cluster, namespace, "offline").client_secret()
    operator.stop()
    try:
        cluster.kubectl("delete", "secret", "offline", "-n", namespace)
    finally:
        operator.start()
    reported = wait_for(
        lambda: (
            (o := cluster.get("iamcred", "offline", namespace))
            and ready(o)["reason"] == "SecretDeleted"
            and o
        ),
        what="the audit to report the Secret deleted while the operator was down",
    )
    assert reported["status"]["state"] == "Active"
    assert managed_secrets(cluster, namespace) == []


def test_a_secret_left_behind_by_a_crash_after_the_end_is_deleted_by_the_audit(
    cluster: ClusterHandle, namespace: str, operator: OperatorProcess
) -> None:
    """The operator recorded an expiry and died before deleting the Secret (policy Delete)."""
    cluster.apply(
        many([account_manifest(), credential_manifest("cut-short", secretDeletionPolicy="Delete")]),
        namespace,
    )
    active = wait_state(cluster, namespace, "cut-short", "Active")
    read_secret(cluster, namespace, "cut-short").client_secret()
    operator.stop()
    try:
        # What the dead operator's status write left: ended, the Secret still there.
        status = {
            "state": "Expired",
            "conditions": [
                {**ready(active), "status": "False", "reason": "Expired", "message": "Expired."}
            ],
        }
        cluster.kubectl(
            "patch",
            "iamcred",
            "cut-short",
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": status}),
        )
        assert [s["metadata"]["name"] for s in managed_secrets(cluster, namespace)] == ["cut-short"]
    finally:
        operator.start()
    wait_for(
        lambda: managed_secrets(cluster, namespace) == [],
        what="the audit to delete the Secret of the ended credential",
    )
