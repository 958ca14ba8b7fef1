"""Whether an external token is trusted: the one decision `kube-iam trust check` and the token
service share.

The checks run in a fixed order and stop at the first failure, so the verdict names the first
thing wrong: enabled, format, algorithm, key, signature, issuer, lifetime, audience, subject,
condition. Nothing about the token's claims is believed before its signature is verified with
one of the issuer's keys, using the algorithm that key allows (never the one the token asks for
alone). Times are checked here against the caller's clock, not by pyjwt against the machine's.

Messages say what was found and what was expected; they never contain the token or its
signature. Claim values (iss, aud, sub, kid) are shown, clipped, because they are what a person
needs to fix a trust, and they are not secrets.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import jwt

from kubeiam.domain.conditions import Reason, format_time
from kubeiam.oidc.cel.condition import CompiledCondition
from kubeiam.oidc.cel.errors import ConditionEvaluationError
from kubeiam.oidc.jwks import ALGORITHMS, KeySet

__all__ = ["MAX_TOKEN_LENGTH", "Check", "TokenVerdict", "TrustTerms", "evaluate_token"]

# Real tokens are a few kilobytes (GitHub's about 1.2, Entra ID's with groups up to about 8); the
# cap bounds the decoding and the claims a condition walks before any signature is checked.
MAX_TOKEN_LENGTH: Final = 32 * 1024
_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")
# Verifies with the accepted algorithms only: HS* and none are not even registered.
_VERIFIER = jwt.PyJWS(
    algorithms=sorted(ALGORITHMS),
    options={"verify_signature": True, "enforce_minimum_key_length": True},
)


@dataclass(frozen=True)
class TrustTerms:
    """What a trust requires of a token, taken from its spec."""

    issuer: str
    audiences: tuple[str, ...]
    subject: str | None
    condition: CompiledCondition
    disabled: bool = False


@dataclass(frozen=True)
class Check:
    """One check on a token: its name, whether it passed, and why (reason None when passed)."""

    name: str
    passed: bool
    reason: Reason | None
    message: str


@dataclass(frozen=True)
class TokenVerdict:
    """The checks that ran, in order; the last one failed unless the token was accepted.

    `claims` are the token's claims once its signature was verified, else None.
    """

    checks: tuple[Check, ...]
    claims: Mapping[str, Any] | None = field(default=None, compare=False)

    @property
    def accepted(self) -> bool:
        """Every check passed, and the signature and condition checks were among them."""
        names = {check.name for check in self.checks}
        return (
            all(check.passed for check in self.checks)
            and "signature" in names
            and "condition" in names
        )

    @property
    def failure(self) -> Check | None:
        """The first check that failed, or None."""
        return next((check for check in self.checks if not check.passed), None)


class _Refused(Exception):
    """A check failed: stops the chain with its reason and message."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def evaluate_token(
    token: str,
    terms: TrustTerms,
    keys: KeySet,
    *,
    now: datetime.datetime,
    leeway: datetime.timedelta,
) -> TokenVerdict:
    """Check a token against a trust's terms and the issuer's keys, as of `now` (timezone-aware).

    Stops at the first failed check; the verdict lists every check that ran.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    checks: list[Check] = []
    claims: dict[str, Any] | None = None
    name = "enabled"
    try:
        checks.append(Check(name, True, None, _enabled(terms)))
        name = "format"
        header, payload = _parse(token)
        checks.append(Check(name, True, None, "a signed JWT with a JSON header and payload"))
        name = "algorithm"
        algorithm = header["alg"]
        checks.append(Check(name, True, None, _algorithm(algorithm)))
        name = "key"
        kid, key, found = _key(header, algorithm, keys)
        checks.append(Check(name, True, None, found))
        name = "signature"
        checks.append(Check(name, True, None, _signature(token, algorithm, kid, key)))
        claims = payload
        name = "issuer"
        checks.append(Check(name, True, None, _issuer(payload, terms)))
        name = "lifetime"
        checks.append(Check(name, True, None, _lifetime(payload, now, leeway)))
        name = "audience"
        checks.append(Check(name, True, None, _audience(payload, terms)))
        name = "subject"
        checks.append(Check(name, True, None, _subject(payload, terms)))
        name = "condition"
        checks.append(Check(name, True, None, _condition(payload, terms)))
    except _Refused as refusal:
        checks.append(Check(name, False, refusal.reason, refusal.message))
    return TokenVerdict(checks=tuple(checks), claims=claims)


def _enabled(terms: TrustTerms) -> str:
    if terms.disabled:
        raise _Refused(
            Reason.DISABLED, "the trust is disabled (spec.disabled); no token is accepted"
        )
    return "the trust is enabled"


# -- format ------------------------------------------------------------------------------------


def _parse(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and payload of a compact JWS, or TokenMalformed."""
    if not isinstance(token, str):
        raise _malformed("the token is not text")
    token = token.strip()
    if not token:
        raise _malformed("the token is empty")
    if len(token) > MAX_TOKEN_LENGTH:
        raise _malformed(
            f"the token is {len(token)} characters long, more than the {MAX_TOKEN_LENGTH} accepted"
        )
    parts = token.split(".")
    if len(parts) == 5:
        raise _malformed("the token is encrypted (a JWE, five parts); a signed JWT is expected")
    if len(parts) != 3:
        raise _malformed(f"a JWT has three parts separated by dots; this token has {len(parts)}")
    for name, part in zip(("header", "payload", "signature"), parts, strict=True):
        if not part and name != "signature":
            raise _malformed(f"the token's {name} is empty")
        if not _SEGMENT.fullmatch(part):
            raise _malformed(f"the token's {name} is not base64url")
    header = _json_object(_decode(parts[0], "header"), "header")
    payload = _json_object(_decode(parts[1], "payload"), "payload")
    _decode(parts[2], "signature")
    if not isinstance(header.get("alg"), str):
        raise _malformed('the token\'s header has no "alg"')
    if "crit" in header or "b64" in header:
        raise _malformed(
            "the token's header asks for critical extensions (crit or b64), which are not accepted"
        )
    if "kid" in header and not isinstance(header["kid"], str):
        raise _malformed("the token's kid is not a string")
    return header, payload


