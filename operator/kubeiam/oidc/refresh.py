"""When to check an issuer again: its Cache-Control within our bounds, or backoff after failures."""

from __future__ import annotations

import datetime

__all__ = ["next_check", "parse_cache_control"]

# RFC 9111 §1.2.2: a delta-seconds too large to represent is taken as 2**31 seconds (68 years),
# which also keeps a hostile header from overflowing timedelta.
_LARGEST_MAX_AGE = 2**31


def parse_cache_control(header: str | None) -> datetime.timedelta | None:
    """How long a response may be reused, as its Cache-Control header says.

    `no-store` and `no-cache` mean "check again every time": zero, which the schedule then
    raises to its minimum. None when the header says nothing usable (absent, no max-age, or
    malformed), so the caller falls back on its own default instead of trusting a guess.
    """
    if not header:
        return None
    max_ages: set[int] = set()
    uncacheable = False
    for directive in header.split(","):
        name, _, value = directive.strip().partition("=")
        name = name.strip().lower()
        if name in ("no-store", "no-cache"):
            uncacheable = True
        elif name == "max-age":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if not value.isascii() or not value.isdigit():
                return None
            max_ages.add(min(int(value), _LARGEST_MAX_AGE))
    if uncacheable:
        return datetime.timedelta(0)
    if len(max_ages) != 1:
        # RFC 9111 §4.2.1: conflicting max-age directives make the freshness unknown.
        return None
    return datetime.timedelta(seconds=max_ages.pop())


def next_check(
    now: datetime.datetime,
    *,
    ok: bool,
    max_age: datetime.timedelta | None,
    failures: int,
    refresh_min: datetime.timedelta,
    refresh_max: datetime.timedelta,
    retry_min: datetime.timedelta,
    retry_max: datetime.timedelta,
) -> datetime.datetime:
    """The moment an issuer is due to be checked again.

    After a success, the issuer's own max-age, kept between `refresh_min` (so a `no-cache`
    issuer is not polled in a loop) and `refresh_max` (so a rotation is noticed in time); an
    issuer that says nothing gets `refresh_max`. After `failures` consecutive failures (1 for the
    first), `retry_min` doubled for each earlier one, never more than `retry_max`: a dead issuer
    is retried soon, then less and less often.
    """
    if ok:
        wanted = refresh_max if max_age is None else max_age
        return now + min(max(wanted, refresh_min), refresh_max)
    return now + _backoff(failures, retry_min, retry_max)


def _backoff(
    failures: int, retry_min: datetime.timedelta, retry_max: datetime.timedelta
) -> datetime.timedelta:
    # Doubling step by step, rather than retry_min * 2**n, cannot overflow timedelta however
    # many failures there were, and stops after a few dozen steps at most.
    delay = retry_min
    for _ in range(max(failures, 1) - 1):
        if delay <= datetime.timedelta(0) or delay >= retry_max:
            break
        delay = retry_max if delay > retry_max / 2 else delay * 2
    return min(delay, retry_max)
