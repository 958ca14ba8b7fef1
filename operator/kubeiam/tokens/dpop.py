"""DPoP proofs (RFC 9449) at the token endpoint: check one, and name the key it binds a token to.

No I/O: the caller hands in the request's `DPoP` header values, its method, the token
endpoint's URL, the clock and the `Holds` that remember which proofs were used. `check` follows
RFC 9449 §4.3 and answers the key's RFC 7638 thumbprint (`jkt`, the token's `cnf.jkt`, §6.1) or
a refusal with `invalid_dpop_proof` (§5) whose description names the rule, never the proof:

1. exactly one `DPoP` header, at most `MAX_PROOF_BYTES` (a larger one is refused unread);
2. a signed JWT whose header says `typ: dpop+jwt`, an `alg` of `ALGORITHMS` (asymmetric only:
   never `none`, never a MAC) and a `jwk` that is a public key of that algorithm's type;
3. the signature valid under that key;
4. `jti` (at most `MAX_JTI_CHARS`), `htm` the request's method, `htu` the token endpoint's URL
   (RFC 3986 syntax- and scheme-based normalisation, query and fragment ignored, §4.3),
   a fresh server nonce when `nonces` are asked for (`use_dpop_nonce` else, §8), and `iat`
   inside the window (`max_age` past, `skew` ahead);
5. the proof not used before: a digest of the key's thumbprint and `jti` is taken once from
   `holds` until the proof would be too old anyway (§11.1). Holds of one server replica cover
   its workers; a proof replayed to another replica only gets a token bound to the key whose
   private half the replayer lacks.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kubeiam.tokens import jose
from kubeiam.tokens.grants import Error, Refusal
from kubeiam.tokens.holds import Holds, HoldsUnavailable

HEADER = "DPoP"
NONCE_HEADER = "DPoP-Nonce"
TYPE = "dpop+jwt"
# Asymmetric algorithms only (§4.2), each with the one key type and curve it may use.
KEY_TYPES: dict[str, tuple[str, str | None]] = {
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "EdDSA": ("OKP", "Ed25519"),
    "RS256": ("RSA", None),
    "PS256": ("RSA", None),
}
ALGORITHMS = tuple(KEY_TYPES)
# The members a JWK needs for its thumbprint (RFC 7638 §3.2), by key type.
THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
    "RSA": ("e", "kty", "n"),
}
# Members only a private (or symmetric) key has (RFC 7518 §6.2.2, §6.3.2, §6.4; RFC 8037 §2).
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
MAX_PROOF_BYTES = 4096  # an RSA-4096 proof is under 3 KiB; aiohttp caps a header at 8190
MAX_JTI_CHARS = 256
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 4096
DEFAULT_PORTS = {"https": 443, "http": 80}
_UNRESERVED = re.compile(r"%([0-9A-Fa-f]{2})")
# Public keys read from proofs' jwk, by their thumbprint members: a client proves with the same
# key request after request, and reading one (an EC point checked on its curve, an RSA modulus)
# costs a tenth of a check. Bounded, so strangers' keys cannot grow it.
KEY_CACHE_SIZE = 1024


@dataclass(frozen=True)
class Window:
    """How old a proof may be (by its `iat`), and how far ahead a client's clock may run."""

    max_age: float
    skew: float


