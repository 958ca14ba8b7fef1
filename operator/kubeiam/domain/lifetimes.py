"""A credential's expiry: resolved once from what it asks for and the organisation's policy."""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass

from kubeiam.domain.conditions import Reason

# Go's time.ParseDuration units, which is what `spec.expiresIn` documents (`720h`, `1h30m`).
_UNITS = {
    "ns": datetime.timedelta(microseconds=0.001),
    "us": datetime.timedelta(microseconds=1),
    "µs": datetime.timedelta(microseconds=1),
    "ms": datetime.timedelta(milliseconds=1),
    "s": datetime.timedelta(seconds=1),
    "m": datetime.timedelta(minutes=1),
    "h": datetime.timedelta(hours=1),
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str) -> datetime.timedelta:
    """Parse a Go duration such as `720h`, `90m` or `1h30m45s`; ValueError otherwise."""
    position, total = 0, datetime.timedelta(0)
    if not text:
        raise ValueError("an empty duration")
    while position < len(text):
        match = _PART.match(text, position)
        if match is None:
            raise ValueError(f"{text!r} is not a duration such as 720h or 1h30m")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    return total


def format_duration(delta: datetime.timedelta) -> str:
    """A duration for a person: `365d`, `90d`, `12h`, `1h30m`."""
    seconds = int(delta.total_seconds())
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s")]
    return "".join(f"{value}{unit}" for value, unit in parts if value) or "0s"


@dataclass(frozen=True)
class Expiry:
    """The resolved expiry of a credential."""

    expires_at: datetime.datetime


@dataclass(frozen=True)
class ExpiryRefused:
    """The request cannot be honoured; `reason` and `message` go into the condition."""

    reason: Reason
    message: str


def resolve_expiry(
    *,
    created_at: datetime.datetime,
    expires_at: datetime.datetime | None,
    expires_in: str | None,
    default_lifetime: datetime.timedelta,
    max_lifetime: datetime.timedelta,
) -> Expiry | ExpiryRefused:
    """The credential's expiry, counted from its creation so that every retry resolves the same.

    None requested means the organisation's default lifetime; more than the maximum is refused.
    """
    if expires_at is not None and expires_in is not None:
        return ExpiryRefused(
            Reason.INVALID_EXPIRY, "spec.expiresAt and spec.expiresIn are mutually exclusive."
        )
    if expires_in is not None:
        try:
            lifetime = parse_duration(expires_in)
        except ValueError as error:
            return ExpiryRefused(Reason.INVALID_EXPIRY, f"spec.expiresIn: {error}.")
        requested_by = "spec.expiresIn"
    elif expires_at is not None:
        lifetime = expires_at - created_at
        requested_by = "spec.expiresAt"
    else:
        lifetime = default_lifetime
        requested_by = "the organisation's default lifetime"
    if lifetime <= datetime.timedelta(0):
        return ExpiryRefused(
            Reason.INVALID_EXPIRY,
            f"{requested_by} asks for an expiry at or before the credential's creation.",
        )
    if lifetime > max_lifetime:
        return ExpiryRefused(
            Reason.LIFETIME_EXCEEDED,
            f"{requested_by} asks for a lifetime of {format_duration(lifetime)}, more than the "
            f"organisation's maximum of {format_duration(max_lifetime)}.",
        )
    return Expiry(created_at + lifetime)
