"""Fixtures for tests against the real control plane: one cluster a session, a namespace a test."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kubeiam.devcluster import install
from kubeiam.devcluster.binaries import REPO_ROOT, ensure_binaries
from kubeiam.devcluster.cluster import LocalCluster, apply_crds
from kubeiam.devcluster.kubectl import Kubectl
from kubeiam.devcluster.token_authn import TokenIssuer
from kubeiam.devcluster.webhook import LocalWebhook
from kubeiam.devcluster.webhook import unregister as unregister_webhook

from .support import ClusterHandle, InClusterOperator, OperatorProcess
from .token_support import Kubectl as WorkloadKubectl

# Tests get a control plane of their own, apart from the one `make run` uses, so a developer can
# keep both running; KUBECONFIG points them at another cluster instead.
# KUBEIAM_TEST_STATE_DIR gives a second checkout or a parallel run a control plane of its own.
TEST_STATE_DIR = Path(
    os.environ.get("KUBEIAM_TEST_STATE_DIR") or REPO_ROOT / ".local" / "test-cluster"
)
# A control plane this session found running (kept by an earlier run, or another session's in the
# same state dir) is not this session's to restart: the fault tests that restart its parts skip
# unless this says the person running them owns it (their own kept cluster, no one else on it).
RESTART_KEPT_CLUSTER = bool(os.environ.get("KUBEIAM_RESTART_KEPT_CLUSTER"))
ORGANIZATION = "acme"
# Set by `make kind-e2e`: the operator runs in the cluster (deploy/, applied with the image
# built from this checkout), and the tests start no operator process of their own.
EXTERNAL_OPERATOR = bool(os.environ.get("KUBEIAM_E2E_EXTERNAL_OPERATOR"))
# What operator processes run with on top of the installed ConfigMap: the organisation the
# tests' client ids name, log lines the tests (and a person reading them) can search, and the
# Secret audit as fast at rest as in a hurry (20 a second, a pass every 10 s), so that a test
# that deletes a Secret sees it reported within its wait; test_secret_audit_pace.py sets its own.
TEST_SETTINGS = {
    "KUBEIAM_ORGANIZATION": ORGANIZATION,
    "KUBEIAM_LOG_FORMAT": "text",
    "KUBEIAM_SECRET_AUDIT_REST_RATE": "1200",
    "KUBEIAM_SECRET_AUDIT_REST_PASS": "10",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
    # The leak scan looks at what every other test produced, so it goes last.
    items.sort(key=lambda item: item.get_closest_marker("runs_last") is not None)


def _as_deployed(
    kubectl: Kubectl, log_dir: Path, *, workload: bool, webhook: LocalWebhook | None
) -> ClusterHandle:
    """Install deploy/, and hand operator processes its ServiceAccount and settings: every
    test then runs the operator under the RBAC a user installs. With a local webhook, the
    API server calls processes on loopback for admission, as it calls the pods in a cluster."""
    install.install(kubectl, workload=workload, local_webhook=webhook)
    operator_kubeconfig = install.operator_kubeconfig(
        kubectl, TEST_STATE_DIR / "operator.kubeconfig"
    )
    webhook_kubeconfig = install.operator_kubeconfig(
        kubectl, TEST_STATE_DIR / "webhook.kubeconfig", install.WEBHOOK_SERVICE_ACCOUNT
    )
    token_server_kubeconfig = install.operator_kubeconfig(
        kubectl, TEST_STATE_DIR / "token-server.kubeconfig", install.TOKEN_SERVER_SERVICE_ACCOUNT
    )
    if webhook is None:
        # A cluster whose API server cannot reach this machine: no webhook is registered.
        unregister_webhook(kubectl)
    return ClusterHandle(
        kubeconfig=kubectl.kubeconfig,
        kubectl=kubectl,
        log_dir=log_dir,
        operator_kubeconfig=operator_kubeconfig,
        webhook_kubeconfig=webhook_kubeconfig,
        token_server_kubeconfig=token_server_kubeconfig,
        operator_env={
            **install.settings_env(kubectl),
            **TEST_SETTINGS,
            **(webhook.env() if webhook else {"KUBEIAM_WEBHOOK_PORT": "0"}),
        },
        webhook=webhook,
    )


def _serving_admission(handle: ClusterHandle) -> Iterator[ClusterHandle]:
    """Keep a webhook-only process (`kube-iam run --admission-only`) up for the session, so
    kube-iam's kinds can be written while a test has stopped or killed every operator; the
    operators a test starts serve the same port beside it."""
    if handle.webhook is None:
        yield handle
        return
    # As deploy/'s webhook Deployment runs it: under the webhook's own ServiceAccount.
    handle.admission = OperatorProcess(
        handle,
        name="admission",
        args=("--admission-only",),
        kubeconfig=handle.webhook_kubeconfig,
    )
    handle.admission.start()
    try:
        yield handle
    finally:
        handle.admission.stop()


@pytest.fixture(scope="session")
def cluster() -> Iterator[ClusterHandle]:
    given = os.environ.get("KUBECONFIG")
    if given:
        log_dir = TEST_STATE_DIR / "logs"
        binary = shutil.which("kubectl") or ensure_binaries(log_dir) / "kubectl"
        kubectl = Kubectl(binary, Path(given))
        apply_crds(kubectl)
        if EXTERNAL_OPERATOR:
            yield ClusterHandle(kubeconfig=Path(given), kubectl=kubectl, log_dir=log_dir)
        else:
            # A cluster with nodes would run the Deployment's pods beside the tests' processes.
            yield _as_deployed(kubectl, log_dir, workload=False, webhook=None)
        return
    local = LocalCluster(TEST_STATE_DIR)
    started_here = not local.is_running()
    local.up(announce=True)
    try:
        # No kubelet runs here: the Deployment is accepted and its pods never start.
        handle = _as_deployed(local.kubectl, local.log_dir, workload=True, webhook=local.webhook)
        # Only a control plane this session owns is handed to tests that restart its parts.
        handle.local = local if started_here or RESTART_KEPT_CLUSTER else None
        yield from _serving_admission(handle)
    finally:
        if started_here and not os.environ.get("KUBEIAM_KEEP_TEST_CLUSTER"):
            local.down(quiet=True)
            (TEST_STATE_DIR / "operator.kubeconfig").unlink(missing_ok=True)
            (TEST_STATE_DIR / "webhook.kubeconfig").unlink(missing_ok=True)
            (TEST_STATE_DIR / "token-server.kubeconfig").unlink(missing_ok=True)


@pytest.fixture(autouse=True)
def _in_cluster_operator_logs(request: pytest.FixtureRequest) -> None:
    """Before the tests that read every operator log, fetch the in-cluster operator's."""
    if not EXTERNAL_OPERATOR or request.node.get_closest_marker("runs_last") is None:
        return
    cluster: ClusterHandle = request.getfixturevalue("cluster")
    logs = cluster.kubectl(
        "logs",
        "-n",
        install.NAMESPACE,
        "--selector=app.kubernetes.io/name=kube-iam",
        "--all-containers",
        "--prefix",
        "--tail=-1",
    ).stdout
    path = cluster.log_dir / "operators" / "in-cluster.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(logs)


