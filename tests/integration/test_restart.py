"""A restart over a few hundred settled objects writes nothing: no status, no annotation, no
Secret. Measured by the API server's own request counts, not by what the operator says.

100 accounts and 200 credentials (140 Active, 30 Pending for a slot, 30 Revoked) are settled by
one operator process; a second one starts over them the way deploy/ runs it (peering on, its
start time as priority), resumes every object, runs two passes of the Secret audit and a sweep,
and must not have written anything of kube-iam's kinds or any Secret. Both handle at most
four objects at a time and list 40 at a time: a burst and a restart many times that limit
still settle and resume everything, the limit of credentials per account still holds, and the
indices (prefilled page by page before any handler runs) see every object. What it read, and every
write the API server saw meanwhile (kopf's peering heartbeat, the control plane's own leases),
are printed (run with -s to see them).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from .credentials_support import account_manifest, credential_manifest, many, secret_versions
from .metrics_support import (
    WRITE_VERBS,
    ApiServerRequests,
    as_json,
    scrape,
    wait_until_no_namespace_terminates,
)
from .support import ClusterHandle, OperatorProcess, wait_for

FULL_ACCOUNTS = 10  # 8 credentials each: 5 Active, 3 Pending (LimitExceeded)
SINGLE_ACCOUNTS = 90  # 1 Active credential each
REVOKED = 30  # created revoked, on single accounts: never issued
EXPECTED = {"Active": 5 * FULL_ACCOUNTS + SINGLE_ACCOUNTS, "Pending": 30, "Revoked": REVOKED}
READ_VERBS = frozenset({"GET", "LIST", "WATCH"})
QUIET = 5.0  # seconds without a write that count as settled
# Few workers, short idle, small pages: what bounds a burst's and a restart's memory, tightened.
BOUNDED = {
    "KUBEIAM_WATCH_WORKER_LIMIT": "4",
    "KUBEIAM_WATCH_WORKER_IDLE": "0.1",
    "KUBEIAM_WATCH_LIST_PAGE": "40",
}


def _workload() -> list[str]:
    manifests = []
    for i in range(FULL_ACCOUNTS):
        manifests.append(account_manifest(f"full-{i:02d}"))
        manifests += [
            credential_manifest(f"full-{i:02d}-{k}", account=f"full-{i:02d}", expiresIn="720h")
            for k in range(8)
        ]
    for i in range(SINGLE_ACCOUNTS):
        manifests.append(account_manifest(f"single-{i:02d}"))
        manifests.append(
            credential_manifest(f"single-{i:02d}", account=f"single-{i:02d}", expiresIn="720h")
        )
    manifests += [
        credential_manifest(f"revoked-{i:02d}", account=f"single-{i:02d}", revoked=True)
        for i in range(REVOKED)
    ]
    return manifests


def _objects(cluster: ClusterHandle, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(
        cluster.kubectl("get", "iamsa,iamcred", "-n", namespace, "-o", "json").stdout
    )["items"]
    return items


def _versions(cluster: ClusterHandle, namespace: str) -> dict[str, str]:
    """The resourceVersion of every kube-iam object and Secret (names only: no Secret data)."""
    found = {
        f"{o['kind']}/{o['metadata']['name']}": o["metadata"]["resourceVersion"]
        for o in _objects(cluster, namespace)
    }
    for name, _, version in secret_versions(cluster, namespace):
        found[f"Secret/{name}"] = version
    return found


def _settled(cluster: ClusterHandle, namespace: str) -> bool:
    objects = _objects(cluster, namespace)
    credentials = [o for o in objects if o["kind"] == "ServiceAccountCredential"]
    counts = Counter((o.get("status") or {}).get("state") for o in credentials)
    if dict(counts) != EXPECTED:
        return False
    active: Counter[str] = Counter(
        o["spec"]["serviceAccountName"] for o in credentials if o["status"]["state"] == "Active"
    )
    accounts = [o for o in objects if o["kind"] == "ServiceAccount"]
    return all(
        (a.get("status") or {}).get("activeCredentialCount") == active[a["metadata"]["name"]]
        for a in accounts
    )


def _resumed(operator: OperatorProcess, namespace: str) -> set[str]:
    """The objects of the namespace whose resume handlers the operator finished (JSON log)."""
    assert operator.log_path is not None
    done = set()
    for line in operator.log_path.read_text(errors="replace").splitlines():
        record = json.loads(line)
        ref = record.get("object") or {}
        if ref.get("namespace") == namespace and record["message"].startswith(
            "Resuming is processed"
        ):
            done.add(f"{ref['kind']}/{ref['name']}")
    return done


@pytest.mark.timeout(600)
def test_a_restart_over_settled_objects_writes_nothing(
    cluster: ClusterHandle, namespace: str, operators: Callable[..., OperatorProcess]
) -> None:
    # The API server's counts are cluster-wide: no other test's objects may be changing.
    wait_until_no_namespace_terminates(cluster)
    first = operators("first", **BOUNDED)
    cluster.apply(many(_workload()), namespace)
    wait_for(lambda: _settled(cluster, namespace), timeout=240, what="300 objects to settle")
    first.stop()
    versions = _versions(cluster, namespace)
    assert len(versions) == 100 + 200 + EXPECTED["Active"]
    before = ApiServerRequests.read(cluster)

    second = OperatorProcess(
        cluster,
        name="restart-second",
        env={"KUBEIAM_LOG_FORMAT": "json", **BOUNDED},
        args=("--priority", str(time.time_ns())),
    )
    try:
        _measure_restart(cluster, namespace, second, before, versions)
    finally:
        second.stop()


def _measure_restart(
    cluster: ClusterHandle,
    namespace: str,
    second: OperatorProcess,
    before: ApiServerRequests,
    versions: dict[str, str],
) -> None:
    second.start()
    started = time.monotonic()
    wait_for(
        lambda: len(_resumed(second, namespace)) == 300,
        timeout=120,
        what="the new operator to resume all 300 objects",
    )
    resumed_after = time.monotonic() - started

    # Settled: two full passes of the Secret audit (the first began while the index filled),
    # a sweep, and no write for QUIET seconds.
    def background_done() -> bool:
        page = scrape(second)
        return (
            page.value("kubeiam_audit_passes_total", audit="Secret") >= 2
            and page.value("kubeiam_credential_sweeps_total") >= 1
        )

    wait_for(background_done, timeout=120, what="two audit passes and a sweep")
    last_writes, quiet_since = -1, time.monotonic()
    while time.monotonic() - quiet_since < QUIET:
        writes = sum((ApiServerRequests.read(cluster) - before).kube_iam(WRITE_VERBS).values())
        if writes != last_writes:
            last_writes, quiet_since = writes, time.monotonic()
        time.sleep(1)
    delta = ApiServerRequests.read(cluster) - before
    page = scrape(second)

    reads = delta.kube_iam(READ_VERBS)
    ours = {
        f"{verb} {resource}": int(
            page.value("kubeiam_api_requests_total", verb=verb, resource=resource)
        )
        for verb, resource in [
            ("get", "serviceaccounts"),
            ("get", "serviceaccountcredentials"),
            ("get", "secrets"),
        ]
    }
    print(
        f"\nrestart over 300 objects ({EXPECTED['Active']} Secrets): all resumed after "
        f"{resumed_after:.1f}s\nAPI server, kube-iam's kinds and Secrets, reads: {as_json(reads)}"
        f"\nthe operator's own count of its GETs: {as_json(ours)}"
        f"\nevery write the API server saw meanwhile: {as_json(delta.all(WRITE_VERBS))}"
    )
    assert delta.kube_iam(WRITE_VERBS) == {}
    # ... and the objects say the same: not one resourceVersion moved.
    assert _versions(cluster, namespace) == versions
    assert page.value("kubeiam_reconcile_errors_total") == 0


def test_each_crd_stores_one_version_and_the_api_server_has_stored_only_it(
    cluster: ClusterHandle,
) -> None:
    """The starting point of the upgrade path in docs/upgrades.md to a later version."""
    for plural in ("serviceaccounts", "serviceaccountcredentials", "federationtrusts"):
        crd = cluster.get("crd", f"{plural}.iam.kubeiam.io", "")
        assert crd is not None
        versions = {v["name"]: (v["served"], v["storage"]) for v in crd["spec"]["versions"]}
        assert versions == {"v1alpha1": (True, True)}, plural
        assert crd["status"]["storedVersions"] == ["v1alpha1"], plural
        assert crd["spec"].get("conversion", {}).get("strategy", "None") == "None", plural