@dataclass(frozen=True)
class Nonces:
    """Server nonces (RFC 9449 §8) without server state: a nonce names its time slot (`period`
    seconds long) and carries an HMAC of it, so any replica holding the same key accepts what
    another issued. A nonce is fresh in its slot and the next (and the one before, for a replica
    whose clock runs a little ahead): between one and two periods."""

    key: bytes = field(repr=False)
    period: float

    @classmethod
    def derived(cls, material: bytes, period: float) -> Nonces:
        """Nonces whose key HKDF derives from `material` (secret bytes every replica holds)."""
        kdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"kube-iam dpop nonce")
        return cls(kdf.derive(material), period)

    def issue(self, now: float) -> str:
        """The nonce of `now`'s time slot."""
        slot = int(now // self.period)
        return f"{slot}.{self._mac(slot)}"

    def fresh(self, nonce: object, now: float) -> bool:
        """Whether `nonce` is one of ours, of this time slot or a neighbour."""
        if not isinstance(nonce, str) or len(nonce) > 64:
            return False
        slot_text, _, mac = nonce.partition(".")
        if not slot_text.isdigit() or not slot_text.isascii():
            return False
        slot = int(slot_text)
        if abs(slot - int(now // self.period)) > 1:
            return False
        return hmac.compare_digest(mac.encode(), self._mac(slot).encode())

    def _mac(self, slot: int) -> str:
        return _b64(hmac.new(self.key, str(slot).encode(), hashlib.sha256).digest()[:18])


def check(
    values: Sequence[str],
    *,
    method: str,
    url: str,
    window: Window,
    holds: Holds,
    now: float,
    nonces: Nonces | None = None,
) -> str | Refusal:
    """The thumbprint of the key that signed the request's one valid, unused proof; or why not."""
    if len(values) != 1:
        return _refusal("A token request carries exactly one DPoP header.")
    proof = values[0]
    if len(proof) > MAX_PROOF_BYTES:
        return _refusal(f"The DPoP proof is longer than {MAX_PROOF_BYTES} bytes.")
    verified = _verified(proof)
    if isinstance(verified, Refusal):
        return verified
    members, claims = verified
    jti, htm, htu, iat = (claims.get(name) for name in ("jti", "htm", "htu", "iat"))
    if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_CHARS:
        return _refusal(f"The proof's jti must be a string of 1 to {MAX_JTI_CHARS} characters.")
    if htm != method:
        return _refusal("The proof's htm is not this request's method.")
    if not isinstance(htu, str) or normalised_url(htu) != normalised_url(url):
        return _refusal("The proof's htu is not the token endpoint's URL.")
    if nonces is not None and not nonces.fresh(claims.get("nonce"), now):
        description = f"The proof must carry the server's nonce (the {NONCE_HEADER} header)."
        return Refusal(Error.USE_DPOP_NONCE, description)
    if not isinstance(iat, int) or isinstance(iat, bool):
        return _refusal("The proof's iat must be an integer (seconds since the epoch).")
    if iat < now - window.max_age:
        return _refusal(f"The proof's iat is more than {window.max_age:g} seconds old.")
    if iat > now + window.skew:
        return _refusal("The proof's iat is in the future.")
    jkt = _thumbprint_of(members)
    # Held until the proof would be refused as too old anyway: no longer is needed (§11.1).
    try:
        fresh = holds.take(replay_key(jkt, jti), iat + window.max_age + 1, now)
    except HoldsUnavailable:  # a full shared table: refused, never let through unchecked
        return _refusal("The server cannot tell whether the proof was used before; send a new one.")
    if not fresh:
        return _refusal("The proof was used before (its jti was seen).")
    return jkt


def thumbprint(jwk: dict[str, Any]) -> str:
    """The JWK's SHA-256 thumbprint (RFC 7638 §3), base64url without padding."""
    return _thumbprint_of(_thumbprint_input(jwk))


def _thumbprint_of(members: str) -> str:
    """The SHA-256 thumbprint of a JWK's thumbprint input (`_thumbprint_input`)."""
    return _b64(hashlib.sha256(members.encode()).digest())


def _thumbprint_input(jwk: dict[str, Any]) -> str:
    """The JWK's required members, in lexical order, as JSON without whitespace (RFC 7638 §3)."""
    members = THUMBPRINT_MEMBERS[jwk["kty"]]
    return json.dumps({name: jwk[name] for name in members}, separators=(",", ":"), sort_keys=True)


def replay_key(jkt: str, jti: str) -> bytes:
    """What the holds remember of a used proof: a digest, never the proof."""
    return hashlib.sha256(b"dpop\0" + jkt.encode() + b"\0" + jti.encode()).digest()


@functools.lru_cache(maxsize=256)
def normalised_url(url: str) -> str | None:
    """`url` after RFC 3986 §6.2.2 and §6.2.3 normalisation, query and fragment dropped (RFC
    9449 §4.3); None when it is not an absolute http(s) URL."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    if parts.username is not None or parts.password is not None:
        return None  # a token endpoint's URL has no user information
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != DEFAULT_PORTS[scheme]:
        host = f"{host}:{port}"
    path = _remove_dot_segments(_UNRESERVED.sub(_percent, parts.path)) or "/"
    return f"{scheme}://{host}{path}"


def _verified(proof: str) -> tuple[str, dict[str, Any]] | Refusal:
    """The proof's public JWK (its thumbprint's input) and claims once its header and signature
    check out."""
    header = jose.header(proof)
    if header is None:
        return _refusal("The DPoP header is not a signed JWT.")
    if header.get("typ") != TYPE:
        return _refusal(f"The proof's typ must be {TYPE}.")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in KEY_TYPES:  # a list would not even hash
        return _refusal(f"The proof's alg must be one of {', '.join(ALGORITHMS)}.")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        return _refusal("The proof's header must carry its public key as jwk.")
    if PRIVATE_MEMBERS & jwk.keys():
        return _refusal("The proof's jwk must be a public key; it holds private members.")
    kty, crv = KEY_TYPES[alg]
    if jwk.get("kty") != kty or (crv is not None and jwk.get("crv") != crv):
        return _refusal(f"The proof's jwk is not a {crv or kty} key, as alg {alg} needs.")
    if any(not isinstance(jwk.get(name), str) for name in THUMBPRINT_MEMBERS[kty]):
        return _refusal("The proof's jwk lacks a member its key type needs.")
    members = _thumbprint_input(jwk)
    try:
        key = _public_key(alg, members)
        if key is None:
            return _refusal("The proof's jwk is not an acceptable public key.")
        claims: dict[str, Any] = jwt.decode(
            proof,
            key,
            algorithms=[alg],
            # iat is judged by the caller's window; a proof has no exp, aud or iss (§4.2).
            options={
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
                "verify_jti": False,  # checked below, with its bound
                "require": ["jti", "htm", "htu", "iat"],
            },
        )
    except jwt.MissingRequiredClaimError as missing:
        return _refusal(f"The proof lacks the {missing.claim} claim.")
    except jwt.InvalidSignatureError:
        return _refusal("The proof's signature does not verify under its jwk.")
    except (jwt.PyJWTError, ValueError, TypeError):
        return _refusal("The proof's jwk or signature cannot be used.")
    return members, claims


@functools.lru_cache(maxsize=KEY_CACHE_SIZE)
def _public_key(alg: str, members: str) -> Any:
    """The public key a jwk of these thumbprint members is for `alg`; None when it is not one
    accepted (RSA under 2048 or over 4096 bits). Raises what PyJWT raises for a broken key."""
    key = jwt.PyJWK(json.loads(members), alg).key
    if isinstance(key, rsa.RSAPublicKey):
        return key if MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS else None
    return key if isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey) else None


def _percent(match: re.Match[str]) -> str:
    """An escaped unreserved character decoded, any other escape in upper case (§6.2.2.1-2)."""
    char = chr(int(match.group(1), 16))
    if char.isascii() and (char.isalnum() or char in "-._~"):
        return char
    return "%" + match.group(1).upper()


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, for the absolute paths an http(s) URL has."""
    output: list[str] = []
    for segment in path.split("/")[1:]:
        if segment == "..":
            if output:
                output.pop()
        elif segment != ".":
            output.append(segment)
    ends_in_dir = path.endswith(("/.", "/.."))
    return "/" + "/".join(output) + ("/" if ends_in_dir and output else "") if path else ""


def _b64(data: bytes) -> str:
    return jwt.utils.base64url_encode(data).decode()


def _refusal(description: str) -> Refusal:
    return Refusal(Error.INVALID_DPOP_PROOF, description)
