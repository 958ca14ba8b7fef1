"""Write a kubeconfig with embedded credentials, so it can be copied anywhere and still work."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from kubeiam.devcluster.certs import KeyPair

CONTEXT = "kube-iam-local"


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, ca_cert: Path, client: KeyPair, user: str) -> Path:
    """A kubeconfig that authenticates with a client certificate."""
    cluster = {"server": server, "certificate-authority-data": _b64(ca_cert)}
    credentials = {
        "client-certificate-data": _b64(client.cert),
        "client-key-data": _b64(client.key),
    }
    return _write(path, cluster, user, credentials)


def write_token_kubeconfig(path: Path, cluster: Mapping[str, Any], user: str, token: str) -> Path:
    """A kubeconfig that authenticates with a bearer token (a ServiceAccount's, say).

    `cluster` is a kubeconfig's cluster entry (server, CA data), taken from another kubeconfig.
    The file is readable by its owner only: the token is a credential.
    """
    return _write(path, dict(cluster), user, {"token": token})


def _write(path: Path, cluster: dict[str, Any], user: str, credentials: dict[str, str]) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT, "cluster": cluster}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": user}}],
        "current-context": CONTEXT,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created owner-only before anything is written into it, not tightened afterwards.
    path.unlink(missing_ok=True)
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
