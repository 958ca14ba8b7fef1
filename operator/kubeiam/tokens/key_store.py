"""The signing keys Secret: its format, the operator's compare-and-swap rotation, the reads.

`kube-iam-signing-keys` in the operator's namespace holds each key's PKCS#8 PEM under its key
id and the ring's times in `ring.json` (per key: created, activates, retires). It is mutable:
the operator replaces it with the resourceVersion it read, so when two replicas decide at once
the API server lets one write and the other meets a 409, reads the winner's ring and decides
again, and never adds a second next key. The token server only reads it (by name).

A Secret of the format before rotation (immutable, `active-key-id` and one key) is adopted: its
key keeps signing under the same kid. An immutable Secret cannot be changed, so its keys move
into a mutable one of the same name through a handover Secret (`...-handover`), written first:
an operator that dies between deleting the old Secret and creating the new one finds them there.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubeiam.domain import key_rotation
from kubeiam.domain.conditions import parse_time
from kubeiam.kube import api, key_secret
from kubeiam.kube.key_secret import KeySecretError
from kubeiam.tokens import keys
from kubeiam.tokens.keys import PURPOSE, SIGNING_KEY_SECRET, SigningKeys

logger = logging.getLogger(__name__)

RING_ENTRY = "ring.json"
HANDOVER_SECRET = f"{SIGNING_KEY_SECRET}-handover"
# Writes lost to another replica in a row before giving up until the next pass.
ATTEMPTS = 8

Clock = Callable[[], datetime.datetime]


@dataclass(frozen=True)
class Stored:
    """What one read of a signing keys Secret found, and what a compare-and-swap needs."""

    keys: SigningKeys
    pems: Mapping[str, bytes] = field(repr=False)
    resource_version: str
    uid: str
    immutable: bool


def _times_json(ring: tuple[key_rotation.KeyTimes, ...]) -> bytes:
    def moment(value: datetime.datetime | None) -> str | None:
        return None if value is None else value.astimezone(datetime.UTC).isoformat()

    entries = [
        {
            "kid": key.kid,
            "created": moment(key.created),
            "activates": moment(key.activates),
            "retires": moment(key.retires),
        }
        for key in ring
    ]
    return json.dumps({"keys": entries}, separators=(",", ":")).encode()


def _times(name: str, raw: bytes) -> tuple[key_rotation.KeyTimes, ...]:
    try:
        entries = json.loads(raw)["keys"]
        return tuple(
            key_rotation.KeyTimes(
                kid=str(entry["kid"]),
                created=parse_time(entry["created"]),
                activates=parse_time(entry["activates"]),
                retires=None if entry.get("retires") is None else parse_time(entry["retires"]),
            )
            for entry in entries
        )
    except (ValueError, KeyError, TypeError):
        raise KeySecretError(
            f"Secret {name!r}: its {RING_ENTRY!r} entry is not a list of keys with times "
            "(kid, created, activates, retires)"
        ) from None


def parse(name: str, secret: Mapping[str, Any]) -> Stored:
    """A signing keys Secret as read (metadata, immutable, data); KeySecretError naming the
    Secret and the rule when it holds no usable ring."""
    metadata = secret.get("metadata") or {}
    data = dict(secret.get("data") or {})
    decoded = key_secret.decode(name, data)
    if RING_ENTRY in decoded:
        ring = _times(name, decoded.pop(RING_ENTRY))
        pems: dict[str, bytes] = decoded
    else:  # the format before rotation: adopted as it is
        legacy = key_secret.parse(name, data)
        created = metadata.get("creationTimestamp")
        ring = keys.adopted_times(legacy, parse_time(created) if created else keys.EPOCH)
        pems = dict(legacy.keys)
    return Stored(
        keys=keys.from_pems(ring, pems),
        pems={key.kid: pems[key.kid] for key in ring},
        resource_version=str(metadata.get("resourceVersion", "")),
        uid=str(metadata.get("uid", "")),
        immutable=bool(secret.get("immutable")),
    )


def manifest(
    namespace: str,
    name: str,
    ring: tuple[key_rotation.KeyTimes, ...],
    pems: Mapping[str, bytes],
    *,
    resource_version: str | None = None,
) -> dict[str, Any]:
    """The Secret holding `ring`: its keys and their times, mutable so it can be rotated."""
    raw = {RING_ENTRY: _times_json(ring), **{key.kid: pems[key.kid] for key in ring}}
    body = key_secret.manifest(namespace, name, raw, purpose=PURPOSE, immutable=False)
    if resource_version is not None:
        metadata = body["metadata"]
        assert isinstance(metadata, dict)
        metadata["resourceVersion"] = resource_version
    return body


async def read(namespace: str, name: str = SIGNING_KEY_SECRET) -> Stored | None:
    """The ring in Secret `name` (one GET), or None while there is none."""
    secret = await api.get_own_secret(namespace, name)
    return None if secret is None else parse(name, secret)


async def load(namespace: str) -> SigningKeys | None:
    """The token server's side: the signing keys (one GET), None until the operator made them."""
    stored = await read(namespace)
    return None if stored is None else stored.keys


