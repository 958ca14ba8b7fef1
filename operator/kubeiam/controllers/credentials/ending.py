"""How a credential ends (expiry, revocation, failure, deletion) and what follows: its slot is
freed and its Secret goes as its deletion policy says.

The end is recorded first, so the slot is certainly no longer used before anyone else gets it.
The credentials the freed slot admits are returned to the caller, which issues them.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from kubeiam.controllers.credentials import ledger
from kubeiam.controllers.credentials.state import now, runtime
from kubeiam.controllers.credentials.views import issued_of
from kubeiam.domain import credentials as rules
from kubeiam.domain import upkeep
from kubeiam.domain.conditions import Reason
from kubeiam.domain.credentials import State
from kubeiam.kube import events, metrics, status
from kubeiam.kube.resources import CREDENTIALS, GROUP, VERSION
from kubeiam.kube.secrets import Issued, delete_owned
from kubeiam.settings import get_settings

EXPIRY_LATENESS_SECONDS = metrics.histogram(
    "kubeiam_credential_expiry_lateness_seconds",
    "From a credential's expiry to its status saying Expired.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600),
)


async def end(
    body: Mapping[str, Any],
    state: State,
    reason: Reason,
    message: str,
    *,
    expired_at: datetime.datetime | None = None,
) -> ledger.Settlement:
    """Record the end, then clean up; returns the ledger as the freed slot left it."""
    metadata = body["metadata"]
    desired = rules.ended_status(
        body.get("status") or {},
        generation=int(metadata.get("generation", 1)),
        created_at=metadata["creationTimestamp"],
        state=state,
        reason=reason,
        message=message,
        now=now(),
    )
    written = await status.write(CREDENTIALS, body, desired)
    if state is State.EXPIRED and expired_at is not None:
        EXPIRY_LATENESS_SECONDS.observe(max(0.0, (now() - expired_at).total_seconds()))
    events.post(written, "Warning" if state is State.FAILED else "Normal", str(reason), message)
    return await finish(written, just_ended=True, read_secret=True)


async def finish(
    body: Mapping[str, Any], *, just_ended: bool, read_secret: bool
) -> ledger.Settlement:
    """Idempotent clean-up of an ended credential: free its slot, apply the deletion policy;
    returns the ledger as the freed slot left it (whom it admitted is the caller's to issue).

    A credential that ended long ago is looked up in the ledger index first, and its Secret
    left to the audit without `read_secret`, so that a restart over many of them costs no
    burst of API calls.
    """
    metadata = body["metadata"]
    spec = body.get("spec") or {}
    current = body.get("status") or {}
    uid = metadata["uid"]
    key = (metadata["namespace"], spec.get("serviceAccountName", ""))
    settlement = ledger.Settlement()
    if just_ended or runtime.may_hold_slot(key, uid):
        settlement = await ledger.settle(key, ended={uid})
    default = get_settings().credentials.secret_deletion_policy
    if upkeep.deletion_policy(spec, current, default) == "Delete" and (just_ended or read_secret):
        await remove_secret(metadata["name"], issued_of(body))
    return settlement


async def remove_secret(credential: str, issued: Issued) -> None:
    """Delete an ended credential's own Secret, if it is still there and provably the one
    kube-iam wrote, and say so."""
    namespace, uid, secret_name = issued.namespace, issued.credential_uid, issued.name
    removed = await delete_owned(issued, runtime.proof_keys())
    # Seen to: the audit need not look at this credential's Secret again.
    runtime.cleaned.add(uid)
    if removed:
        events.post(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "ServiceAccountCredential",
                "metadata": {"namespace": namespace, "name": credential, "uid": uid},
            },
            "Normal",
            "SecretRemoved",
            f"Deleted Secret {secret_name!r}, as secretDeletionPolicy Delete says.",
        )
