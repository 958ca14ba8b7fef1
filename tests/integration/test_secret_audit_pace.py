"""The Secret audit's pace, on the real control plane: what it costs the API server at rest, and
that a deleted Secret is still reported within the bound it promises (docs/credentials.md).

Each test runs an operator of its own with a short pace at rest, waits until its audit says it is
at rest (kubeiam_audit_pass_seconds{hurried="false"}), then acts as a user would.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import pytest

from .credentials_support import account_manifest, credential_manifest, many, ready, wait_state
from .metrics_support import ApiServerRequests, scrape, wait_until_no_namespace_terminates
from .support import ClusterHandle, OperatorProcess, wait_for

# What a report takes besides the wait for its check: the check, a reconcile and a status write
# on a loaded 2-core machine.
REPORT_SLACK = 20.0


def at_rest(operator: OperatorProcess, *, least: float = 0.0) -> float:
    """Wait until the operator's Secret audit is at rest, in a pass whose bound is at least
    `least` (a pass begun while credentials were still being issued covers fewer); the bound
    (seconds a full pass takes at rest: a deleted Secret is reported within it)."""

    def bound() -> float | None:
        page = scrape(operator)
        if page.value("kubeiam_audit_pass_seconds", audit="Secret", hurried="true"):
            return None
        found = page.value("kubeiam_audit_pass_seconds", audit="Secret", hurried="false")
        return found if found and found >= least else None

    return wait_for(bound, timeout=300, what="the Secret audit to be at rest")


def reported_deleted(cluster: ClusterHandle, namespace: str, name: str) -> Callable[[], Any]:
    def probe() -> dict[str, Any] | None:
        obj = cluster.get("iamcred", name, namespace)
        return obj if obj and ready(obj)["reason"] == "SecretDeleted" else None

    return probe


def active_at_rest(
    cluster: ClusterHandle,
    namespace: str,
    operators: Callable[..., OperatorProcess],
    *,
    rest_pass: int,
    names: list[str],
) -> float:
    """An operator of the test's own (60 checks a minute at rest, a pass at least `rest_pass`
    seconds), `names` Active; the audit's bound once it is at rest."""
    wait_until_no_namespace_terminates(cluster)
    operator = operators(
        "paced", KUBEIAM_SECRET_AUDIT_REST_RATE="60", KUBEIAM_SECRET_AUDIT_REST_PASS=str(rest_pass)
    )
    cluster.apply(many([account_manifest(), *map(credential_manifest, names)]), namespace)
    for name in names:
        wait_state(cluster, namespace, name, "Active")
    return at_rest(operator)


def test_a_secret_deleted_at_rest_is_reported_within_the_documented_bound(
    cluster: ClusterHandle, namespace: str, operators: Callable[..., OperatorProcess]
) -> None:
    names = ["kept-1", "lost", "kept-2"]
    bound = active_at_rest(cluster, namespace, operators, rest_pass=30, names=names)
    # max(30 s, credentials / 60 a minute): 30 s unless earlier tests left 30 credentials behind.
    assert bound >= 30
    cluster.kubectl("delete", "secret", "lost", "-n", namespace)
    gone = wait_for(
        reported_deleted(cluster, namespace, "lost"),
        timeout=bound + REPORT_SLACK,
        what=f"the Secret deleted at rest to be reported within the bound ({bound:.0f} s)",
    )
    assert gone["status"]["state"] == "Active"
    for kept in ("kept-1", "kept-2"):
        assert ready(cluster.get("iamcred", kept, namespace) or {})["status"] == "True"


def test_a_deleted_credential_hurries_the_audit_at_rest(
    cluster: ClusterHandle, namespace: str, operators: Callable[..., OperatorProcess]
) -> None:
    """At rest a pass takes an hour here; a credential's deletion makes the audit check every
    Secret at once, so a Secret deleted with it is reported in seconds, not within the hour."""
    names = ["lost", "removed", "kept"]
    assert active_at_rest(cluster, namespace, operators, rest_pass=3600, names=names) >= 3600
    cluster.kubectl("delete", "secret", "lost", "-n", namespace)
    cluster.kubectl("delete", "iamcred", "removed", "-n", namespace)
    # A hurried pass over a few Secrets takes 10 s.
    wait_for(
        reported_deleted(cluster, namespace, "lost"),
        timeout=10 + REPORT_SLACK,
        what="the hurried audit to report the Secret deleted with the credential",
    )
    assert ready(cluster.get("iamcred", "kept", namespace) or {})["status"] == "True"


@pytest.mark.timeout(600)  # fifty credentials issued, the audit at rest, a minute's window
def test_the_audit_at_rest_keeps_to_its_budget_of_api_requests(
    cluster: ClusterHandle, namespace: str, operators: Callable[..., OperatorProcess]
) -> None:
    """Enough credentials that a pass at rest is paced by the budget (10 accounts, 50
    credentials: 100 s at 30 checks a minute, against a rest pass of 20 s): at rest the API
    server counts no more Secret GETs than the budget allows over the window, and some (the
    audit does run)."""
    wait_until_no_namespace_terminates(cluster)
    per_minute = 30
    operator = operators(
        "budget",
        KUBEIAM_SECRET_AUDIT_REST_RATE=str(per_minute),
        KUBEIAM_SECRET_AUDIT_REST_PASS="20",
        # The operator also reads its signing keys' Secret every refresh interval (30 s by
        # default): once an hour here, so the window counts the audit's GETs alone.
        KUBEIAM_TOKEN_KEY_REFRESH_INTERVAL="3600",
    )
    accounts = [f"acct-{i:02d}" for i in range(10)]
    manifests = [account_manifest(a) for a in accounts] + [
        credential_manifest(f"{a}-{k}", a) for a in accounts for k in range(5)
    ]
    cluster.apply(many(manifests), namespace)

    def all_active() -> bool:
        listed = json.loads(cluster.kubectl("get", "iamcred", "-n", namespace, "-o", "json").stdout)
        items = listed["items"]
        return len(items) == len(accounts) * 5 and all(
            (i.get("status") or {}).get("state") == "Active" for i in items
        )

    wait_for(all_active, timeout=300, what="50 credentials to be Active")
    # 100 s: a pass at rest over the 50 spreads over the budget.
    at_rest(operator, least=len(accounts) * 5 * 60 / per_minute)
    before, started = ApiServerRequests.read(cluster), time.monotonic()
    time.sleep(60)  # a measurement window, not a wait for something
    after, window = ApiServerRequests.read(cluster), time.monotonic() - started
    secret_gets = (after - before).total({"GET"}, group="", resource="secrets")
    # The rule spaces checks 60 / per_minute seconds apart: that many in the window, plus the
    # one at its very start.
    budget = math.floor(window * per_minute / 60) + 1
    assert 0 < secret_gets <= budget, (secret_gets, budget, window)
    assert scrape(operator).value("kubeiam_audit_pass_seconds", audit="Secret", hurried="true") == 0


pytestmark = pytest.mark.usefixtures("cluster")