# -- the operator's side ---------------------------------------------------------------------


async def _finish_handover(namespace: str) -> bool:
    """Create the signing keys Secret from a handover left by an adoption, then remove the
    handover; False if there is none."""
    staged = await read(namespace, HANDOVER_SECRET)
    if staged is None:
        return False
    body = manifest(namespace, SIGNING_KEY_SECRET, staged.keys.ring, staged.pems)
    with contextlib.suppress(api.AlreadyExists):  # another replica finished it already
        await api.create_secret(namespace, body)
    await api.delete_secret(namespace, HANDOVER_SECRET, staged.uid)
    return True


async def _hand_over(
    namespace: str,
    old: Stored,
    ring: tuple[key_rotation.KeyTimes, ...],
    pems: Mapping[str, bytes],
) -> None:
    """Move an immutable Secret's keys into a mutable one of the same name (see the module's
    docstring); the first replica to stage a handover decides its content."""
    with contextlib.suppress(api.AlreadyExists):
        await api.create_secret(namespace, manifest(namespace, HANDOVER_SECRET, ring, pems))
    # Only the Secret that was read: one another replica already replaced is left alone (409).
    await api.delete_secret(namespace, SIGNING_KEY_SECRET, old.uid)
    await _finish_handover(namespace)
    logger.info("Adopted the signing keys Secret of the format before rotation (keys kept).")


async def rotate(
    namespace: str,
    policy: key_rotation.Policy,
    *,
    now: Clock,
    new_kid: Callable[[], str] = lambda: secrets.token_hex(4),
    new_pem: Callable[[], bytes] = keys.new_private_key_pem,
) -> SigningKeys:
    """Read the ring, ask the rule (domain/key_rotation.py) for the ring there should be, and
    write it if it differs, only over the version read: on a 409 read and decide again."""
    for _ in range(ATTEMPTS):
        stored = await read(namespace)
        if stored is None and await _finish_handover(namespace):
            continue
        ring = () if stored is None else stored.keys.ring
        planned = key_rotation.plan(ring, now(), policy, new_kid)
        if stored is not None and planned is ring and not stored.immutable:
            return stored.keys
        known = {} if stored is None else stored.pems
        pems = {key.kid: known.get(key.kid) or new_pem() for key in planned}
        try:
            if stored is None:
                await api.create_secret(
                    namespace, manifest(namespace, SIGNING_KEY_SECRET, planned, pems)
                )
            elif stored.immutable:
                await _hand_over(namespace, stored, planned, pems)
                continue  # read back what the handover left, whoever staged it
            else:
                body = manifest(
                    namespace,
                    SIGNING_KEY_SECRET,
                    planned,
                    pems,
                    resource_version=stored.resource_version,
                )
                await api.replace_secret(namespace, SIGNING_KEY_SECRET, body)
        except (api.AlreadyExists, api.Conflict, api.Gone):
            continue
        except api.Refused as refusal:
            raise KeySecretError(
                f"cannot write the signing keys Secret {SIGNING_KEY_SECRET!r} in namespace "
                f"{namespace!r} (HTTP {refusal.status}); does the namespace exist "
                "(KUBEIAM_OPERATOR_NAMESPACE) and may the operator update it (deploy/rbac.yaml)?"
            ) from None
        _log_change(ring, planned)
        return keys.from_pems(planned, pems)
    raise KeySecretError(
        f"the signing keys Secret {SIGNING_KEY_SECRET!r} changed under {ATTEMPTS} writes in a "
        "row; trying again at the next pass"
    )


def _log_change(
    before: tuple[key_rotation.KeyTimes, ...], after: tuple[key_rotation.KeyTimes, ...]
) -> None:
    old = {key.kid for key in before}
    new = {key.kid for key in after}
    for key in after:
        if key.kid not in old:
            logger.info(
                "Published signing key %s; it signs from %s.", key.kid, key.activates.isoformat()
            )
    for kid in sorted(old - new):
        logger.info("Dropped signing key %s: every token it signed has expired.", kid)


async def clean_up_handover(namespace: str) -> None:
    """At start: remove a handover an operator left when it died after the new Secret was
    made. Not while the old immutable Secret is still there: another replica may be midway."""
    staged = await api.get_secret_metadata(namespace, HANDOVER_SECRET)
    if staged is None:
        return
    current = await read(namespace)
    if current is not None and not current.immutable:
        await api.delete_secret(namespace, HANDOVER_SECRET, str(staged.get("uid", "")))
