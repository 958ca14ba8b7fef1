"""What the fault suites share: a burst applied in the background, and the settled world they
check after every fault (states, ledgers and Secrets, by name, never a Secret's data)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any

from .credentials_support import (
    StateRecorder,
    managed_secrets,
    many,
    read_secret,
    sha256,
    state_in,
)
from .metrics_support import SecretEvents
from .support import ClusterHandle, OperatorProcess, kubectl_in_background, wait_for

LIMIT = 5  # the organisation's default, which the tests' settings keep


class Burst:
    """One `kubectl apply` of many manifests, running while the test kills or restarts things.

    The API server refuses it while it restarts, so `resume` and `finish` apply the same stream
    again: apply is idempotent, and the objects that made it are left as they are.
    """

    def __init__(self, cluster: ClusterHandle, namespace: str, manifests: list[str]) -> None:
        self.cluster, self.namespace, self.stream = cluster, namespace, many(manifests)
        self._process = self._apply()

    def _apply(self) -> subprocess.Popen[str]:
        return kubectl_in_background(
            self.cluster, "apply", "-n", self.namespace, "-f", "-", feed=self.stream
        )

    def resume(self) -> None:
        """After a fault: if the apply has failed, apply the stream again in the background."""
        if self._process.poll() not in (None, 0):
            self._process = self._apply()

    def finish(self) -> None:
        """Wait for the apply, and apply again until the API server accepts the whole stream."""
        self._process.wait(timeout=120)
        if self._process.returncode == 0:
            return

        def accepted() -> str | None:
            result = self.cluster.kubectl(
                "apply", "-n", self.namespace, "-f", "-", input=self.stream, check=False
            )
            return None if result.returncode else "accepted"

        wait_for(accepted, what="the burst to be accepted", interval=1)


@dataclass(frozen=True)
class World:
    """A namespace's credentials, accounts and kube-iam Secrets, as one listing saw them."""

    credentials: dict[str, dict[str, Any]]
    accounts: dict[str, dict[str, Any]]
    secrets: set[str]

    @classmethod
    def read(cls, cluster: ClusterHandle, namespace: str) -> World:
        def listing(*args: str) -> list[dict[str, Any]]:
            out = cluster.kubectl("get", *args, "-n", namespace, "-o", "json").stdout
            items: list[dict[str, Any]] = json.loads(out)["items"]
            return items

        return cls(
            credentials={c["metadata"]["name"]: c for c in listing("iamcred")},
            accounts={a["metadata"]["name"]: a for a in listing("iamsa")},
            secrets={s["metadata"]["name"] for s in managed_secrets(cluster, namespace)},
        )

    def state(self, name: str) -> str | None:
        return state_in(self.credentials[name])

    def states(self) -> dict[str, str | None]:
        return {name: state_in(body) for name, body in self.credentials.items()}

    def of(self, account: str) -> list[str]:
        return sorted(
            name
            for name, c in self.credentials.items()
            if c["spec"]["serviceAccountName"] == account
        )

    def active(self, account: str | None = None) -> set[str]:
        names = self.of(account) if account else self.credentials
        return {name for name in names if self.state(name) == "Active"}

    def problems(self, limit: int = LIMIT) -> list[str]:
        """Why this is not the settled world: each account holds min(limit, live) Active
        credentials, the rest of its live ones wait, its ledger names exactly the Active ones,
        and the kube-iam Secrets are exactly the Active credentials' (ended ones are deleted,
        the default policy). Empty when settled."""
        found: list[str] = []
        for account, body in sorted(self.accounts.items()):
            live = [n for n in self.of(account) if not self.credentials[n]["spec"].get("revoked")]
            ended = sorted(set(self.of(account)) - set(live))
            active = self.active(account)
            wrong = {n: self.state(n) for n in live if self.state(n) not in ("Active", "Pending")}
            wrong |= {n: self.state(n) for n in ended if self.state(n) != "Revoked"}
            if wrong:
                found.append(f"{account}: credentials in the wrong state {wrong}")
            if len(active) != min(limit, len(live)):
                found.append(f"{account}: {len(active)} Active of {len(live)} live")
            status = body.get("status") or {}
            ledger = sorted(e["name"] for e in status.get("activeCredentials") or [])
            if ledger != sorted(active) or status.get("activeCredentialCount") != len(active):
                found.append(
                    f"{account}: ledger {ledger} (count {status.get('activeCredentialCount')}) "
                    f"but Active {sorted(active)}"
                )
        if self.secrets != self.active():
            found.append(
                f"Secrets without an Active credential {sorted(self.secrets - self.active())}, "
                f"Active credentials without a Secret {sorted(self.active() - self.secrets)}"
            )
        return found


def settle(
    cluster: ClusterHandle,
    namespace: str,
    recorder: StateRecorder,
    secret_events: SecretEvents,
    operator: OperatorProcess,
    *,
    timeout: float,
    what: str,
) -> World:
    """Wait until the world is settled (see World.problems) and both watches have seen it: the
    credential watch every state, the Secret watch exactly the Secrets a listing shows, so the
    checks on what the watches saw miss no event. A watch that stopped fails at once: the
    checks on it would pass for want of events."""

    def settled() -> World | None:
        assert recorder.running, "the credential watch (kubectl get --watch) stopped"
        assert secret_events.running, "the Secret watch (kubectl get --watch) stopped"
        world = World.read(cluster, namespace)
        caught_up = recorder.states == world.states() and secret_events.live() == world.secrets
        return world if caught_up and not world.problems() else None

    try:
        return wait_for(settled, timeout=timeout, what=what)
    except AssertionError as error:
        problems = World.read(cluster, namespace).problems()
        raise AssertionError(f"{error}: {problems}\n{operator.log_tail()}") from None


def check_secrets(
    cluster: ClusterHandle, namespace: str, world: World, hashes: dict[str, str]
) -> None:
    """Each Active credential's Secret holds the secret its status hashes, and a hash once seen
    never changes. Reads each Secret once (as a pod mounting it would), which also records the
    secret for the leak scan; a failure shows hashes only."""
    for name in sorted(world.active()):
        recorded = world.credentials[name]["status"].get("secretHash")
        if name in hashes:
            assert recorded == hashes[name], f"{name}: status hash changed"
            continue
        secret = read_secret(cluster, namespace, name).client_secret()
        assert sha256(secret) == recorded, f"{name}: the Secret does not match status.secretHash"
        hashes[name] = recorded


def keep_for_leak_scan(cluster: ClusterHandle, namespace: str) -> None:
    """Save the namespace's events and kube-iam objects (statuses and annotations) under the
    log directory: the namespace is deleted after the test, long before the leak scan looks."""
    kept = cluster.log_dir / "namespaces"
    kept.mkdir(parents=True, exist_ok=True)
    for what in ("events", "iam"):
        listed = cluster.kubectl("get", what, "-n", namespace, "-o", "json").stdout
        (kept / f"{namespace}.{what}.json").write_text(listed)
