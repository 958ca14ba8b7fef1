"""Observability from a real operator process after a real workload: its metrics agree with
what kubectl shows, and its JSON log lines are JSON that names the object they are about."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable

from .credentials_support import (
    account_manifest,
    credential_manifest,
    many,
    revoke,
    states,
    wait_state,
)
from .metrics_support import (
    Page,
    nonzero,
    scrape,
    states_everywhere,
    wait_until_no_namespace_terminates,
)
from .support import ClusterHandle, OperatorProcess, wait_for

CREDENTIAL = "ServiceAccountCredential"
ISSUANCE = "kubeiam_credential_issuance_seconds_count"
LATENESS = "kubeiam_credential_expiry_lateness_seconds_count"
EXPIRY = "kubeiam_credential_expiry_timestamp_seconds"


def _timestamp(value: str) -> float:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _expiries(page: Page, namespace: str) -> dict[str, float]:
    return page.by(EXPIRY, "name", namespace=namespace)


def _save(cluster: ClusterHandle, name: str, page: Page) -> None:
    """Kept for the leak scan, which searches every page a test scraped."""
    path = cluster.log_dir / "metrics" / f"{name}.prom"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page.text)


def test_metrics_agree_with_the_cluster_after_issuance_expiry_revocation_and_an_error(
    cluster: ClusterHandle, namespace: str, operators: Callable[..., OperatorProcess]
) -> None:
    # The operator counts every credential it watches, cluster-wide: earlier tests' must be gone.
    wait_until_no_namespace_terminates(cluster)
    operator = operators("metrics")
    before = scrape(operator)

    # Limit 5: "a-short" and k-1..k-4 are admitted (oldest first, then by name), k-5 and k-6
    # wait; when a-short expires, k-5 takes its slot.
    names = ["a-short", "k-1", "k-2", "k-3", "k-4", "k-5", "k-6"]
    cluster.apply(
        many(
            [
                account_manifest(),
                credential_manifest("a-short", expiresIn="12s"),
                *(credential_manifest(n, expiresIn="720h") for n in names[1:]),
            ]
        ),
        namespace,
    )
    for name in names[:5]:
        wait_state(cluster, namespace, name, "Active")
    wait_state(cluster, namespace, "k-5", "Pending")

    # The state gauge is kubectl's view (both read at moments the cluster may differ: wait
    # until they agree), and Active credentials' expiries are their status.expiresAt.
    def agree() -> Page | None:
        page = scrape(operator)
        gauge = nonzero(page.by("kubeiam_credentials", "state"))
        # Observed right after the status write that kubectl may have seen a moment earlier.
        issued = page.value(ISSUANCE) - before.value(ISSUANCE) >= 5
        return page if issued and gauge == states_everywhere(cluster) else None

    page = wait_for(agree, what="kubeiam_credentials to agree with kubectl")
    active = {
        name: wait_state(cluster, namespace, name, "Active")["status"]["expiresAt"]
        for name in names[:5]
    }
    assert _expiries(page, namespace) == {name: _timestamp(at) for name, at in active.items()}
    assert page.value(EXPIRY, namespace=namespace, name="k-1") == _timestamp(active["k-1"])
    assert page.value(ISSUANCE, waited="false") - before.value(ISSUANCE, waited="false") == 5
    assert (
        page.value("kubeiam_api_requests_total", verb="create", resource="secrets", code="201")
        - before.value("kubeiam_api_requests_total", verb="create", resource="secrets", code="201")
        == 5
    )

    # Expiry: the lateness histogram counts it, the expiry series goes, k-5 (which waited for
    # the slot) is issued.
    wait_state(cluster, namespace, "a-short", "Expired")
    k5 = wait_state(cluster, namespace, "k-5", "Active")

    def after_expiry() -> Page | None:
        # Counted right after k-5's status write; its expiry series once the watch saw it.
        page = scrape(operator)
        issued = page.value(ISSUANCE, waited="true") >= 1
        return page if issued and "k-5" in _expiries(page, namespace) else None

    page = wait_for(after_expiry, what="k-5's issuance to be counted")
    assert page.value(LATENESS) - before.value(LATENESS) == 1
    assert page.value(ISSUANCE, waited="true") - before.value(ISSUANCE, waited="true") == 1
    expiries = _expiries(page, namespace)
    assert "a-short" not in expiries
    assert expiries["k-5"] == _timestamp(k5["status"]["expiresAt"])

    # Revocation and deletion: their series go too; counts follow kubectl again.
    revoke(cluster, namespace, "k-1")
    cluster.kubectl("delete", "iamcred", "k-2", "-n", namespace)
    wait_state(cluster, namespace, "k-1", "Revoked")
    wait_state(cluster, namespace, "k-6", "Active")
    page = wait_for(agree, what="kubeiam_credentials to agree with kubectl after revocation")
    assert set(_expiries(page, namespace)) == {
        name for name, state in states(cluster, namespace).items() if state == "Active"
    }

    # A reconcile that fails (the API server refuses the Secret: the namespace's quota allows
    # none) is counted by its reason, as is the refused request.
    quota_namespace = f"{namespace}-quota"
    cluster.kubectl("create", "namespace", quota_namespace)
    try:
        cluster.apply(
            many(
                [
                    "apiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: no-secrets\n"
                    "spec:\n  hard:\n    secrets: '0'\n",
                    account_manifest("other"),
                    credential_manifest("refused", account="other"),
                ]
            ),
            quota_namespace,
        )

        def refused() -> Page | None:
            page = scrape(operator)
            errors = page.value(
                "kubeiam_reconcile_errors_total", kind=CREDENTIAL, reason="Forbidden"
            )
            return page if errors >= 1 else None

        page = wait_for(refused, what="the refused Secret to be counted as a reconcile error")
        assert page.value("kubeiam_api_requests_total", resource="secrets", code="403") >= 1
    finally:
        cluster.kubectl("delete", "namespace", quota_namespace, "--wait=false", check=False)
    assert page.value("kubeiam_peering_paused") == 0
    _save(cluster, "metrics-test", page)


def test_json_logs_are_one_object_a_line_naming_the_object(
    cluster: ClusterHandle, namespace: str, operators: Callable[..., OperatorProcess]
) -> None:
    operator = operators("json", KUBEIAM_LOG_FORMAT="json")
    cluster.apply(
        many([account_manifest(), credential_manifest("logged", expiresIn="720h")]), namespace
    )
    issued = wait_state(cluster, namespace, "logged", "Active")
    revoke(cluster, namespace, "logged")
    wait_state(cluster, namespace, "logged", "Revoked")
    account = cluster.get("iamsa", "pipeline", namespace)
    assert account is not None
    operator.stop()  # every line flushed

    assert operator.log_path is not None
    lines = operator.log_path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"line {number} of {operator.log_path} is not JSON") from None
    assert all({"message", "timestamp", "severity"} <= set(r) for r in records)

    about = {}
    for record in records:
        ref = record.get("object")
        if ref and ref.get("namespace") == namespace:
            about.setdefault((ref["kind"], ref["name"]), []).append(record)
            assert ref["apiVersion"] == "iam.kubeiam.io/v1alpha1"
    assert set(about) == {(CREDENTIAL, "logged"), ("ServiceAccount", "pipeline")}
    (credential_ref,) = {
        json.dumps(r["object"], sort_keys=True) for r in about[(CREDENTIAL, "logged")]
    }
    assert json.loads(credential_ref)["uid"] == issued["metadata"]["uid"]
    assert {r["object"]["uid"] for r in about[("ServiceAccount", "pipeline")]} == {
        account["metadata"]["uid"]
    }
