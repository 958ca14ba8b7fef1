"""The one place that schedules a credential's expiry and its warning, and posts the warning.

Scheduling is in memory (kube/scheduler.py), fed by the credentials index at every event and at
start, so no timer runs per object and no object is polled. What runs when a key is due is
`reconcile.on_due`, which the handlers hand to the runtime at start.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from kubeiam.controllers.credentials.state import ScheduleKey, now, runtime
from kubeiam.domain import credentials as rules
from kubeiam.domain import upkeep
from kubeiam.domain.conditions import Reason
from kubeiam.kube import events, status
from kubeiam.kube.resources import CREDENTIALS
from kubeiam.settings import get_settings


def _keys(namespace: str, name: str, uid: str) -> tuple[ScheduleKey, ScheduleKey]:
    return ("expire", namespace, name, uid), ("warn", namespace, name, uid)


def track(view: rules.CredentialView) -> None:
    """Schedule (or cancel) an issued credential's expiry and warning as its status says."""
    plan = upkeep.expiry_schedule(
        view, lead=get_settings().credentials.expiry_warning_lead, now=now()
    )
    if plan is None:
        return
    for key, when in zip(
        _keys(view.namespace, view.name, view.uid), (plan.expire_at, plan.warn_at), strict=True
    ):
        if when is None:
            runtime.scheduler.cancel(key)
        else:
            runtime.scheduler.schedule(key, when)


def track_waiting(namespace: str, name: str, uid: str, expires_at: datetime.datetime) -> None:
    """A credential that waits for a slot still expires on time, without ever being issued."""
    runtime.scheduler.schedule(_keys(namespace, name, uid)[0], expires_at)


async def warn(body: Mapping[str, Any]) -> None:
    """The warning is due: record ExpiringSoon on an Active credential, and post the event."""
    current = body.get("status") or {}
    if current.get("state") != rules.State.ACTIVE or rules.has_condition(
        current, rules.EXPIRING_SOON
    ):
        return
    desired = rules.expiring_soon(
        current,
        generation=int(body["metadata"].get("generation", 1)),
        lead=get_settings().credentials.expiry_warning_lead,
        now=now(),
    )
    post_warning(await status.write(CREDENTIALS, body, desired))


def post_warning(body: Mapping[str, Any]) -> None:
    expires_at = (body.get("status") or {}).get("expiresAt")
    events.post(
        body,
        "Warning",
        str(Reason.EXPIRING_SOON),
        f"Expires at {expires_at}; create a new credential and rotate to it.",
    )
