"""No issued secret appears anywhere the operator writes or prints.

Runs after every other integration test (see conftest), and looks for each client secret the
suite read from a Secret, each access token the token server's tests got and each DPoP proof
they sent, in: the operator and token server logs, every Event, the status and annotations of
every kube-iam object, and the metrics pages (every page a test kept, and a scrape of a running
operator), and the events and objects the fault suites kept of their namespaces. A hit fails
without printing the secret.
"""

from __future__ import annotations

import json

import pytest

from .credentials_support import ISSUED, ISSUED_TOKENS, MANAGED_BY, SENT_PROOFS, SUBJECT_TOKENS
from .support import ClusterHandle, OperatorProcess


def _places(cluster: ClusterHandle, operator: OperatorProcess) -> dict[str, str]:
    places: dict[str, str] = {}
    for path in sorted((cluster.log_dir / "operators").glob("*.log")):
        places[f"log {path.name}"] = path.read_text(errors="replace")
    for path in sorted((cluster.log_dir / "metrics").glob("*.prom")):
        places[f"metrics {path.name}"] = path.read_text(errors="replace")
    # What the fault suites kept of their namespaces before those were deleted.
    for path in sorted((cluster.log_dir / "namespaces").glob("*.json")):
        places[f"kept {path.name}"] = path.read_text(errors="replace")
    if cluster.operator_kubeconfig is not None:
        # A fresh page from an operator that resumed every object the suite left behind.
        places["metrics of the running operator"] = operator.scrape()
    events = cluster.kubectl("get", "events", "--all-namespaces", "-o", "json").stdout
    places["events"] = events
    objects = json.loads(cluster.kubectl("get", "iam", "--all-namespaces", "-o", "json").stdout)
    for item in objects["items"]:
        where = f"{item['kind']} {item['metadata']['namespace']}/{item['metadata']['name']}"
        places[f"{where} status"] = json.dumps(item.get("status") or {})
        places[f"{where} annotations"] = json.dumps(item["metadata"].get("annotations") or {})
    secrets = json.loads(
        cluster.kubectl(
            "get",
            "secrets",
            "--all-namespaces",
            "-l",
            MANAGED_BY,
            "-o",
            "json",
        ).stdout
    )
    for item in secrets["items"]:
        where = f"Secret {item['metadata']['namespace']}/{item['metadata']['name']}"
        places[f"{where} annotations"] = json.dumps(item["metadata"].get("annotations") or {})
        places[f"{where} labels"] = json.dumps(item["metadata"].get("labels") or {})
    return places


@pytest.mark.runs_last
def test_no_issued_secret_is_found_in_logs_events_status_annotations_or_metrics(
    cluster: ClusterHandle, operator: OperatorProcess
) -> None:
    assert len(ISSUED) >= 10, "the credential tests must run first and read their secrets"
    places = _places(cluster, operator)
    assert any(name.startswith("log ") for name in places), "no operator log was found"
    if cluster.operator_kubeconfig is not None:
        assert "kubeiam_credentials" in places["metrics of the running operator"]
    leaks = sorted(where for where, text in places.items() for secret in ISSUED if secret in text)
    assert leaks == [], f"{len(leaks)} places hold an issued client secret"
    # The token server's log is among the operator logs; its tokens are looked for everywhere.
    token_leaks = sorted(
        where for where, text in places.items() for token in ISSUED_TOKENS if token in text
    )
    assert token_leaks == [], f"{len(token_leaks)} places hold an issued access token"
    proof_leaks = sorted(
        where for where, text in places.items() for proof in SENT_PROOFS if proof in text
    )
    assert proof_leaks == [], f"{len(proof_leaks)} places hold a DPoP proof a test sent"
    # Subject tokens presented to token exchange: an external identity's proof, never kept.
    subject_leaks = sorted(
        where for where, text in places.items() for token in SUBJECT_TOKENS if token in text
    )
    assert subject_leaks == [], f"{len(subject_leaks)} places hold a subject token"
