"""An issuer's JWKS read as untrusted input: the public signing keys a trust verifies tokens with.

What a document must be, and what happens to each key:
- refused (JwksError, reason JwksInvalid): not a JSON object with a "keys" list; more keys than
  allowed; a key with private members (a leaked private key must stop the trust, not be used);
  a symmetric "oct" key (a shared secret published to the world, and the door to HS256
  forgeries); two keys with the same kid, or several without one; a kid that is not a string; a
  key whose declared algorithm does not fit its type or curve; key material that does not load;
  and a set left with no usable signing key.
- skipped (not for us, so not an error): a key whose "use" is not "sig" or whose "key_ops"
  excludes "verify"; a key type or algorithm this verifier does not accept (an encryption key,
  a future key type); an RSA key shorter than 2048 bits (never to be trusted with a signature)
  or longer than 16384 bits (no issuer signs with one; it only makes each check slow).

Messages name the source, the key's position and kid; never the key material, and never the
text of a pyjwt error, which can quote the whole key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from kubeiam.domain.conditions import Reason

__all__ = [
    "ALGORITHMS",
    "MAX_RSA_BITS",
    "MIN_RSA_BITS",
    "JwksError",
    "KeySet",
    "algorithms_for",
    "parse_jwks",
]

# The algorithms a trust accepts, each with the key type it needs: asymmetric only, so the key
# that verifies can never be used to sign (HS256 with a public key as the secret), and never
# `none`.
ALGORITHMS: Final = {
    "RS256": "RSA",
    "RS384": "RSA",
    "RS512": "RSA",
    "PS256": "RSA",
    "PS384": "RSA",
    "PS512": "RSA",
    "ES256": "EC",
    "ES384": "EC",
    "ES512": "EC",
    "EdDSA": "OKP",
}
# ECDSA ties each algorithm to one curve (RFC 7518 §3.4).
_EC_ALGORITHM: Final = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_OKP_CURVES: Final = frozenset({"Ed25519", "Ed448"})
MIN_RSA_BITS: Final = 2048
# An inline key's members have no length limit in the CRD (the key material is kept as given),
# so a modulus of megabits loads; no issuer uses one.
MAX_RSA_BITS: Final = 16384
# Members that only a private or symmetric key has (RFC 7518 §6.2.2, §6.3.2, §6.4; RFC 8037).
_PRIVATE_MEMBERS: Final = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


class JwksError(ValueError):
    """A JWKS that cannot be used, with a message that says why and never shows key material."""

    reason = Reason.JWKS_INVALID

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class KeySet:
    """The usable signing keys of an issuer.

    `keys` maps each kid to its key; a set of exactly one key may hold it under None when the
    key has no kid. `algorithms` gives, for the same kids, the algorithms each key may verify:
    the one it declares in "alg", otherwise every accepted algorithm its type and curve fit.
    `key_ids` are the kids, sorted, as the trust's status shows them.
    """

    keys: Mapping[str | None, jwt.PyJWK] = field(compare=False)
    key_ids: tuple[str, ...]
    algorithms: Mapping[str | None, frozenset[str]] = field(compare=False)


def parse_jwks(document: Any, *, max_keys: int, source: str) -> KeySet:
    """The usable signing keys of a JWKS document, or JwksError saying what is wrong.

    `source` names where the document came from (spec.jwks, or the URL) in messages.
    """
    if not isinstance(document, Mapping):
        raise JwksError(f"{source}: a JWKS must be a JSON object, not {_json_type(document)}.")
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise JwksError(f'{source}: a JWKS must have a "keys" list.')
    if len(entries) > max_keys:
        raise JwksError(
            f"{source}: the JWKS has {len(entries)} keys, more than the {max_keys} allowed."
        )
    keys: dict[str | None, jwt.PyJWK] = {}
    algorithms: dict[str | None, frozenset[str]] = {}
    skipped: list[str] = []
    for position, entry in enumerate(entries, start=1):
        label = _label(position, entry)
        loaded = _load(entry, label, source)
        if isinstance(loaded, str):
            skipped.append(f"{label} {loaded}")
            continue
        kid, key, fits = loaded
        if kid in keys:
            raise JwksError(
                f"{source}: {label} repeats a kid another key has; each key needs its own."
                if kid is not None
                else f"{source}: several keys have no kid, so a token cannot say which to use."
            )
        keys[kid] = key
        algorithms[kid] = fits
    if not keys:
        why = f" ({'; '.join(skipped)})" if skipped else ""
        raise JwksError(f"{source}: the JWKS has no usable signing key{why}.")
    if None in keys and len(keys) > 1:
        raise JwksError(
            f"{source}: a key without a kid sits beside others, so a token cannot say which"
            " key signed it; give every key a kid."
        )
    key_ids = tuple(sorted(kid for kid in keys if kid is not None))
    return KeySet(keys=keys, key_ids=key_ids, algorithms=algorithms)


def algorithms_for(jwk: Mapping[str, Any]) -> frozenset[str]:
    """The accepted algorithms a public JWK can verify, by its kty, crv and declared alg."""
    kty, crv, declared = jwk.get("kty"), jwk.get("crv"), jwk.get("alg")
    if kty == "RSA":
        fits = frozenset(alg for alg, needs in ALGORITHMS.items() if needs == "RSA")
    elif kty == "EC" and crv in _EC_ALGORITHM:
        fits = frozenset({_EC_ALGORITHM[crv]})
    elif kty == "OKP" and crv in _OKP_CURVES:
        fits = frozenset({"EdDSA"})
    else:
        fits = frozenset()
    if declared is not None:
        return fits & {declared}
    return fits


def _load(
    entry: object, label: str, source: str
) -> tuple[str | None, jwt.PyJWK, frozenset[str]] | str:
    """One key loaded, or why it is skipped; JwksError for what must stop the whole set."""
    if not isinstance(entry, Mapping):
        raise JwksError(f"{source}: {label} is not a JSON object.")
    kty = entry.get("kty")
    if kty == "oct":
        raise JwksError(
            f"{source}: {label} is a symmetric (oct) key, a shared secret; a JWKS must carry"
            " public keys only."
        )
    if any(member in entry for member in _PRIVATE_MEMBERS):
        raise JwksError(
            f"{source}: a JWKS must carry public keys only; {label} includes a private key."
            " Rotate that key: it has been published."
        )
    kid = entry.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise JwksError(f"{source}: {label} has a kid that is not a string.")
    use, operations = entry.get("use"), entry.get("key_ops")
    if use is not None and use != "sig":
        return f"is for {_clip(str(use))}, not signatures"
    if isinstance(operations, list) and "verify" not in operations:
        return "does not allow verify in key_ops"
    if not isinstance(kty, str) or kty not in set(ALGORITHMS.values()):
        return f"has key type {_clip(str(kty))}, which is not accepted"
    declared = entry.get("alg")
    if declared is not None and declared not in ALGORITHMS:
        return f"is for {_clip(str(declared))}, which is not accepted"
    fits = algorithms_for(entry)
    if not fits:
        if declared is not None:
            raise JwksError(
                f"{source}: {label} declares alg {declared}, which does not fit its key type"
                f" {kty}{_curve(entry)}."
            )
        return f"has a curve that is not accepted{_curve(entry)}"
    try:
        # Any algorithm of the right family loads the key; which one verifies is decided per
        # token from `fits`.
        key = jwt.PyJWK(dict(entry), algorithm=min(fits))
    except (jwt.exceptions.PyJWTError, ValueError, TypeError):
        hint = ""
        if "false" in entry and "n" not in entry:
            # YAML 1.1, which kubectl speaks, reads an unquoted key `n` as the boolean false.
            hint = ' Its member "n" arrived as "false": quote the key in YAML ("n": ...).'
        raise JwksError(
            f"{source}: {label} has {kty} key material that does not load.{hint}"
        ) from None
    public = key.key
    if isinstance(public, rsa.RSAPublicKey) and public.key_size < MIN_RSA_BITS:
        return f"is a {public.key_size}-bit RSA key, shorter than {MIN_RSA_BITS} bits"
    if isinstance(public, rsa.RSAPublicKey) and public.key_size > MAX_RSA_BITS:
        return f"is a {public.key_size}-bit RSA key, longer than {MAX_RSA_BITS} bits"
    if not isinstance(
        public,
        rsa.RSAPublicKey
        | ec.EllipticCurvePublicKey
        | ed25519.Ed25519PublicKey
        | ed448.Ed448PublicKey,
    ):
        raise JwksError(f"{source}: {label} is not a public key.")
    return kid, key, fits


def _label(position: int, entry: object) -> str:
    kid = entry.get("kid") if isinstance(entry, Mapping) else None
    if isinstance(kid, str):
        return f'key {position} (kid "{_clip(kid)}")'
    return f"key {position}"


def _curve(entry: Mapping[str, Any]) -> str:
    crv = entry.get("crv")
    return f" on curve {_clip(str(crv))}" if crv is not None else ""


def _clip(text: str, most: int = 64) -> str:
    """An issuer's strings are a stranger's: shown short, and on one line."""
    flat = " ".join(text.split())
    return flat if len(flat) <= most else flat[: most - 3] + "..."


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"
