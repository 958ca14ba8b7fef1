"""Events a person reads in `kubectl describe`: one place that posts them, never with secrets."""

from __future__ import annotations

from typing import Literal

import kopf

EventType = Literal["Normal", "Warning"]


def post(body: kopf.Body, event_type: EventType, reason: str, message: str) -> None:
    """Queue a Kubernetes Event about `body`; kopf posts it in the background and retries."""
    kopf.event(body, type=event_type, reason=reason, message=message)
