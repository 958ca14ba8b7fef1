"""Helpers for credential tests: manifests, reading a Secret as a pod would, and leak tracking.

Every client secret a test reads is remembered in ISSUED, so that the leak scan at the end of
the credential tests can look for each of them everywhere the operator writes. Nothing here
puts a secret into an assertion message: failures show hashes, never secrets.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from kubeiam.domain.secret_format import parse

from .support import ClusterHandle, KubectlWatch, wait_for

ISSUED: set[str] = set()
# Every access token the token server's tests obtained, looked for by the same leak scan.
ISSUED_TOKENS: set[str] = set()
# Every DPoP proof the tests sent, looked for by the same leak scan.
SENT_PROOFS: set[str] = set()
# Every subject token a token-exchange test presented (an external issuer's JWT, a projected
# ServiceAccount token), and each one's signature alone: looked for by the same scan.
SUBJECT_TOKENS: set[str] = set()
FORMAT = re.compile(r"kiam_[a-z2-7]{20}_[0-9A-Za-z]{49}")
# The label kube-iam puts on every Secret it generates.
MANAGED_BY = "app.kubernetes.io/managed-by=kube-iam"


def register_subject_token(token: str) -> None:
    """Remember a subject token (and its signature, the part that must never leak on its own)."""
    SUBJECT_TOKENS.add(token)
    signature = token.rpartition(".")[2]
    if len(signature) >= 32:
        SUBJECT_TOKENS.add(signature)


def account_manifest(name: str = "pipeline", *, disabled: bool = False, roles: str = "") -> str:
    return f"""
apiVersion: iam.kubeiam.io/v1alpha1
kind: ServiceAccount
metadata:
  name: {name}
spec:
  displayName: {name}
  scope: organization
  roles: [{roles or "compute.deployer, storage.reader"}]
  disabled: {str(disabled).lower()}
"""


def credential_manifest(name: str, account: str = "pipeline", **spec: Any) -> str:
    body = {
        "apiVersion": "iam.kubeiam.io/v1alpha1",
        "kind": "ServiceAccountCredential",
        "metadata": {"name": name},
        "spec": {"serviceAccountName": account, "displayName": name, **spec},
    }
    return json.dumps(body)


def many(manifests: list[str]) -> str:
    """Several manifests as one YAML stream, for one `kubectl apply`."""
    return "\n---\n".join(manifests)


def revoke(cluster: ClusterHandle, namespace: str, *names: str) -> None:
    """What a user does to end a credential at once."""
    for name in names:
        cluster.kubectl(
            "patch",
            "iamcred",
            name,
            "-n",
            namespace,
            "--type=merge",
            "-p",
            '{"spec":{"revoked":true}}',
        )


def state_in(obj: dict[str, Any]) -> str | None:
    """A credential's status.state, None before the operator wrote one."""
    state: str | None = (obj.get("status") or {}).get("state")
    return state


def state_of(cluster: ClusterHandle, namespace: str, name: str) -> str | None:
    obj = cluster.get("iamcred", name, namespace)
    return None if obj is None else state_in(obj)


def wait_state(
    cluster: ClusterHandle, namespace: str, name: str, state: str, timeout: float = 60
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = cluster.get("iamcred", name, namespace)
        if obj and state_in(obj) == state:
            return obj
        return None

    return wait_for(probe, timeout=timeout, what=f"{namespace}/{name} to be {state}")


def ready(obj: dict[str, Any]) -> dict[str, Any]:
    """The object's Ready condition; empty before the operator wrote one (a probe polling a
    just-created object must see "not yet", not a StopIteration)."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    found: dict[str, Any] = next((c for c in conditions if c["type"] == "Ready"), {})
    return found


def states(cluster: ClusterHandle, namespace: str) -> dict[str, str | None]:
    listed = json.loads(cluster.kubectl("get", "iamcred", "-n", namespace, "-o", "json").stdout)
    return {item["metadata"]["name"]: state_in(item) for item in listed["items"]}


def managed_secrets(cluster: ClusterHandle, namespace: str) -> list[dict[str, Any]]:
    listed = json.loads(
        cluster.kubectl(
            "get",
            "secrets",
            "-n",
            namespace,
            "-l",
            MANAGED_BY,
            "-o",
            "json",
        ).stdout
    )
    items: list[dict[str, Any]] = listed["items"]
    return items


def secret_versions(
    cluster: ClusterHandle, namespace: str, *selector: str, check: bool = True
) -> list[tuple[str, str, str]]:
    """(name, UID, resourceVersion) of a namespace's Secrets, from metadata columns only (no
    Secret's data reaches the test); empty when kubectl failed and `check` is off."""
    result = cluster.kubectl(
        "get",
        "secrets",
        "-n",
        namespace,
        *selector,
        "--no-headers",
        "-o",
        "custom-columns=N:.metadata.name,U:.metadata.uid,R:.metadata.resourceVersion",
        check=check,
    )
    rows = [line.split() for line in result.stdout.splitlines()] if not result.returncode else []
    return [(row[0], row[1], row[2]) for row in rows if len(row) == 3]


@dataclass
class MountedSecret:
    """A generated Secret's data as a pod that mounts it sees it (decoded)."""

    metadata: dict[str, Any]
    data: dict[str, str]
    immutable: bool
    type: str

    def client_secret(self, key: str = "client-secret") -> str:
        secret = self.data[key]
        ISSUED.add(secret)
        return secret


def read_secret(cluster: ClusterHandle, namespace: str, name: str) -> MountedSecret:
    raw = json.loads(cluster.kubectl("get", "secret", name, "-n", namespace, "-o", "json").stdout)
    data = {key: base64.b64decode(value).decode() for key, value in raw["data"].items()}
    for value in data.values():
        if FORMAT.fullmatch(value):
            ISSUED.add(value)
    return MountedSecret(raw["metadata"], data, bool(raw.get("immutable")), raw.get("type", ""))


def sha256(secret: str) -> str:
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()


def well_formed(secret: str) -> bool:
    parsed = parse(secret)
    return bool(FORMAT.fullmatch(secret)) and parsed is not None and parsed.checksum_ok


class StateRecorder(KubectlWatch):
    """Watches every credential of a namespace and records the Active count after each event."""

    def __init__(self, cluster: ClusterHandle, namespace: str) -> None:
        super().__init__(cluster, namespace)
        self.states: dict[str, str | None] = {}
        self.max_active: dict[str, int] = {}
        self.events = 0
        self._accounts: dict[str, str] = {}
        self._decoder = json.JSONDecoder()
        self._buffer = ""

    def _watch_args(self) -> tuple[str, ...]:
        return ("iamcred", "--output-watch-events", "-o", "json")

    def _line(self, line: str) -> None:
        self._buffer += line
        try:
            event, end = self._decoder.raw_decode(self._buffer.lstrip())
        except ValueError:
            return
        self._buffer = self._buffer.lstrip()[end:]
        self._observe(event)

    def _observe(self, event: dict[str, Any]) -> None:
        obj = event["object"]
        name = obj["metadata"]["name"]
        self._accounts[name] = obj["spec"]["serviceAccountName"]
        if event["type"] == "DELETED":
            self.states.pop(name, None)
        else:
            self.states[name] = state_in(obj)
        self.events += 1
        counts: dict[str, int] = {}
        for credential, state in self.states.items():
            if state == "Active":
                account = self._accounts[credential]
                counts[account] = counts.get(account, 0) + 1
        for account, count in counts.items():
            self.max_active[account] = max(self.max_active.get(account, 0), count)
