"""Exactly once under crashes: the operator dies at every point of issuance, a new one finishes.

Whatever the instant, the outcome is one Secret (never two, never none) whose hash is the one
the credential's status records.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kubeiam.kube.faults import ISSUANCE_POINTS

from .credentials_support import (
    account_manifest,
    credential_manifest,
    managed_secrets,
    read_secret,
    sha256,
    wait_state,
    well_formed,
)
from .metrics_support import wait_until_no_namespace_terminates
from .support import ClusterHandle, OperatorProcess


@pytest.mark.parametrize("point", ISSUANCE_POINTS)
def test_a_crash_at_any_point_of_issuance_leaves_exactly_one_secret(
    cluster: ClusterHandle,
    namespace: str,
    operators: Callable[..., OperatorProcess],
    point: str,
) -> None:
    # Cluster-wide, the doomed process resumes every object: an earlier test's credential still
    # being issued in a namespace being deleted would be where it dies, before this test's.
    wait_until_no_namespace_terminates(cluster)
    doomed = operators("doomed", KUBEIAM_FAULT_POINT=point)
    cluster.apply(account_manifest(), namespace)
    cluster.wait_condition("iamsa", "pipeline", namespace)
    cluster.apply(credential_manifest("crashy"), namespace)
    assert doomed.wait_exit() == 137, f"the operator did not die at {point}"

    operators("survivor")
    obj = wait_state(cluster, namespace, "crashy", "Active")
    secrets = managed_secrets(cluster, namespace)
    assert [s["metadata"]["name"] for s in secrets] == ["crashy"]
    mounted = read_secret(cluster, namespace, "crashy")
    secret = mounted.client_secret()
    assert well_formed(secret), "the client secret is not in the documented format"
    assert sha256(secret) == obj["status"]["secretHash"]
    account = cluster.get("iamsa", "pipeline", namespace)
    assert account is not None
    assert account["status"]["activeCredentialCount"] == 1
