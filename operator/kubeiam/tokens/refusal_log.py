"""How loudly a token refusal is logged: the first of its kind in a window at INFO, saying how
many of that kind went to DEBUG since the last such line; the rest at DEBUG.

A scanner or a fleet with a stale secret sends refusals by the thousand; one INFO line each
would flood the log and bury the rest. Metrics count every refusal (tokens/metrics.py); the
log keeps a sample a person can read. A kind is an error code with its fixed description (never
the request's words), so the table is a handful of entries however many requests come.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field

WINDOW = datetime.timedelta(minutes=1)

Kind = tuple[str, str]  # (RFC 6749 error code, our description)


@dataclass
class RefusalLog:
    """The log level and line of each refusal, given when it happened."""

    window: datetime.timedelta = WINDOW
    # kind -> (when its last INFO line was written, refusals logged at DEBUG since)
    _seen: dict[Kind, tuple[datetime.datetime, int]] = field(default_factory=dict)

    def line(self, code: str, description: str, now: datetime.datetime) -> tuple[int, str]:
        """The level and message for one refusal of `code` at `now`."""
        kind = (code, description)
        last = self._seen.get(kind)
        if last is not None and now - last[0] < self.window:
            self._seen[kind] = (last[0], last[1] + 1)
            return logging.DEBUG, f"Refused a token request: {code}."
        quieted = last[1] if last is not None else 0
        self._seen[kind] = (now, 0)
        since = (
            f" ({quieted} more since {last[0]:%H:%M:%SZ}, logged at DEBUG)"
            if last is not None and quieted
            else ""
        )
        return logging.INFO, f"Refused a token request: {code}: {description}{since}"