@pytest.fixture
def namespace(cluster: ClusterHandle, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, named after it so its objects are easy to find."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{slug}-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def session_operator(cluster: ClusterHandle) -> Iterator[OperatorProcess]:
    if cluster.operator_kubeconfig is None:
        yield InClusterOperator(cluster, name="in-cluster")
        return
    process = OperatorProcess(cluster)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def operator(session_operator: OperatorProcess) -> OperatorProcess:
    """The session's operator process, as `kube-iam run` starts it, running."""
    if not session_operator.running:
        session_operator.start()
    return session_operator


@pytest.fixture
def operators(
    cluster: ClusterHandle, session_operator: OperatorProcess, request: pytest.FixtureRequest
) -> Iterator[Callable[..., OperatorProcess]]:
    """Operator processes of the test's own (the session's is stopped meanwhile)."""
    if cluster.operator_kubeconfig is None:
        pytest.skip("the operator runs in the cluster; this test needs processes of its own")
    session_operator.stop()
    started: list[OperatorProcess] = []

    def start(name: str = "operator", *args: str, **env: str) -> OperatorProcess:
        """A process named after the test; `args` replace `--standalone`, `env` adds settings."""
        process = OperatorProcess(
            cluster,
            name=f"{request.node.name[:40]}-{name}",
            env=env,
            args=args or ("--standalone",),
        )
        started.append(process)
        return process.start()

    try:
        yield start
    finally:
        for process in started:
            process.stop()


# -- the token modules' fixtures: here once, so that a module only names them as arguments ---------


def _local_cluster() -> LocalCluster:
    if os.environ.get("KUBECONFIG"):
        pytest.skip("the API server of a cluster named by KUBECONFIG does not know the issuer")
    return LocalCluster(TEST_STATE_DIR)


@pytest.fixture(scope="module")
def issuer(cluster: ClusterHandle) -> TokenIssuer:
    found = _local_cluster().token_issuer
    if found is None:
        pytest.skip(
            "the local control plane was started before it named kube-iam's token issuer; "
            "stop it (kube-iam cluster down --state-dir ...) and run again"
        )
    return found


@pytest.fixture(scope="module")
def kubectl(cluster: ClusterHandle, tmp_path_factory: pytest.TempPathFactory) -> WorkloadKubectl:
    local = _local_cluster()
    state = json.loads((TEST_STATE_DIR / "cluster.json").read_text())
    return WorkloadKubectl(
        local.kubectl_path,
        state["apiserver_url"],
        str(TEST_STATE_DIR / "pki" / "ca.crt"),
        tmp_path_factory.mktemp("token-kubeconfigs"),
    )


@pytest.fixture(scope="module")
def trust_operator(
    cluster: ClusterHandle, session_operator: OperatorProcess, issuer_env: dict[str, str]
) -> Iterator[OperatorProcess]:
    """An operator with the issuer settings, in place of the session's for this module
    (`issuer_env` is the module's own fixture)."""
    session_operator.stop()
    process = OperatorProcess(cluster, name="trusts", env=issuer_env)
    process.start()
    try:
        yield process
    finally:
        process.stop()