def _decode(part: str, name: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise _malformed(f"the token's {name} is not base64url") from None


def _json_object(data: bytes, name: str) -> dict[str, Any]:
    try:
        value = json.loads(
            data.decode("utf-8"),
            parse_constant=_no_constant,
            object_pairs_hook=_unique_members,
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _malformed(f"the token's {name} is not JSON") from None
    except _Repeated as repeated:
        raise _malformed(f"the token's {name} has the member {repeated.name} twice") from None
    if not isinstance(value, dict):
        raise _malformed(f"the token's {name} is not a JSON object")
    return value


class _Repeated(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers may keep different copies of a repeated claim: refuse rather than guess.
    members: dict[str, Any] = {}
    for name, value in pairs:
        if name in members:
            raise _Repeated(_show(name))
        members[name] = value
    return members


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _malformed(message: str) -> _Refused:
    return _Refused(Reason.TOKEN_MALFORMED, message)


# -- algorithm, key, signature -----------------------------------------------------------------


def _algorithm(algorithm: str) -> str:
    accepted = ", ".join(ALGORITHMS)
    if algorithm.lower() == "none":
        raise _Refused(
            Reason.ALGORITHM_NOT_ALLOWED,
            f"the token is unsigned (alg none); accepted algorithms: {accepted}",
        )
    if algorithm not in ALGORITHMS:
        why = (
            " (a shared-secret algorithm: anyone who knows the issuer's public key could sign"
            " with it)"
            if algorithm.upper().startswith("HS")
            else ""
        )
        raise _Refused(
            Reason.ALGORITHM_NOT_ALLOWED,
            f"alg is {_show(algorithm)}{why}; accepted algorithms: {accepted}",
        )
    return f"alg {algorithm} is an accepted algorithm"


def _key(
    header: Mapping[str, Any], algorithm: str, keys: KeySet
) -> tuple[str | None, jwt.PyJWK, str]:
    kid = header.get("kid")
    known = ", ".join(keys.key_ids) or "none with a kid"
    if len(keys.keys) == 1 and (kid is None or None in keys.keys):
        # One key and nothing to choose between: kid is optional (RFC 7515 §4.1.4).
        (chosen,) = keys.keys
    elif kid is None:
        raise _Refused(
            Reason.UNKNOWN_KEY_ID,
            f"the token has no kid and the issuer has {len(keys.keys)} keys ({known}); it must"
            " say which one signed it",
        )
    elif kid in keys.keys:
        chosen = kid
    else:
        raise _Refused(
            Reason.UNKNOWN_KEY_ID,
            f"kid {_show(kid)} is not one of the issuer's keys ({known}); if the issuer"
            " rotated its keys, they are fetched again at the next refresh",
        )
    key = keys.keys[chosen]
    fits = keys.algorithms.get(chosen, frozenset())
    named = f"key {_show(chosen)}" if chosen is not None else "the issuer's key"
    if algorithm not in fits:
        raise _Refused(
            Reason.ALGORITHM_NOT_ALLOWED,
            f"alg is {algorithm}, but {named} is an {key.key_type} key for"
            f" {', '.join(sorted(fits)) or 'no accepted algorithm'}",
        )
    return chosen, key, f"{named} is an {key.key_type} key for {algorithm}"


def _signature(token: str, algorithm: str, kid: str | None, key: jwt.PyJWK) -> str:
    named = f"key {_show(kid)}" if kid is not None else "the issuer's key"
    try:
        _VERIFIER.decode_complete(token.strip(), key=key.key, algorithms=[algorithm])
    except (jwt.exceptions.PyJWTError, ValueError, TypeError):
        # pyjwt's own words are not shown: some quote the key.
        raise _Refused(
            Reason.SIGNATURE_INVALID,
            f"the signature does not verify with {named} ({algorithm})",
        ) from None
    return f"the signature verifies with {named} ({algorithm})"


# -- claims ------------------------------------------------------------------------------------


def _issuer(claims: Mapping[str, Any], terms: TrustTerms) -> str:
    iss = claims.get("iss")
    if iss is None:
        raise _Refused(
            Reason.ISSUER_MISMATCH, f"the token has no iss; the trust accepts {_show(terms.issuer)}"
        )
    if iss != terms.issuer:
        raise _Refused(
            Reason.ISSUER_MISMATCH,
            f"iss is {_show(iss)}, the trust accepts {_show(terms.issuer)} (compared exactly)",
        )
    return f"iss is {_show(iss)}"


def _lifetime(claims: Mapping[str, Any], now: datetime.datetime, leeway: datetime.timedelta) -> str:
    moment = now.timestamp()
    slack = leeway.total_seconds()
    if "exp" not in claims:
        raise _malformed("the token has no exp: a token that never expires is not accepted")
    exp = _seconds(claims, "exp")
    if moment >= exp + slack:
        raise _Refused(
            Reason.TOKEN_EXPIRED,
            f"the token expired at {_when(exp)}, {_ago(moment - exp)} ago; it is now"
            f" {_when(moment)} and the leeway is {_ago(slack)}",
        )
    # A token not valid yet, by either claim, is refused with the claim's own words.
    not_yet = {
        "nbf": "the token is not valid before {at} (nbf), {ahead} from now",
        "iat": "the token was issued at {at} (iat), {ahead} in the future",
    }
    for claim, wording in not_yet.items():
        if claim in claims and moment + slack < (at := _seconds(claims, claim)):
            raise _Refused(
                Reason.TOKEN_NOT_YET_VALID,
                wording.format(at=_when(at), ahead=_ago(at - moment))
                + f"; the leeway is {_ago(slack)}",
            )
    return f"valid until {_when(exp)}; it is now {_when(moment)}"


def _seconds(claims: Mapping[str, Any], name: str) -> float:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _malformed(f"the token's {name} is not a number of seconds")
    seconds = float(value) if abs(value) < 2**62 else math.inf
    if not math.isfinite(seconds):
        raise _malformed(f"the token's {name} is out of range")
    return seconds


def _when(seconds: float) -> str:
    try:
        return format_time(datetime.datetime.fromtimestamp(seconds, datetime.UTC))
    except (OverflowError, OSError, ValueError):
        return f"{seconds:.0f} seconds after 1970"


def _ago(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def _audience(claims: Mapping[str, Any], terms: TrustTerms) -> str:
    aud = claims.get("aud")
    accepted = list(terms.audiences)
    if isinstance(aud, str):
        found = [aud]
    elif isinstance(aud, list) and aud and all(isinstance(item, str) for item in aud):
        found = list(aud)
    elif aud is None:
        raise _Refused(
            Reason.AUDIENCE_MISMATCH, f"the token has no aud; the trust accepts {_show(accepted)}"
        )
    else:
        raise _Refused(
            Reason.AUDIENCE_MISMATCH,
            f"aud is neither a string nor a list of strings; the trust accepts {_show(accepted)}",
        )
    matched = [item for item in found if item in terms.audiences]
    if not matched:
        raise _Refused(
            Reason.AUDIENCE_MISMATCH, f"aud is {_show(found)}, the trust accepts {_show(accepted)}"
        )
    return f"aud {_show(matched[0])} is accepted"


def _subject(claims: Mapping[str, Any], terms: TrustTerms) -> str:
    if terms.subject is None:
        return "the trust does not require a subject"
    sub = claims.get("sub")
    if sub is None:
        raise _Refused(
            Reason.SUBJECT_MISMATCH,
            f"the token has no sub; the trust requires {_show(terms.subject)}",
        )
    if sub != terms.subject:
        raise _Refused(
            Reason.SUBJECT_MISMATCH,
            f"sub is {_show(sub)}, the trust requires {_show(terms.subject)}",
        )
    return f"sub is {_show(sub)}"


def _condition(claims: Mapping[str, Any], terms: TrustTerms) -> str:
    try:
        holds = terms.condition.evaluate(claims)
    except ConditionEvaluationError as error:
        raise _Refused(Reason.CONDITION_ERROR, error.message) from None
    if not holds:
        raise _Refused(
            Reason.CONDITION_FALSE,
            f"the condition is false for this token: {_show(terms.condition.source, 300)}",
        )
    return "the condition is true"


def _show(value: object, most: int = 200) -> str:
    """A value as a person reads it in a message: repr, on one line, clipped."""
    text = " ".join(repr(value).split())
    return text if len(text) <= most else text[: most - 3] + "..."
