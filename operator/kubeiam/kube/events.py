"""Events a person reads in `kubectl describe`: one place that posts them, never with secrets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, cast

import kopf

EventType = Literal["Normal", "Warning"]


def post(body: Mapping[str, Any], event_type: EventType, reason: str, message: str) -> None:
    """Queue a Kubernetes Event about `body`; kopf posts it in the background and retries.

    kopf reads only the object's reference (apiVersion, kind, metadata) from `body`.
    """
    kopf.event(cast(kopf.Body, body), type=event_type, reason=reason, message=message)
