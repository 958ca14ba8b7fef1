"""The API server restarts in the middle of a burst, twice: everything converges, nothing is lost
and nothing is doubled.

The local control plane restarts kube-apiserver in place (same port, arguments, certificates
and etcd); the operator's watches and requests fail meanwhile, and it must carry on by itself.
Each restart comes while the burst still has Secrets to issue (checked, not assumed).
A kubectl watch dies with the API server, so the test watches again after each restart and
proves "created once" by UIDs and resource versions (a Secret re-created or changed in the gap
shows a second one). The operator's own count of successful Secret creations during the burst
is at most the number of Secrets: a create whose answer was lost meets a 409 on its retry and
adopts the Secret, which is right and counts no 201.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from .credentials_support import (
    MANAGED_BY,
    StateRecorder,
    account_manifest,
    credential_manifest,
    many,
    read_secret,
    secret_versions,
    sha256,
    wait_state,
)
from .fault_support import LIMIT, Burst, check_secrets, keep_for_leak_scan, settle
from .metrics_support import SecretEvents, scrape
from .support import ClusterHandle, OperatorProcess, wait_for

ACCOUNTS = ("red", "green", "blue")
PER_ACCOUNT = LIMIT + 3
ISSUED = len(ACCOUNTS) * LIMIT  # Secrets when the burst has settled
# Restart when this many Secrets of the burst exist: early in it, and again half-way.
RESTART_AFTER = (2, 10)
MISSING_ACCOUNT = "ServiceAccount 'ghost' does not exist in namespace"


class SecretsSeen:
    """Every UID (and, from listings, resourceVersion) each Secret of a namespace was seen with,
    from watches (started again after each restart) and listings (metadata columns only)."""

    def __init__(self, cluster: ClusterHandle, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.versions: dict[str, set[tuple[str, str]]] = {}
        self.watches: list[SecretEvents] = []

    def watch(self) -> None:
        self.watches.append(SecretEvents(self.cluster, self.namespace).start())

    def listing(self) -> None:
        """Record a listing of kube-iam's Secrets (nothing while the API server is down)."""
        rows = secret_versions(self.cluster, self.namespace, "-l", MANAGED_BY, check=False)
        for name, uid, version in rows:
            self.versions.setdefault(name, set()).add((uid, version))

    def uids(self) -> dict[str, set[str]]:
        found = {name: {uid for uid, _ in seen} for name, seen in self.versions.items()}
        for watch in self.watches:
            for name, uids in watch.uids().items():
                found.setdefault(name, set()).update(uids)
        return found

    def modified(self) -> list[str]:
        changed = {name for name, seen in self.versions.items() if len(seen) > 1}
        for watch in self.watches:
            changed |= set(watch.count("MODIFIED")) | set(watch.count("DELETED"))
        return sorted(changed)

    def stop(self) -> None:
        for watch in self.watches:
            watch.stop()


def _creates(operator: OperatorProcess, code: str) -> int:
    """How many Secret creates the operator saw answered with `code`, by its own metric."""
    page = scrape(operator)
    return int(
        page.value("kubeiam_api_requests_total", verb="create", resource="secrets", code=code)
    )


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
    cluster.apply(many([account_manifest(a) for a in ACCOUNTS]), namespace)
    for account in ACCOUNTS:
        cluster.wait_condition("iamsa", account, namespace)
    seen = SecretsSeen(cluster, namespace)
    recorders = [StateRecorder(cluster, namespace).start()]
    seen.watch()
    before = {code: _creates(operator, code) for code in ("201", "409")}
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

            def issued(threshold: int = threshold) -> int | None:
                # An apply the last restart cut short after it was resumed is resumed again.
                burst.resume()
                count = len(seen.uids())
                return count if count >= threshold else None

            existing = wait_for(issued, timeout=90, interval=0.05, what=f"{threshold} Secrets")
            # Mid-burst, or the restart proves nothing: Secrets are still to be issued.
            assert existing < ISSUED, f"all {existing} Secrets existed before the restart"
            pids, started = local.pids(), time.monotonic()
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
        world = settle(
            cluster,
            namespace,
            recorders[-1],
            seen.watches[-1],
            operator,
            timeout=120,
            what="the burst to settle",
        )
        seen.listing()
    finally:
        for recorder in recorders:
            recorder.stop()
        seen.stop()

    # Nothing lost: every credential has its right state (see World.problems) and each Active
    # one the Secret its status hashes.
    assert len(world.credentials) == len(ACCOUNTS) * PER_ACCOUNT
    assert len(world.active()) == ISSUED
    hashes: dict[str, str] = {}
    check_secrets(cluster, namespace, world, hashes)
    # Nothing doubled: one UID per Secret name, never changed or deleted, and never more
    # successful creates than Secrets.
    uids = seen.uids()
    assert set(uids) == world.active()
    assert all(len(u) == 1 for u in uids.values()), {n: len(u) for n, u in uids.items()}
    assert seen.modified() == []
    created, conflicts = (_creates(operator, code) - before[code] for code in ("201", "409"))
    print(f"the operator created {created} Secrets (201) and met {conflicts} conflicts (409)")
    assert created <= ISSUED
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
