"""Two operator processes at once, as deploy/ runs two replicas: correctness never depends on
kopf peering.

Both modes run the same burst (creates, revocations, expiries) and kill one process mid-way:
with peering (deploy/'s way: the peering object, distinct priorities, the newest replica
active) the active one is killed and the paused one takes over once its heartbeat expires;
with --standalone both work at once and either may win any write. Either way the active limit
holds at every instant a watch sees, every Secret is created exactly once, and the counts
settle right.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from .credentials_support import (
    StateRecorder,
    account_manifest,
    credential_manifest,
    managed_secrets,
    many,
    read_secret,
    revoke,
    sha256,
    states,
    wait_state,
)
from .metrics_support import SecretEvents, scrape, wait_until_no_namespace_terminates
from .support import ClusterHandle, OperatorProcess, wait_for

# Short enough that the paused replica takes over well within a test; deploy/ uses 60.
PEERING_LIFETIME = 10
PAUSED = "Pausing operations in favour of"
RESUMED = "Resuming operations after the pause"
ISSUED_AFTER_WAITING = "kubeiam_credential_issuance_seconds_count"

# Limit 5, admitted oldest first (creation time, then name): exp-0..3 and key-00 first. key-00
# is revoked (key-01 takes its slot) and key-05 too while it waits; as exp-0..3 expire, key-02,
# key-03, key-04 and key-06 take their slots, and key-07..09 keep waiting.
EXPIRING = {f"exp-{i}": f"{20 + 4 * i}s" for i in range(4)}
KEYS = [f"key-{i:02d}" for i in range(10)]
REVOKED = ["key-00", "key-05"]
FINAL = {
    **dict.fromkeys(EXPIRING, "Expired"),
    **dict.fromkeys(REVOKED, "Revoked"),
    **dict.fromkeys(["key-01", "key-02", "key-03", "key-04", "key-06"], "Active"),
    **dict.fromkeys(["key-07", "key-08", "key-09"], "Pending"),
}
ACTIVE = sorted(name for name, state in FINAL.items() if state == "Active")


@pytest.fixture
def replicas(
    operators: Callable[..., OperatorProcess],  # stops the session's operator; skips in-cluster
) -> Callable[..., OperatorProcess]:
    """Operator processes with the arguments a test gives and a short peering lifetime."""

    def start(name: str, *args: str) -> OperatorProcess:
        return operators(name, *args, KUBEIAM_PEERING_LIFETIME=str(PEERING_LIFETIME))

    return start


def _log(process: OperatorProcess) -> str:
    assert process.log_path is not None
    return process.log_path.read_text(errors="replace")


def _start_pair(
    mode: str, start: Callable[..., OperatorProcess]
) -> tuple[OperatorProcess, OperatorProcess]:
    """Start two replicas; return (the one to kill mid-burst, the one that must finish)."""
    if mode == "standalone":
        return start("a", "--standalone"), start("b", "--standalone")
    # As deploy/ starts them: peering on (the kube-iam ClusterKopfPeering exists), each with its
    # start time in nanoseconds as priority, so the newer one is active and the older pauses.
    older = start("older", "--priority", str(time.time_ns()))
    newer = start("newer", "--priority", str(time.time_ns()))
    wait_for(lambda: PAUSED in _log(older), what="the older replica to pause for the newer")
    assert PAUSED not in _log(newer)
    assert scrape(older).value("kubeiam_peering_paused") == 1
    assert scrape(newer).value("kubeiam_peering_paused") == 0
    return newer, older


@pytest.mark.parametrize("mode", ["peering", "standalone"])
def test_two_replicas_keep_the_limit_write_each_secret_once_and_survive_a_kill(
    cluster: ClusterHandle,
    namespace: str,
    replicas: Callable[..., OperatorProcess],
    mode: str,
) -> None:
    # Replicas resume every object cluster-wide: earlier tests' must be gone first.
    wait_until_no_namespace_terminates(cluster)
    victim, survivor = _start_pair(mode, replicas)
    recorder = StateRecorder(cluster, namespace).start()
    secrets = SecretEvents(cluster, namespace).start()
    try:
        cluster.apply(account_manifest(), namespace)
        cluster.wait_condition("iamsa", "pipeline", namespace)
        cluster.apply(
            many(
                [
                    *(credential_manifest(n, expiresIn=e) for n, e in EXPIRING.items()),
                    *(credential_manifest(n, expiresIn="720h") for n in KEYS),
                ]
            ),
            namespace,
        )
        wait_state(cluster, namespace, "exp-0", "Active")
        if mode == "peering":
            # The paused replica has issued nothing; the active one is at work. (Both serve
            # admission, whose access reviews are creates too: only Secrets count here.)
            created = {"verb": "create", "resource": "secrets"}
            assert scrape(survivor).value("kubeiam_api_requests_total", **created) == 0
            assert scrape(victim).value("kubeiam_api_requests_total", **created) >= 1
        revoke(cluster, namespace, *REVOKED)
        victim.kill()

        def settled() -> dict[str, str | None] | None:
            # An ended credential's Secret is deleted after the slot it freed is filled.
            now = states(cluster, namespace)
            if now != FINAL or recorder.states != FINAL:
                return None
            left = sorted(s["metadata"]["name"] for s in managed_secrets(cluster, namespace))
            return now if left == ACTIVE else None

        try:
            wait_for(settled, timeout=120, what="the burst to settle")
        except AssertionError as error:
            raise AssertionError(f"{error}\n{survivor.log_tail()}") from None
    finally:
        recorder.stop()
        secrets.stop()

    assert survivor.running, survivor.log_tail()
    # The limit held at every instant the watch saw.
    assert recorder.max_active == {"pipeline": 5}
    # The counts settle right: the ledger holds exactly the Active credentials.
    account = cluster.get("iamsa", "pipeline", namespace)
    assert account is not None
    assert account["status"]["activeCredentialCount"] == len(ACTIVE) == 5
    assert sorted(e["name"] for e in account["status"]["activeCredentials"]) == ACTIVE
    # Each Active credential has exactly one Secret (the ended ones' were deleted, as
    # secretDeletionPolicy Delete says: see settled), the one its status' hash names.
    for name in ACTIVE:
        obj = cluster.get("iamcred", name, namespace)
        assert obj is not None
        mounted = read_secret(cluster, namespace, name)
        assert sha256(mounted.client_secret()) == obj["status"]["secretHash"]
    # No Secret was written twice: one creation per name, never changed afterwards.
    added = secrets.count("ADDED")
    assert set(ACTIVE) <= set(added)
    assert set(added) <= set(FINAL) - {"key-05", "key-07", "key-08", "key-09"}
    assert all(count == 1 for count in added.values()), added
    assert secrets.count("MODIFIED") == {}

    # The survivor finished the work: it issued the four admitted as the short ones expired,
    # and recorded the four expiries.
    page = scrape(survivor)
    assert page.value(ISSUED_AFTER_WAITING, waited="true") >= 4
    assert page.value("kubeiam_credential_expiry_lateness_seconds_count") == 4
    if mode == "peering":
        assert RESUMED in _log(survivor)
        assert page.value("kubeiam_peering_paused") == 0
