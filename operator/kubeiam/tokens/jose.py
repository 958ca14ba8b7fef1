"""What the token server reads of a compact JWS before PyJWT checks it: the header alone.

`jwt.get_unverified_header` decodes all three parts, checking each base64url character in
Python (PyJWT 2.15.1, `PyJWS._decode_base64url_segment`), and `jwt.decode` does it all again:
at the token endpoint that was a third of a DPoP proof's check and half of an introspection
(docs/performance.md#token-figures). The header picks the key; PyJWT still verifies everything.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")  # base64url without padding (RFC 7515 §2)


def header(compact: str) -> dict[str, Any] | None:
    """The JOSE header of `compact` (three dot-separated parts), read from its first part; None
    unless that is a JSON object. Nothing is verified."""
    segment, *rest = compact.split(".")
    if len(rest) != 2 or not _SEGMENT.fullmatch(segment):
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
