"""The API server restarts in the middle of a burst, twice: everything converges, nothing is lost
and nothing is doubled.

The local control plane restarts kube-apiserver in place (same port, arguments, certificates
and etcd); the operator's watches and requests fail meanwhile, and it must carry on by itself.
A kubectl watch dies with the API server, so the test watches again after each restart and
proves "created once" by UIDs and resource versions (a Secret re-created or changed in the gap
shows a second one) and by the operator's own count of successful Secret creations.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from .credentials_support import (
    StateRecorder,
    account_manifest,
    credential_manifest,
    read_secret,
    sha256,
    wait_state,
)
from .fault_support import LIMIT, Burst, World, check_secrets, keep_for_leak_scan
from .metrics_support import SecretEvents, scrape
from .support import ClusterHandle, OperatorProcess, wait_for

ACCOUNTS = ("red", "green", "blue")
PER_ACCOUNT = LIMIT + 3
# Restart when this many Secrets of the burst exist: early in it, and again half-way.
RESTART_AFTER = (2, 10)
MISSING_ACCOUNT = "ServiceAccount 'ghost' does not exist in namespace"


class SecretsSeen:
    """Every (UID, resourceVersion) each kube-iam Secret of a namespace was seen with, from
    watches (started again after each restart) and from listings (metadata columns only)."""

    def __init__(self, cluster: ClusterHandle, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.versions: dict[str, set[tuple[str, str]]] = {}
        self.watches: list[SecretEvents] = []

    def watch(self) -> None:
        self.watches.append(SecretEvents(self.cluster, self.namespace).start())

    def listing(self) -> int:
        """Record a listing (nothing while the API server is down); return how many exist."""
        result = self.cluster.kubectl(
            "get",
            "secrets",
            "-n",
            self.namespace,
            "-l",
            "app.kubernetes.io/managed-by=kube-iam",
            "--no-headers",
            "-o",
            "custom-columns=N:.metadata.name,U:.metadata.uid,R:.metadata.resourceVersion",
            check=False,
        )
        rows = [line.split() for line in result.stdout.splitlines()]
        for name, uid, version in (row for row in rows if len(row) == 3):
            self.versions.setdefault(name, set()).add((uid, version))
        return len(self.versions)

    def uids(self) -> dict[str, set[str]]:
        found = {name: {uid for uid, _ in seen} for name, seen in self.versions.items()}
        for watch in self.watches:
            for _, name, uid in list(watch.events):
                found.setdefault(name, set()).add(uid)
        return found

    def modified(self) -> list[str]:
        changed = {name for name, seen in self.versions.items() if len(seen) > 1}
        for watch in self.watches:
            changed |= set(watch.count("MODIFIED")) | set(watch.count("DELETED"))
        return sorted(changed)

    def stop(self) -> None:
        for watch in self.watches:
            watch.stop()


def test_an_apiserver_restart_mid_burst_loses_nothing_and_doubles_nothing(
    cluster: ClusterHandle,
    namespace: str,
    operators: Callable[..., OperatorProcess],
) -> None:
    local = cluster.local
    if local is None:
        pytest.skip(
            "restarts the API server of a local control plane this session started (or of a kept"
            " one with KUBEIAM_RESTART_KEPT_CLUSTER=1); this session's is not one"
        )
    operator = operators("survivor")
    cluster.apply("\n---\n".join(account_manifest(a) for a in ACCOUNTS), namespace)
    for account in ACCOUNTS:
        cluster.wait_condition("iamsa", account, namespace)
    seen = SecretsSeen(cluster, namespace)
    recorders = [StateRecorder(cluster, namespace).start()]
    seen.watch()
    try:
        burst = Burst(
            cluster,
            namespace,
            [
                credential_manifest(f"{account}-{i}", account)
                for i in range(PER_ACCOUNT)
                for account in ACCOUNTS
            ],
        )
        for threshold in RESTART_AFTER:
            wait_for(
                lambda: seen.listing() >= threshold,  # noqa: B023
                timeout=90,
                what=f"{threshold} Secrets",
            )
            existing, pids, started = len(seen.versions), local.pids(), time.monotonic()
            local.restart_apiserver()
            took = time.monotonic() - started
            print(f"restarted the API server with {existing} Secrets issued, in {took:.1f}s")
            # In place: a new kube-apiserver process, recorded; etcd and the
            # controller-manager untouched; the same URL (the kubeconfigs still work).
            now = local.pids()
            assert now.pop("kube-apiserver") != pids.pop("kube-apiserver")
            assert now == pids
            # The apply the restart cut short, and the kubectl watches that died with the old
            # process, start again at once.
            burst.resume()
            recorders.append(StateRecorder(cluster, namespace).start())
            seen.watch()
        burst.finish()

        def settled() -> World | None:
            world = World.read(cluster, namespace)
            seen.listing()
            now = {n: world.state(n) for n in world.credentials}
            return world if recorders[-1].states == now and not world.problems() else None

        try:
            world = wait_for(settled, timeout=120, what="the burst to settle")
        except AssertionError as error:
            problems = World.read(cluster, namespace).problems()
            raise AssertionError(f"{error}: {problems}\n{operator.log_tail()}") from None
    finally:
        for recorder in recorders:
            recorder.stop()
        seen.stop()

    # Nothing lost: every credential has its right state (see World.problems) and each Active
    # one the Secret its status hashes.
    assert len(world.credentials) == len(ACCOUNTS) * PER_ACCOUNT
    assert len(world.active()) == len(ACCOUNTS) * LIMIT
    hashes: dict[str, str] = {}
    check_secrets(cluster, namespace, world, hashes)
    # Nothing doubled: one UID per Secret name, never changed or deleted, and the operator
    # created each once (a create whose answer was lost meets a 409 and adopts the Secret).
    uids = seen.uids()
    assert set(uids) == world.active()
    assert all(len(u) == 1 for u in uids.values()), {n: len(u) for n, u in uids.items()}
    assert seen.modified() == []
    page = scrape(operator)
    assert page.value(
        "kubeiam_api_requests_total", verb="create", resource="secrets", code="201"
    ) == len(world.active())
    assert all(n <= LIMIT for r in recorders for n in r.max_active.values())
    # The operator survived both restarts and still reconciles what comes after them.
    assert operator.running, operator.log_tail()
    cluster.apply(account_manifest("late"), namespace)
    cluster.apply(credential_manifest("after-restart", "late"), namespace)
    obj = wait_state(cluster, namespace, "after-restart", "Active")
    secret = read_secret(cluster, namespace, "after-restart").client_secret()
    assert sha256(secret) == obj["status"]["secretHash"]
    # The session's admission-only process still answers the webhook alone (later tests
    # write through it): it refuses a credential of a missing account, with the rule's reason.
    operator.stop()
    assert cluster.admission is None or cluster.admission.running
    if cluster.admission is not None:
        refused = cluster.kubectl(
            "apply",
            "-n",
            namespace,
            "-f",
            "-",
            input=credential_manifest("orphan", "ghost"),
            check=False,
        )
        assert refused.returncode != 0
        assert MISSING_ACCOUNT in refused.stderr, refused.stderr
    keep_for_leak_scan(cluster, namespace)
