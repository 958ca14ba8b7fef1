"""kube-iam's own keys, in one Secret of the operator's namespace, created exactly once.

Two such Secrets exist: the proof key (a MAC key only the operator holds) and the token
server's signing key (a P-256 private key the operator creates and the token server reads).

A replica that finds no Secret generates a candidate and tries to create it; the API server
lets one create win and the others meet a 409 and read the winner's keys, so all replicas hold
the same keys without any coordination. The Secret is immutable: rotating means adding a key
under a new id in a new Secret (the proof and token formats carry the key id for that). Keys
are never logged, and an error names the Secret, never its content.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from kubeiam.api.credential import MANAGED_BY_LABEL
from kubeiam.kube import api

KEY_SECRET_TYPE = "iam.kubeiam.io/operator-keys"
ACTIVE = "active-key-id"
KEY_BYTES = 32


class KeySecretError(Exception):
    """The key Secret cannot be created or read, or holds no usable key."""


@dataclass(frozen=True)
class KeyRing:
    """The keys of one key Secret by id, and the id new proofs or signatures use."""

    active: str
    keys: dict[str, bytes]

    def __repr__(self) -> str:  # never show key material, even in a traceback
        return f"KeyRing(active={self.active!r}, ids={sorted(self.keys)!r})"


def _candidate(new_key: Callable[[], bytes]) -> KeyRing:
    key_id = secrets.token_hex(4)
    return KeyRing(active=key_id, keys={key_id: new_key()})


def manifest(
    namespace: str, name: str, raw: dict[str, bytes], *, purpose: str, immutable: bool = True
) -> dict[str, object]:
    """A key Secret of kube-iam's holding `raw` (entry name to bytes). The proof key's is
    immutable; the signing keys' is not, so that the operator can rotate them in place."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": KEY_SECRET_TYPE,
        "immutable": immutable,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {MANAGED_BY_LABEL: "kube-iam"},
            "annotations": {"iam.kubeiam.io/purpose": purpose},
        },
        "data": {key: base64.b64encode(value).decode() for key, value in raw.items()},
    }


def _manifest(namespace: str, name: str, ring: KeyRing, purpose: str) -> dict[str, object]:
    return manifest(namespace, name, {ACTIVE: ring.active.encode(), **ring.keys}, purpose=purpose)


def decode(name: str, data: dict[str, str]) -> dict[str, bytes]:
    """A key Secret's entries, base64-decoded; KeySecretError naming the Secret if one is not."""
    try:
        return {entry: base64.b64decode(value, validate=True) for entry, value in data.items()}
    except ValueError:
        raise KeySecretError(f"Secret {name!r} holds an entry that is not base64") from None


def parse(name: str, data: dict[str, str]) -> KeyRing:
    """The keys of a key Secret holding `active-key-id` and the keys (the proof key's format,
    and the signing keys' before rotation)."""
    decoded = decode(name, data)
    try:
        active = decoded.pop(ACTIVE).decode()
    except (KeyError, ValueError) as error:
        raise KeySecretError(f"Secret {name!r} holds no {ACTIVE!r} entry or bad base64") from error
    if active not in decoded or len(decoded[active]) < KEY_BYTES:
        raise KeySecretError(f"Secret {name!r}: its active key is missing or too short")
    return KeyRing(active=active, keys=decoded)


async def load_or_create(
    namespace: str,
    name: str,
    *,
    purpose: str,
    random_bytes: Callable[[int], bytes] = os.urandom,
    new_key: Callable[[], bytes] | None = None,
) -> KeyRing:
    """The keys in Secret `name` of `namespace`, created with a fresh key if there is none.

    A fresh key is `KEY_BYTES` of `random_bytes` (a MAC key), or what `new_key` makes (a
    signing key's PEM). Read first: a start over an existing key costs one read, no write (a
    restart writes nothing, and a paused replica creates nothing)."""
    data = await api.get_secret_data(namespace, name)
    if data is not None:
        return parse(name, data)
    candidate = _candidate(new_key or (lambda: random_bytes(KEY_BYTES)))
    try:
        await api.create_secret(namespace, _manifest(namespace, name, candidate, purpose))
        return candidate
    except api.AlreadyExists:
        pass
    except api.Refused as refusal:
        raise KeySecretError(
            f"cannot create the key Secret {name!r} in namespace {namespace!r} (HTTP "
            f"{refusal.status}); does the namespace exist (KUBEIAM_OPERATOR_NAMESPACE)?"
        ) from None
    data = await api.get_secret_data(namespace, name)
    if data is None:
        raise KeySecretError(f"Secret {name!r} in {namespace!r} vanished while being read")
    return parse(name, data)


async def read(namespace: str, name: str) -> KeyRing | None:
    """The keys in Secret `name` of `namespace` (one GET), or None while it does not exist:
    for a process that uses keys the operator creates, and never creates them itself."""
    data = await api.get_secret_data(namespace, name)
    return None if data is None else parse(name, data)
