"""The client secret's format: recognisable, checksummed, carrying its credential id; and its hash.

A client secret reads `kiam_<credential id>_<random><checksum>`:

- `kiam_` is a fixed prefix, so secret scanners can find a leaked secret by pattern;
- the credential id is 20 characters of lowercase base32 derived from the credential's UID, so a
  token service finds the credential in O(1) without trying every hash;
- the random part is 32 bytes (256 bits) from the operating system's CSPRNG, in base62 (43
  characters, zero-padded);
- the checksum is the CRC32 of everything before it, in base62 (6 characters), so a scanner or
  the token service rejects a mistyped or truncated secret without a lookup.

The whole secret matches `kiam_[a-z2-7]{20}_[0-9A-Za-z]{49}`. Only its SHA-256 is ever stored:
with 256 bits of randomness a slow password hash adds nothing.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass

PREFIX = "kiam"
CREDENTIAL_ID_LENGTH = 20
RANDOM_BYTES = 32
RANDOM_LENGTH = 43  # base62 digits needed for 256 bits
CHECKSUM_LENGTH = 6  # base62 digits needed for 32 bits
PATTERN = re.compile(
    rf"^{PREFIX}_(?P<id>[a-z2-7]{{{CREDENTIAL_ID_LENGTH}}})_"
    rf"(?P<random>[0-9A-Za-z]{{{RANDOM_LENGTH}}})(?P<checksum>[0-9A-Za-z]{{{CHECKSUM_LENGTH}}})$"
)
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _base62(value: int, width: int) -> str:
    digits = []
    number = value
    while number:
        number, remainder = divmod(number, 62)
        digits.append(_BASE62[remainder])
    encoded = "".join(reversed(digits)).rjust(width, "0")
    if len(encoded) > width:
        raise ValueError(f"{value} does not fit in {width} base62 digits")
    return encoded


def credential_id(uid: str) -> str:
    """The credential id for a credential's UID: stable across retries and restarts."""
    digest = hashlib.sha256(uid.encode()).digest()
    return base64.b32encode(digest).decode().lower()[:CREDENTIAL_ID_LENGTH]


def checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), CHECKSUM_LENGTH)


def generate(credential: str, random_bytes: Callable[[int], bytes]) -> str:
    """A new client secret for the credential id; `random_bytes` is the CSPRNG (os.urandom)."""
    if not re.fullmatch(rf"[a-z2-7]{{{CREDENTIAL_ID_LENGTH}}}", credential):
        raise ValueError("a credential id is 20 characters of lowercase base32")
    random = _base62(int.from_bytes(random_bytes(RANDOM_BYTES), "big"), RANDOM_LENGTH)
    body = f"{PREFIX}_{credential}_{random}"
    return body + checksum(body)


@dataclass(frozen=True)
class ParsedSecret:
    credential_id: str
    checksum_ok: bool


def parse(secret: str) -> ParsedSecret | None:
    """The credential id a secret names, and whether its checksum holds; None if not ours."""
    match = PATTERN.match(secret)
    if match is None:
        return None
    body = secret[:-CHECKSUM_LENGTH]
    return ParsedSecret(match["id"], checksum(body) == match["checksum"])


def secret_hash(secret: str) -> str:
    """What status keeps instead of the secret: `sha256:<hex>`."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()
