"""The signing-key rotation rule: given the ring and the clock, the ring there should be.

Pure: plain values in, plain values out (the caller supplies the new key's id). Every replica of
the token server picks the key that signs from the ring and the clock alone (`active_at`), so
they all switch at the same instant whenever each one read the ring. The operator calls `plan`
and writes what it returns with a compare-and-swap, so two replicas never add two next keys.

The three promises, so that a verifier that caches the JWKS never meets an unknown `kid`:
- a next key is published at least `lead` (the JWKS max-age, the token server's reading
  interval and a margin) before it activates;
- the active key is the newest whose activation has come;
- a key that stopped signing stays published until every token it could have signed expired
  (its retirement plus the longest token lifetime plus the margin), then it is dropped.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, replace


class RotationSettingsError(ValueError):
    """Settings that cannot keep the promises (the message names them)."""


@dataclass(frozen=True)
class KeyTimes:
    """One key of the ring: its id and when it was made, starts signing and stops signing
    (`retires` is set when its successor is planned: the successor's activation)."""

    kid: str
    created: datetime.datetime
    activates: datetime.datetime
    retires: datetime.datetime | None = None


@dataclass(frozen=True)
class Policy:
    """How often keys change and how long what they signed lives."""

    period: datetime.timedelta  # how long a key signs
    jwks_max_age: datetime.timedelta  # how long a verifier may cache the JWKS
    refresh: datetime.timedelta  # how late a token server replica may read a new ring
    token_lifetime: datetime.timedelta  # the longest lifetime of a token
    margin: datetime.timedelta  # clock skew between the operator, replicas and verifiers

    @property
    def lead(self) -> datetime.timedelta:
        """How long before it signs a next key must be in the Secret."""
        return self.jwks_max_age + self.refresh + self.margin

    def check(self) -> None:
        """RotationSettingsError unless a next key can always be published in time."""
        for name, value in (
            ("KUBEIAM_TOKEN_KEY_ROTATION_PERIOD", self.period),
            ("KUBEIAM_TOKEN_KEY_REFRESH_INTERVAL", self.refresh),
            ("KUBEIAM_TOKEN_LIFETIME", self.token_lifetime),
        ):
            if value <= datetime.timedelta(0):
                raise RotationSettingsError(f"{name} must be positive")
        if self.margin < datetime.timedelta(0) or self.jwks_max_age < datetime.timedelta(0):
            raise RotationSettingsError(
                "KUBEIAM_TOKEN_KEY_MARGIN and KUBEIAM_TOKEN_JWKS_MAX_AGE must not be negative"
            )
        if self.period <= self.lead:
            raise RotationSettingsError(
                f"KUBEIAM_TOKEN_KEY_ROTATION_PERIOD ({_seconds(self.period)}) must be longer "
                f"than the lead a next key needs: KUBEIAM_TOKEN_JWKS_MAX_AGE + "
                f"KUBEIAM_TOKEN_KEY_REFRESH_INTERVAL + KUBEIAM_TOKEN_KEY_MARGIN "
                f"({_seconds(self.lead)})"
            )


def _seconds(value: datetime.timedelta) -> str:
    return f"{value.total_seconds():g} s"


def active_at(ring: tuple[KeyTimes, ...], now: datetime.datetime) -> KeyTimes:
    """The key that signs at `now`: the newest whose activation has come. If none has (a clock
    behind the one that wrote the ring), the earliest to activate: it is published too."""
    if not ring:
        raise ValueError("an empty ring has no active key")
    started = [key for key in ring if key.activates <= now]
    if started:
        return max(started, key=lambda key: (key.activates, key.kid))
    return min(ring, key=lambda key: (key.activates, key.kid))


def _expired(key: KeyTimes, active: KeyTimes, now: datetime.datetime, policy: Policy) -> bool:
    """Whether every token `key` could have signed is past its expiry (never the active key,
    nor a key still to come)."""
    if key.kid == active.kid or key.activates > active.activates or key.retires is None:
        return False
    return now >= key.retires + policy.token_lifetime + policy.margin


def plan(
    ring: tuple[KeyTimes, ...],
    now: datetime.datetime,
    policy: Policy,
    new_kid: Callable[[], str],
) -> tuple[KeyTimes, ...]:
    """The ring there should be at `now`: the same tuple when nothing is due.

    An empty ring gets a key that signs at once (no token exists that a verifier could fail
    on). A next key is added once the active one has signed for `period - lead`, to activate
    `period` after it did, or `lead` from now when that is later (an operator that was down).
    Keys whose tokens have all expired are dropped. Sorted by activation.
    """
    if not ring:
        return (KeyTimes(new_kid(), created=now, activates=now),)
    active = active_at(ring, now)
    kept = [key for key in ring if not _expired(key, active, now, policy)]
    has_next = any(key.activates > active.activates for key in kept)
    if not has_next and now >= active.activates + policy.period - policy.lead:
        starts = max(active.activates + policy.period, now + policy.lead)
        kept = [replace(key, retires=starts) if key.kid == active.kid else key for key in kept]
        kept.append(KeyTimes(new_kid(), created=now, activates=starts))
    result = tuple(sorted(kept, key=lambda key: (key.activates, key.kid)))
    return ring if set(result) == set(ring) else result
