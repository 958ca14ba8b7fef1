"""Whether a Secret is the one kube-iam wrote: a MAC only the operator can make, and the verdicts.

An owner reference or a hash annotation proves nothing: anyone who can read a credential knows
its UID, and anyone who may create Secrets can write both. The operator signs what it writes
instead: an HMAC-SHA256, with a key only it holds, over a versioned, length-prefixed encoding of
(credential UID, Secret name, secret hash), kept on the Secret as `v1.<key id>.<hex>`. It is
part of the create, so issuance costs no extra write. Nothing here does I/O.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

PROOF_VERSION = "v1"
_DOMAIN = b"kube-iam/secret-proof/v1"
# A Secret of the credential's name that is being deleted, or owned by a deleted credential of
# the same name, is waited for (the garbage collector removes it in seconds) until this long
# after the credential was created; then it is someone's plant, and the credential fails.
LEFTOVER_GRACE = datetime.timedelta(seconds=30)


@dataclass(frozen=True)
class SigningKey:
    """One key of the operator's key Secret; `key_id` names it on each proof, for rotation."""

    key_id: str
    key: bytes


def _encode(credential_uid: str, secret_name: str, secret_hash: str) -> bytes:
    """Each field length-prefixed, after a version tag: no two triples encode alike."""
    parts = [_DOMAIN]
    for value in (credential_uid, secret_name, secret_hash):
        raw = value.encode()
        parts.append(len(raw).to_bytes(4, "big") + raw)
    return b"".join(parts)


def _mac(key: bytes, credential_uid: str, secret_name: str, secret_hash: str) -> str:
    message = _encode(credential_uid, secret_name, secret_hash)
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def sign(key: SigningKey, *, credential_uid: str, secret_name: str, secret_hash: str) -> str:
    """The proof annotation's value for a Secret kube-iam is about to create."""
    mac = _mac(key.key, credential_uid, secret_name, secret_hash)
    return f"{PROOF_VERSION}.{key.key_id}.{mac}"


def verify(
    keys: Mapping[str, bytes],
    proof: object,
    *,
    credential_uid: str,
    secret_name: str,
    secret_hash: str,
) -> bool:
    """True only if `proof` is a MAC one of `keys` made over exactly these three values."""
    if not isinstance(proof, str):
        return False
    version, _, rest = proof.partition(".")
    key_id, _, mac = rest.partition(".")
    key = keys.get(key_id)
    if version != PROOF_VERSION or key is None or not mac:
        return False
    expected = _mac(key, credential_uid, secret_name, secret_hash)
    return hmac.compare_digest(expected.encode(), mac.encode())


@dataclass(frozen=True)
class Expected:
    """What kube-iam's own Secret for one credential looks like."""

    credential: str
    credential_uid: str
    secret_name: str
    secret_type: str
    managed_by: Mapping[str, str]
    hash_annotation: str
    proof_annotation: str


@dataclass(frozen=True)
class Ours:
    """kube-iam wrote it: just now, or in an earlier attempt that died before recording it."""

    secret_hash: str
    secret_uid: str


@dataclass(frozen=True)
class Leftover:
    """Being deleted, or owned by a deleted credential of that name: wait for it to go."""

    why: str


@dataclass(frozen=True)
class Foreign:
    """Someone else's Secret: never adopted, never touched."""

    why: str


def judge_existing(
    secret: Mapping[str, Any],
    expected: Expected,
    keys: Mapping[str, bytes],
) -> Ours | Leftover | Foreign:
    """A Secret of the credential's name that a create met (409): is it the one kube-iam wrote?

    `secret` is what a full read returns without its data: metadata, `immutable`, `type`.
    """
    metadata = secret.get("metadata") or {}
    owners = metadata.get("ownerReferences") or []
    annotations = metadata.get("annotations") or {}
    labels = metadata.get("labels") or {}
    if metadata.get("deletionTimestamp"):
        return Leftover("it is being deleted")
    if any(
        ref.get("kind") == "ServiceAccountCredential"
        and ref.get("name") == expected.credential
        and ref.get("uid") != expected.credential_uid
        for ref in owners
    ):
        return Leftover("it belongs to a deleted credential of the same name")
    digest = str(annotations.get(expected.hash_annotation, ""))
    proved = verify(
        keys,
        annotations.get(expected.proof_annotation),
        credential_uid=expected.credential_uid,
        secret_name=expected.secret_name,
        secret_hash=digest,
    )
    shaped = (
        secret.get("immutable") is True
        and secret.get("type") == expected.secret_type
        and all(labels.get(k) == v for k, v in expected.managed_by.items())
    )
    if proved and shaped and digest.startswith("sha256:"):
        return Ours(digest, str(metadata.get("uid", "")))
    return Foreign(_describe(owners))


def _describe(owners: list[Mapping[str, Any]]) -> str:
    """Who the Secret claims to belong to; never its annotations (an attacker wrote them)."""
    named = [f"{ref.get('kind')} {ref.get('name')!r}" for ref in owners]
    claim = f"claims {', '.join(named)} as owner" if named else "has no owner"
    return f"it {claim} but kube-iam cannot prove it wrote it"


def leftover_given_up(created_at: datetime.datetime, now: datetime.datetime) -> bool:
    """Stop waiting for a leftover Secret LEFTOVER_GRACE after the credential was created."""
    return now >= created_at + LEFTOVER_GRACE


IssuedState = Literal["present", "absent", "replaced"]


def judge_issued(
    metadata: Mapping[str, Any] | None,
    *,
    credential_uid: str,
    secret_name: str,
    secret_uid: str | None,
    secret_hash: str,
    keys: Mapping[str, bytes],
    hash_annotation: str,
    proof_annotation: str,
) -> IssuedState:
    """The audit's verdict on an issued credential's Secret, from its metadata alone.

    The Secret's UID recorded at issuance decides: the API server assigns UIDs, so a Secret
    deleted and created again under the name, however alike, has another. A credential issued
    before UIDs were recorded has only the proof: one that does not verify is a replacement;
    a Secret with no proof at all (written before proofs existed) is judged by its owner
    reference, the most that can be known of it.
    """
    if metadata is None:
        return "absent"
    if secret_uid:
        return "present" if metadata.get("uid") == secret_uid else "replaced"
    annotations = metadata.get("annotations") or {}
    proof = annotations.get(proof_annotation)
    if proof is not None:
        proved = verify(
            keys,
            proof,
            credential_uid=credential_uid,
            secret_name=secret_name,
            secret_hash=secret_hash,
        )
        same_hash = annotations.get(hash_annotation) == secret_hash
        return "present" if proved and same_hash else "replaced"
    owned = any(ref.get("uid") == credential_uid for ref in metadata.get("ownerReferences") or [])
    return "present" if owned else "replaced"
