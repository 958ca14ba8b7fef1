"""Least privilege, proven: deploy/'s rules are narrow, and the API server enforces them.

Every operator process the suite starts acts as deploy/'s ServiceAccount (see conftest), so a
missing permission fails the test that needed it; the tests here show that a permission the
operator must not have is really refused.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

import pytest

from kubeiam.controllers.credentials.triggers import PROOF_KEY_SECRET
from kubeiam.devcluster import install
from kubeiam.devcluster.binaries import REPO_ROOT
from kubeiam.devcluster.kubectl import Kubectl
from kubeiam.tokens.keys import SIGNING_KEY_SECRET

from .credentials_support import account_manifest, credential_manifest
from .support import ClusterHandle, OperatorProcess, listening, wait_for

RBAC_FILE = REPO_ROOT / "deploy" / "rbac.yaml"
# The permissions table for people, which must list every rule of RBAC_FILE.
PERMISSIONS_DOC = REPO_ROOT / "docs" / "install.md"
AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"
# How an RBAC refusal shows in a log: the API server's message (quoted as is by kopf, escaped
# inside a JSON response body by the client library), or kopf's warning when it falls back. A
# 403 for another reason (a namespace being deleted refuses new Events) is not one of them.
PERMISSION_ERRORS = re.compile(r'is forbidden: User \\?"|Not enough permissions')
# A text log line's time, as kopf writes it: [2026-12-01 21:16:03,127].
LOG_TIME = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def _rules(cluster: ClusterHandle) -> list[dict[str, Any]]:
    """The operator's rules (user-roles.yaml's ClusterRoles are for people, bound by no one
    in deploy/)."""
    roles = [
        doc
        for doc in install.render(cluster.kubectl)
        if doc["kind"] in ("ClusterRole", "Role")
        and not doc["metadata"].get("labels", {}).get("rbac.authorization.k8s.io/aggregate-to-view")
        and not doc["metadata"]
        .get("labels", {})
        .get("rbac.authorization.k8s.io/aggregate-to-admin")
    ]
    assert roles, "deploy/ grants the operator nothing"
    return [rule for role in roles for rule in role["rules"]]


def _can(
    cluster: ClusterHandle, verb: str, resource: str, *extra: str, who: str = install.SUBJECT
) -> bool:
    result = cluster.kubectl("auth", "can-i", verb, resource, f"--as={who}", *extra, check=False)
    return result.stdout.strip() == "yes"


def test_no_rule_has_a_wildcard_and_secrets_are_never_listed_or_watched(
    cluster: ClusterHandle,
) -> None:
    rules = _rules(cluster)
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert not any("*" in value for value in rule.get(field, [])), rule
        assert "nonResourceURLs" not in rule, rule
    for rule in rules:
        if "" in rule["apiGroups"] and "secrets" in rule["resources"]:
            assert not {"list", "watch", "update", "patch"} & set(rule["verbs"]), rule
            # The operator's (any Secret it writes), or the token server's: one Secret, read.
            assert (sorted(rule["verbs"]), rule.get("resourceNames")) in (
                (["create", "delete", "get"], None),
                (["get"], [SIGNING_KEY_SECRET]),
            ), rule
    bindings = [
        doc
        for doc in install.render(cluster.kubectl)
        if doc["kind"] in ("ClusterRoleBinding", "RoleBinding")
    ]
    # Each of deploy/'s three identities is bound to its own roles, and to nothing else; the
    # only namespaced one is the token server's, in the operator's namespace.
    expected = {
        ("ClusterRole", "kube-iam-operator"): install.SERVICE_ACCOUNT,
        ("ClusterRole", "kube-iam-webhook"): install.WEBHOOK_SERVICE_ACCOUNT,
        ("ClusterRole", "kube-iam-token-server"): install.TOKEN_SERVER_SERVICE_ACCOUNT,
        ("Role", "kube-iam-token-server"): install.TOKEN_SERVER_SERVICE_ACCOUNT,
    }
    assert sorted((b["roleRef"]["kind"], b["roleRef"]["name"]) for b in bindings) == sorted(
        expected
    )
    for binding in bindings:
        assert binding["subjects"] == [
            {
                "kind": "ServiceAccount",
                "name": expected[binding["roleRef"]["kind"], binding["roleRef"]["name"]],
                "namespace": install.NAMESPACE,
            }
        ]
        if binding["kind"] == "RoleBinding":
            assert binding["metadata"]["namespace"] == install.NAMESPACE


def test_every_rule_says_why_and_the_install_docs_list_it(cluster: ClusterHandle) -> None:
    lines = RBAC_FILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if line.strip().startswith("- apiGroups:"):
            assert lines[number - 1].strip().startswith("#"), f"rbac.yaml:{number + 1} says why"
    table = PERMISSIONS_DOC.read_text()
    for rule in _rules(cluster):
        group = rule["apiGroups"][0] or "core"
        resources = ", ".join(f"`{resource}`" for resource in rule["resources"])
        if rule.get("resourceNames"):
            resources += " named " + ", ".join(f"`{name}`" for name in rule["resourceNames"])
        row = f"| `{group}` | {resources} | {', '.join(rule['verbs'])} |"
        assert row in table, f"the permissions table of docs/install.md lacks: {row}"


def test_the_service_account_is_refused_what_it_was_not_granted(cluster: ClusterHandle) -> None:
    assert not _can(cluster, "list", "secrets", "--all-namespaces")
    assert not _can(cluster, "watch", "secrets", "--all-namespaces")
    assert not _can(cluster, "update", "secrets", "-n", "default")
    assert not _can(cluster, "create", "serviceaccountcredentials.iam.kubeiam.io", "-n", "x")
    assert not _can(cluster, "delete", "serviceaccounts.iam.kubeiam.io", "-n", "x")
    assert not _can(cluster, "list", "configmaps", "--all-namespaces")
    assert not _can(cluster, "patch", "clusterkopfpeerings.kopf.dev/someone-else")
    # ... and holds exactly what the operator uses.
    assert _can(cluster, "create", "secrets", "-n", "default")
    assert _can(cluster, "get", "secrets", "-n", "default")
    assert _can(cluster, "delete", "secrets", "-n", "default")
    assert _can(
        cluster,
        "patch",
        "serviceaccountcredentials.iam.kubeiam.io",
        "--subresource=status",
        "-n",
        "x",
    )
    assert _can(cluster, "patch", "clusterkopfpeerings.kopf.dev/kube-iam")


def test_a_call_with_the_operators_own_token_is_refused_with_403(cluster: ClusterHandle) -> None:
    if cluster.operator_kubeconfig is None:
        pytest.skip("the operator's token lives in the cluster")
    operator = Kubectl(cluster.kubectl.binary, cluster.operator_kubeconfig)
    whoami = json.loads(operator("auth", "whoami", "-o", "json").stdout)
    assert whoami["status"]["userInfo"]["username"] == install.SUBJECT
    refused = operator("get", "--raw", "/api/v1/secrets", check=False)
    assert refused.returncode != 0
    assert "Forbidden" in refused.stderr
    assert "(403)" in refused.stderr or "forbidden" in refused.stderr


def test_peering_works_under_the_operators_rbac(
    cluster: ClusterHandle, session_operator: OperatorProcess
) -> None:
    """deploy/ turns peering on: a replica that takes part in it needs no more permissions."""
    if cluster.operator_kubeconfig is None:
        pytest.skip("the operator runs in the cluster")
    session_operator.stop()
    replica = OperatorProcess(cluster, name="peering", args=("--priority", "100"))
    try:
        replica.start()

        def registered() -> dict[str, Any] | None:
            peering = cluster.get("clusterkopfpeering", "kube-iam", "")
            peers = (peering or {}).get("status") or {}
            return next((p for p in peers.values() if p.get("priority") == 100), None)

        wait_for(registered, what="the replica's heartbeat in the peering object")
    finally:
        replica.stop()
    assert replica.log_path is not None
    log = replica.log_path.read_text(errors="replace")
    assert not PERMISSION_ERRORS.search(log), replica.log_tail()


@pytest.mark.runs_last
def test_no_operator_process_was_refused_a_permission(cluster: ClusterHandle) -> None:
    """After the whole suite: no operator log reports a 403 or a permission kopf lacked."""
    logs = sorted((cluster.log_dir / "operators").glob("*.log"))
    assert logs, "no operator log was found"
    # A starting API server answers 403 to everyone until its RBAC caches fill: lines logged
    # while the fault suite had it restarting are no sign of a missing rule.
    outages = cluster.local.apiserver_outages() if cluster.local else []

    def during_an_outage(line: str) -> bool:
        stamp = LOG_TIME.match(line)
        if stamp is None:
            return False
        at = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        return any(start - 1 <= at <= end + 1 for start, end in outages)

    refused = {}
    for path in logs:
        found = [
            line[:300]
            for line in path.read_text(errors="replace").splitlines()
            if PERMISSION_ERRORS.search(line) and not during_an_outage(line)
        ]
        if found:
            refused[path.name] = found[:3]
    assert refused == {}, json.dumps(refused, indent=2)


def test_the_webhooks_service_account_holds_only_what_admission_needs(
    cluster: ClusterHandle, namespace: str, session_operator: OperatorProcess
) -> None:
    """The webhook parses what callers send: its ServiceAccount reads accounts and asks
    SubjectAccessReviews, and nothing more; the session's webhook process runs as it, and
    judges requests (a refusal needs both rights) without one permission error."""
    if cluster.admission is None or cluster.webhook_kubeconfig is None:
        pytest.skip("no local webhook process")
    webhook = install.WEBHOOK_SUBJECT
    assert _can(cluster, "get", "serviceaccounts.iam.kubeiam.io", "-n", "x", who=webhook)
    assert _can(cluster, "create", "subjectaccessreviews.authorization.k8s.io", who=webhook)
    for verb, resource, *extra in (
        ("get", "secrets", "-n", "x"),
        ("create", "secrets", "-n", "x"),
        ("delete", "secrets", "-n", "x"),
        ("list", "serviceaccounts.iam.kubeiam.io", "-n", "x"),
        ("patch", "serviceaccounts.iam.kubeiam.io", "-n", "x"),
        ("get", "serviceaccountcredentials.iam.kubeiam.io", "-n", "x"),
        ("patch", "serviceaccountcredentials.iam.kubeiam.io", "--subresource=status", "-n", "x"),
        ("create", "events", "-n", "x"),
        ("list", "customresourcedefinitions.apiextensions.k8s.io"),
        ("patch", "clusterkopfpeerings.kopf.dev/kube-iam"),
    ):
        assert not _can(cluster, verb, resource, *extra, who=webhook), (verb, resource)
    # Started afresh, so the log read below holds this process's start and nothing older.
    # The session's operator serves the same port when it runs (SO_REUSEPORT): it steps aside.
    session_operator.stop()
    cluster.admission.stop()
    assert cluster.admission.log_path is not None
    offset = cluster.admission.log_path.stat().st_size
    cluster.admission.start()
    assert cluster.webhook is not None
    wait_for(lambda: listening(cluster.webhook.port), what="the webhook to listen")  # type: ignore[union-attr]
    # The real path: an account, then a credential for it by someone who is not its owner and
    # may not manage it: the webhook reads the account and asks the API server, and refuses.
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=account_manifest("audited"))
    cluster.kubectl(
        "create", "rolebinding", "mallory-edits", "-n", namespace, "--clusterrole=edit",
        "--user=mallory",
    )  # fmt: skip
    result = cluster.kubectl(
        "create", "-n", namespace, "-f", "-", "--as=mallory", "--as-group=system:authenticated",
        input=credential_manifest("audited-cred", "audited"), check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert 'admission webhook "credentials.iam.kubeiam.io" denied the request' in result.stderr
    with cluster.admission.log_path.open("rb") as file:
        file.seek(offset)
        log = file.read().decode(errors="replace")
    assert "Webhook 'validate-serviceaccountcredentials'" in log, log[-3000:]
    assert not PERMISSION_ERRORS.search(log), log[-3000:]
    assert "Forbidden" not in log, log[-3000:]


def test_the_token_servers_service_account_holds_only_what_answering_needs(
    cluster: ClusterHandle,
) -> None:
    """The token server parses what any workload sends: it lists and watches kube-iam's kinds,
    patches a credential's and a trust's status (usage), reads its signing keys Secret by name
    in the operator's namespace, and nothing more."""
    server = install.TOKEN_SERVER_SUBJECT
    ns = install.NAMESPACE
    for kind in ("serviceaccounts", "serviceaccountcredentials", "federationtrusts"):
        for verb in ("list", "watch"):
            assert _can(cluster, verb, f"{kind}.iam.kubeiam.io", "--all-namespaces", who=server)
    for kind in ("serviceaccountcredentials", "federationtrusts"):
        assert _can(
            cluster, "patch", f"{kind}.iam.kubeiam.io", "--subresource=status", "-n", "x",
            who=server,
        )  # fmt: skip
    assert _can(cluster, "get", f"secrets/{SIGNING_KEY_SECRET}", "-n", ns, who=server)
    for verb, resource, *extra in (
        # Any other Secret: the operator's proof key beside it, one elsewhere, the rest.
        ("get", f"secrets/{PROOF_KEY_SECRET}", "-n", ns),
        ("get", "secrets/kube-iam-webhook-tls", "-n", ns),
        ("get", f"secrets/{SIGNING_KEY_SECRET}", "-n", "default"),
        ("get", "secrets", "-n", "x"),
        ("list", "secrets", "-n", ns),
        ("watch", "secrets", "-n", ns),
        ("list", "secrets", "--all-namespaces"),
        ("create", "secrets", "-n", ns),
        ("update", f"secrets/{SIGNING_KEY_SECRET}", "-n", ns),
        ("patch", f"secrets/{SIGNING_KEY_SECRET}", "-n", ns),
        ("delete", f"secrets/{SIGNING_KEY_SECRET}", "-n", ns),
        # kube-iam's kinds: no get (never on the token path), no write but usage.
        ("get", "serviceaccountcredentials.iam.kubeiam.io", "-n", "x"),
        ("patch", "serviceaccountcredentials.iam.kubeiam.io", "-n", "x"),
        ("create", "serviceaccountcredentials.iam.kubeiam.io", "-n", "x"),
        ("delete", "serviceaccounts.iam.kubeiam.io", "-n", "x"),
        ("patch", "serviceaccounts.iam.kubeiam.io", "--subresource=status", "-n", "x"),
        ("patch", "federationtrusts.iam.kubeiam.io", "-n", "x"),
        ("update", "serviceaccountcredentials.iam.kubeiam.io", "--subresource=status", "-n", "x"),
        ("create", "events", "-n", "x"),
        ("create", "subjectaccessreviews.authorization.k8s.io"),
        ("list", "configmaps", "--all-namespaces"),
        ("list", "customresourcedefinitions.apiextensions.k8s.io"),
        ("patch", "clusterkopfpeerings.kopf.dev/kube-iam"),
    ):
        assert not _can(cluster, verb, resource, *extra, who=server), (verb, resource, extra)


