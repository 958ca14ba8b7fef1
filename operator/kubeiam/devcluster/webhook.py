"""The admission webhook on the local control plane: a serving certificate, a port, and
deploy/webhook.yaml's configurations pointed at loopback.

deploy/ points the API server at the Service in front of the operator's pods; here no pod runs,
so the same webhook configurations are applied with each `clientConfig` rewritten to
`https://127.0.0.1:<port>/<path>`, where `kube-iam run` listens (SO_REUSEPORT lets several local
replicas share the port, as replicas share a Service). The certificate is signed by the local
CA, which becomes the caBundle.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kubeiam.devcluster.binaries import REPO_ROOT
from kubeiam.devcluster.certs import KeyPair, issue_certificate
from kubeiam.devcluster.kubectl import Kubectl

WEBHOOK_MANIFEST = REPO_ROOT / "deploy" / "webhook.yaml"
CONFIGURATION_KINDS = ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration")
ADDRESS = "127.0.0.1"


@dataclass(frozen=True)
class LocalWebhook:
    """Where local operator processes serve the webhook, and with which certificate."""

    port: int
    cert_dir: Path
    ca_cert: Path

    def env(self) -> dict[str, str]:
        """The KUBEIAM_* settings that make `kube-iam run` serve it."""
        return {
            "KUBEIAM_WEBHOOK_ADDRESS": ADDRESS,
            "KUBEIAM_WEBHOOK_PORT": str(self.port),
            "KUBEIAM_WEBHOOK_CERT_DIR": str(self.cert_dir),
        }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((ADDRESS, 0))
        port: int = sock.getsockname()[1]
        return port


def _record(state_dir: Path) -> Path:
    return state_dir / "webhook.json"


def prepare(state_dir: Path, ca: KeyPair) -> LocalWebhook:
    """Issue the serving certificate and choose the port; record both, with an env file that
    `make run` sources."""
    cert_dir = state_dir / "pki" / "webhook"
    cert_dir.mkdir(parents=True, exist_ok=True)
    issue_certificate(
        ca,
        KeyPair(cert_dir / "tls.crt", cert_dir / "tls.key"),
        "kube-iam-webhook",
        server_names=("localhost",),
        server_ips=(ADDRESS,),
    )
    webhook = LocalWebhook(port=_free_port(), cert_dir=cert_dir, ca_cert=ca.cert)
    _record(state_dir).write_text(
        json.dumps({"port": webhook.port, "certDir": str(cert_dir), "caCert": str(ca.cert)}) + "\n"
    )
    exports = "".join(f"export {name}={value}\n" for name, value in webhook.env().items())
    (state_dir / "webhook.env").write_text(exports)
    return webhook


def load(state_dir: Path) -> LocalWebhook | None:
    """The webhook `prepare` recorded for the cluster in `state_dir`, if any."""
    try:
        raw = json.loads(_record(state_dir).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return LocalWebhook(
        port=int(raw["port"]), cert_dir=Path(raw["certDir"]), ca_cert=Path(raw["caCert"])
    )


def configurations(webhook: LocalWebhook) -> list[dict[str, Any]]:
    """deploy/webhook.yaml's configurations, each webhook sent to loopback instead."""
    ca_bundle = base64.b64encode(webhook.ca_cert.read_bytes()).decode("ascii")
    return configurations_with(ca_bundle, lambda path: f"https://{ADDRESS}:{webhook.port}{path}")


def configurations_with(ca_bundle: str, url: Callable[[str], str] | None) -> list[dict[str, Any]]:
    documents = [doc for doc in yaml.safe_load_all(WEBHOOK_MANIFEST.read_text()) if doc]
    result = []
    for doc in documents:
        if doc.get("kind") not in CONFIGURATION_KINDS:
            continue
        for hook in doc["webhooks"]:
            if url is not None:
                path = hook["clientConfig"]["service"]["path"]
                hook["clientConfig"] = {"url": url(path)}
            hook["clientConfig"]["caBundle"] = ca_bundle
        result.append(doc)
    return result


def register(kubectl: Kubectl, webhook: LocalWebhook) -> None:
    """Make the API server call the local webhook (replacing deploy/'s Service address)."""
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(configurations(webhook)))


def unregister(kubectl: Kubectl) -> None:
    """Remove the webhook configurations: nothing is checked until `register` runs again."""
    for kind in CONFIGURATION_KINDS:
        kubectl("delete", kind.lower(), "kube-iam", "--ignore-not-found")
