"""The ES256 signing key: created by the operator in one Secret, read by the token server.

The operator creates the Secret `kube-iam-signing-keys` in its namespace at start, exactly once
across replicas (kube/key_secret.py: create, and read the winner's on a 409). Each entry is a
P-256 private key in PKCS#8 PEM under its key id, which is the `kid` of the tokens it signs and
of its public key in the JWKS. Rotation is not built yet: the one key signs until the Secret is
replaced by hand (docs/tokens.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from kubeiam.kube import key_secret

SIGNING_KEY_SECRET = "kube-iam-signing-keys"
ALGORITHM = "ES256"
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
    """The key new tokens are signed with, and every public key a verifier may meet."""

    active: SigningKey
    published: tuple[SigningKey, ...]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.public_jwk for key in self.published]}


def _signing_key(kid: str, pem: bytes) -> SigningKey:
    private = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(private, ec.EllipticCurvePrivateKey) or private.curve.name != "secp256r1":
        raise key_secret.KeySecretError(f"key {kid!r} of {SIGNING_KEY_SECRET!r} is not P-256")
    jwk: dict[str, Any] = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return SigningKey(kid, private, {**jwk, "kid": kid, "use": "sig", "alg": ALGORITHM})


def from_ring(ring: key_secret.KeyRing) -> SigningKeys:
    """The signing keys a key Secret holds; KeySecretError if one is not a P-256 key."""
    try:
        keys = {kid: _signing_key(kid, pem) for kid, pem in sorted(ring.keys.items())}
    except ValueError:
        problem = f"{SIGNING_KEY_SECRET!r} holds a key that is not PEM"
        raise key_secret.KeySecretError(problem) from None
    return SigningKeys(active=keys[ring.active], published=tuple(keys.values()))


async def ensure(namespace: str) -> SigningKeys:
    """The operator's side: the signing keys, created first of all replicas if there are none."""
    ring = await key_secret.load_or_create(
        namespace, SIGNING_KEY_SECRET, purpose=PURPOSE, new_key=new_private_key_pem
    )
    return from_ring(ring)


async def load(namespace: str) -> SigningKeys | None:
    """The token server's side: the signing keys (one GET), None until the operator made them."""
    ring = await key_secret.read(namespace, SIGNING_KEY_SECRET)
    return None if ring is None else from_ring(ring)