def test_a_call_with_the_token_servers_own_token_is_refused_with_403(
    cluster: ClusterHandle, session_operator: OperatorProcess
) -> None:
    """With its real token, as an attacker holding a token server's pod would: its signing keys
    are read, and the Secret beside them, or all Secrets, are refused."""
    if cluster.token_server_kubeconfig is None:
        pytest.skip("the token server's token lives in the cluster")
    if not session_operator.running:
        session_operator.start()  # it creates both key Secrets at start
    admin = cluster.kubectl

    def present(name: str) -> bool:
        # -o name: the Secret's data is never read into the test.
        found = admin("get", "secret", name, "-n", install.NAMESPACE, "-o", "name", check=False)
        return found.returncode == 0

    for name in (SIGNING_KEY_SECRET, PROOF_KEY_SECRET):
        wait_for(lambda name=name: present(name), what=f"the Secret {name}")  # type: ignore[misc]
    server = Kubectl(admin.binary, cluster.token_server_kubeconfig)
    whoami = json.loads(server("auth", "whoami", "-o", "json").stdout)
    assert whoami["status"]["userInfo"]["username"] == install.TOKEN_SERVER_SUBJECT
    # -o name: only the name is printed, never the key.
    read = server("get", "secret", SIGNING_KEY_SECRET, "-n", install.NAMESPACE, "-o", "name")
    assert read.stdout.strip() == f"secret/{SIGNING_KEY_SECRET}"
    for attempt in (
        ("get", "secret", PROOF_KEY_SECRET, "-n", install.NAMESPACE, "-o", "name"),
        ("get", "--raw", "/api/v1/secrets"),
        ("get", "--raw", f"/api/v1/namespaces/{install.NAMESPACE}/secrets"),
        ("delete", "secret", SIGNING_KEY_SECRET, "-n", install.NAMESPACE),
        ("get", "--raw", "/apis/iam.kubeiam.io/v1alpha1/namespaces/x/serviceaccounts/y"),
    ):
        refused = server(*attempt, check=False)
        assert refused.returncode != 0, attempt
        assert "Forbidden" in refused.stderr or "forbidden" in refused.stderr, attempt
    # The signing keys are still there: the refused delete deleted nothing.
    assert present(SIGNING_KEY_SECRET)
