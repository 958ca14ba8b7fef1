"""DPoP proofs as a client makes them (RFC 9449 §4.2), signed with PyJWT, for the unit and the
integration tests alike; each test bends one part of an otherwise valid proof."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms


def private_key(alg: str) -> Any:
    """A fresh private key for `alg`."""
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "ES384":
        return ec.generate_private_key(ec.SECP384R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class ProofKey:
    """A client's DPoP key pair and the proofs it signs."""

    alg: str = "ES256"
    private: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.private is None:
            self.private = private_key(self.alg)

    def public_jwk(self) -> dict[str, Any]:
        algorithm = get_default_algorithms()[self.alg]
        jwk: dict[str, Any] = algorithm.to_jwk(self.private.public_key(), as_dict=True)  # type: ignore[attr-defined]
        return jwk

    def private_jwk(self) -> dict[str, Any]:
        algorithm = get_default_algorithms()[self.alg]
        jwk: dict[str, Any] = algorithm.to_jwk(self.private, as_dict=True)  # type: ignore[attr-defined]
        return jwk

    def proof(
        self,
        *,
        htm: str,
        htu: str,
        iat: int,
        jti: str | None = None,
        header: dict[str, Any] | None = None,
        claims: dict[str, Any] | None = None,
        key: Any = None,
        alg: str | None = None,
    ) -> str:
        """A proof for one request; `header` and `claims` add to or replace what it says (a
        value None removes that member), `key` and `alg` sign it otherwise."""
        body = {"jti": jti or secrets.token_urlsafe(16), "htm": htm, "htu": htu, "iat": iat}
        body.update(claims or {})
        fields = {"typ": "dpop+jwt", "jwk": self.public_jwk()}
        fields.update(header or {})
        body = {name: value for name, value in body.items() if value is not None}
        fields = {name: value for name, value in fields.items() if value is not None}
        signer = self.private if key is None else key
        return jwt.encode(body, signer, algorithm=alg or self.alg, headers=fields)
