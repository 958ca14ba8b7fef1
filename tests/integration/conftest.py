"""Fixtures for tests against the real control plane: one cluster a session, a namespace a test."""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kubeiam.devcluster.binaries import REPO_ROOT, ensure_binaries
from kubeiam.devcluster.cluster import LocalCluster, apply_crds
from kubeiam.devcluster.kubectl import Kubectl

from .support import ClusterHandle, OperatorProcess

# Tests get a control plane of their own, apart from the one `make run` uses, so a developer can
# keep both running; KUBECONFIG points them at another cluster instead.
# KUBEIAM_TEST_STATE_DIR gives a second checkout or a parallel run a control plane of its own.
TEST_STATE_DIR = Path(
    os.environ.get("KUBEIAM_TEST_STATE_DIR") or REPO_ROOT / ".local" / "test-cluster"
)
ORGANIZATION = "acme"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
    # The leak scan looks at what every other test produced, so it goes last.
    items.sort(key=lambda item: item.get_closest_marker("runs_last") is not None)


@pytest.fixture(scope="session")
def cluster() -> Iterator[ClusterHandle]:
    given = os.environ.get("KUBECONFIG")
    if given:
        log_dir = TEST_STATE_DIR / "logs"
        binary = shutil.which("kubectl") or ensure_binaries(log_dir) / "kubectl"
        kubectl = Kubectl(binary, Path(given))
        apply_crds(kubectl)
        yield ClusterHandle(kubeconfig=Path(given), kubectl=kubectl, log_dir=log_dir)
        return
    local = LocalCluster(TEST_STATE_DIR)
    started_here = not local.is_running()
    local.up(announce=True)
    try:
        yield ClusterHandle(
            kubeconfig=local.kubeconfig, kubectl=local.kubectl, log_dir=local.log_dir
        )
    finally:
        if started_here and not os.environ.get("KUBEIAM_KEEP_TEST_CLUSTER"):
            local.down(quiet=True)


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
    process = OperatorProcess(cluster, env={"KUBEIAM_ORGANIZATION": ORGANIZATION})
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
    session_operator.stop()
    started: list[OperatorProcess] = []

    def start(name: str = "operator", **env: str) -> OperatorProcess:
        process = OperatorProcess(
            cluster,
            name=f"{request.node.name[:40]}-{name}",
            env={"KUBEIAM_ORGANIZATION": ORGANIZATION, **env},
        )
        started.append(process)
        return process.start()

    try:
        yield start
    finally:
        for process in started:
            process.stop()
