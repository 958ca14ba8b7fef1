"""Checking that issued Secrets are still there and still the credential's own.

The operator does not watch Secrets (docs/install.md says why): an issued credential's Ready
condition follows its Secret when it is reconciled, and the paced audit (kube/audit.py, driven
by state.runtime) looks at every Active credential's Secret with one metadata-only GET.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from kubeiam.controllers.credentials import ending, expiry
from kubeiam.controllers.credentials.state import IssuedSecret, now, runtime, view_of
from kubeiam.domain import credentials as rules
from kubeiam.domain.conditions import READY, Reason
from kubeiam.kube import api, events, status
from kubeiam.kube.resources import CREDENTIALS
from kubeiam.kube.secrets import secret_state


async def keep_active(body: Mapping[str, Any], *, read_secret: bool) -> None:
    """An issued credential: its Ready condition follows whether its Secret is still there.
    Without `read_secret` the Secret is taken to be as the status says (the audit checks soon)."""
    metadata = body["metadata"]
    current = body.get("status") or {}
    generation = int(metadata.get("generation", 1))
    if read_secret:
        secret_name = current.get("secretName", "")
        state = await secret_state(metadata["namespace"], secret_name, metadata["uid"])
        present = state == "present"
    else:
        present = rules.ready_reason(current) != Reason.SECRET_DELETED
    if present:
        desired = rules.issued_ready_status(current, generation=generation, now=now())
    else:
        desired = rules.secret_deleted_status(current, generation=generation, now=now())
    was_ready = rules.has_condition(current, READY)
    written = await status.write(CREDENTIALS, body, desired)
    if not present and was_ready:
        events.post(
            written,
            "Warning",
            str(Reason.SECRET_DELETED),
            f"Secret {current.get('secretName')!r} was deleted; it is not re-created.",
        )
    expiry.track(view_of(written))


async def audit_secret(
    target: IssuedSecret, reconcile: Callable[[Mapping[str, Any]], Awaitable[None]]
) -> None:
    """One metadata GET: is the Secret where the credential's condition says it is? If not,
    `reconcile` the credential, which says so. An ended credential's Secret that its policy
    deletes and that is still there is deleted."""
    if target.ended:
        if target.uid not in runtime.cleaned:
            await ending.remove_secret(
                target.namespace, target.credential, target.uid, target.secret_name
            )
        return
    present = await secret_state(target.namespace, target.secret_name, target.uid) == "present"
    if present != target.reported_deleted:
        return
    body = await api.get_credential(target.namespace, target.credential)
    if body is not None and body["metadata"]["uid"] == target.uid:
        await reconcile(body)
