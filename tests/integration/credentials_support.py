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
import threading
from dataclasses import dataclass, field
from typing import Any

from kubeiam.domain.secret_format import parse

from .support import ClusterHandle, wait_for

ISSUED: set[str] = set()
FORMAT = re.compile(r"kiam_[a-z2-7]{20}_[0-9A-Za-z]{49}")


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


def state_of(cluster: ClusterHandle, namespace: str, name: str) -> str | None:
    obj = cluster.get("iamcred", name, namespace)
    return None if obj is None else (obj.get("status") or {}).get("state")


def wait_state(
    cluster: ClusterHandle, namespace: str, name: str, state: str, timeout: float = 60
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = cluster.get("iamcred", name, namespace)
        if obj and (obj.get("status") or {}).get("state") == state:
            return obj
        return None

    return wait_for(probe, timeout=timeout, what=f"{namespace}/{name} to be {state}")


def ready(obj: dict[str, Any]) -> dict[str, Any]:
    conditions = (obj.get("status") or {}).get("conditions") or []
    found: dict[str, Any] = next(c for c in conditions if c["type"] == "Ready")
    return found


def states(cluster: ClusterHandle, namespace: str) -> dict[str, str | None]:
    listed = json.loads(cluster.kubectl("get", "iamcred", "-n", namespace, "-o", "json").stdout)
    return {
        item["metadata"]["name"]: (item.get("status") or {}).get("state")
        for item in listed["items"]
    }


def managed_secrets(cluster: ClusterHandle, namespace: str) -> list[dict[str, Any]]:
    listed = json.loads(
        cluster.kubectl(
            "get",
            "secrets",
            "-n",
            namespace,
            "-l",
            "app.kubernetes.io/managed-by=kube-iam",
            "-o",
            "json",
        ).stdout
    )
    items: list[dict[str, Any]] = listed["items"]
    return items


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


@dataclass
class StateRecorder:
    """Watches every credential of a namespace and records the Active count after each event."""

    cluster: ClusterHandle
    namespace: str
    states: dict[str, str | None] = field(default_factory=dict)
    max_active: dict[str, int] = field(default_factory=dict)
    events: int = 0
    _accounts: dict[str, str] = field(default_factory=dict)
    _thread: threading.Thread | None = None
    _process: Any = None

    def start(self) -> StateRecorder:
        import subprocess

        kubectl = self.cluster.kubectl
        self._process = subprocess.Popen(
            [
                str(kubectl.binary),
                f"--kubeconfig={kubectl.kubeconfig}",
                "get",
                "iamcred",
                "-n",
                self.namespace,
                "--watch",
                "--output-watch-events",
                "-o",
                "json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        decoder = json.JSONDecoder()
        buffer = ""
        assert self._process is not None
        assert self._process.stdout is not None
        for line in self._process.stdout:
            buffer += line
            try:
                event, end = decoder.raw_decode(buffer.lstrip())
            except ValueError:
                continue
            buffer = buffer.lstrip()[end:]
            self._observe(event)

    def _observe(self, event: dict[str, Any]) -> None:
        obj = event["object"]
        name = obj["metadata"]["name"]
        self._accounts[name] = obj["spec"]["serviceAccountName"]
        if event["type"] == "DELETED":
            self.states.pop(name, None)
        else:
            self.states[name] = (obj.get("status") or {}).get("state")
        self.events += 1
        counts: dict[str, int] = {}
        for credential, state in self.states.items():
            if state == "Active":
                account = self._accounts[credential]
                counts[account] = counts.get(account, 0) + 1
        for account, count in counts.items():
            self.max_active[account] = max(self.max_active.get(account, 0), count)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait()
