"""The ES256 signing keys: P-256 key material, and the ring that says which key signs when.

Each key is a P-256 private key in PKCS#8 PEM under its key id, which is the `kid` of the
tokens it signs and of its public key in the JWKS. The Secret that holds them, and how the
operator rotates them, is tokens/key_store.py; the rule is domain/key_rotation.py.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from kubeiam.domain import key_rotation
from kubeiam.kube import key_secret

SIGNING_KEY_SECRET = "kube-iam-signing-keys"
ALGORITHM = "ES256"
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
PURPOSE = "Signs the token server's access tokens (ES256, P-256); only public keys are published."


def new_private_key_pem() -> bytes:
    """A fresh P-256 private key, PKCS#8 PEM: what one entry of the Secret holds."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class SigningKey:
    """One key: its id, the private key (never shown) and its public JWK."""

    kid: str
    private: ec.EllipticCurvePrivateKey
    public_jwk: dict[str, Any]

    def __repr__(self) -> str:  # never show key material, even in a traceback
        return f"SigningKey(kid={self.kid!r})"


@dataclass(frozen=True)
class SigningKeys:
    """The ring: every published key by id, with the times that say which one signs when."""

    ring: tuple[key_rotation.KeyTimes, ...]
    by_kid: Mapping[str, SigningKey]

    def active_at(self, now: datetime.datetime) -> SigningKey:
        """The key that signs at `now`, decided by the clock (domain/key_rotation.py), so every
        replica switches at the same instant whenever it read the ring."""
        return self.by_kid[key_rotation.active_at(self.ring, now).kid]

    @property
    def published(self) -> tuple[SigningKey, ...]:
        """Every key a verifier may meet: the retired ones, the active one, the next one."""
        return tuple(self.by_kid[key.kid] for key in self.ring)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.public_jwk for key in self.published]}


def _signing_key(kid: str, pem: bytes) -> SigningKey:
    private = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(private, ec.EllipticCurvePrivateKey) or private.curve.name != "secp256r1":
        raise key_secret.KeySecretError(f"key {kid!r} of {SIGNING_KEY_SECRET!r} is not P-256")
    jwk: dict[str, Any] = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return SigningKey(kid, private, {**jwk, "kid": kid, "use": "sig", "alg": ALGORITHM})


def from_pems(ring: tuple[key_rotation.KeyTimes, ...], pems: Mapping[str, bytes]) -> SigningKeys:
    """The signing keys of a ring; KeySecretError if one is missing or not a P-256 PEM key."""
    if not ring:
        raise key_secret.KeySecretError(f"{SIGNING_KEY_SECRET!r} holds no key")
    missing = [key.kid for key in ring if key.kid not in pems]
    if missing:
        raise key_secret.KeySecretError(f"{SIGNING_KEY_SECRET!r} lacks the keys {missing!r}")
    try:
        by_kid = {key.kid: _signing_key(key.kid, pems[key.kid]) for key in ring}
    except ValueError:
        problem = f"{SIGNING_KEY_SECRET!r} holds a key that is not PEM"
        raise key_secret.KeySecretError(problem) from None
    return SigningKeys(ring=ring, by_kid=by_kid)


def adopted_times(
    ring: key_secret.KeyRing, created: datetime.datetime
) -> tuple[key_rotation.KeyTimes, ...]:
    """The times of a one-key Secret written before rotation existed: its active key signs
    since the Secret was made; any other key counts as retired then (kept a token lifetime)."""
    before = created - datetime.timedelta(microseconds=1)
    return tuple(
        key_rotation.KeyTimes(kid, created, created)
        if kid == ring.active
        else key_rotation.KeyTimes(kid, before, before, retires=created)
        for kid in sorted(ring.keys)
    )


def from_ring(ring: key_secret.KeyRing, created: datetime.datetime = EPOCH) -> SigningKeys:
    """The signing keys of a one-key Secret (the format before rotation), made at `created`."""
    return from_pems(adopted_times(ring, created), ring.keys)
