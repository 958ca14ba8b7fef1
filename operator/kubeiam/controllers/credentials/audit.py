"""Checking that issued Secrets are still there and still the ones kube-iam wrote.

The operator does not watch Secrets (docs/install.md says why): an issued credential's Ready
condition follows its Secret when it is reconciled, and the paced audit (kube/audit.py, driven
by state.runtime) looks at every Active credential's Secret with one metadata-only GET. A Secret
deleted is reported; one deleted and made again by someone else (another UID, no proof) is
reported as replaced, and never trusted or touched. At rest the audit keeps within the budget
the settings give it (domain/audit_pace.py); it hurries after a start, a credential's deletion
and each finding, when Secrets are likeliest to have gone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from kubeiam.controllers.credentials import ending, expiry
from kubeiam.controllers.credentials.state import now, runtime
from kubeiam.controllers.credentials.views import IssuedSecret, issued_of, reported, view_of
from kubeiam.domain import credentials as rules
from kubeiam.domain import secret_proof
from kubeiam.domain.conditions import Reason
from kubeiam.kube import api, events, status
from kubeiam.kube.resources import CREDENTIALS
from kubeiam.kube.secrets import secret_state
from kubeiam.settings import get_settings

# What the Ready condition reports for each state of the Secret an issued credential has.
REPORTS: dict[secret_proof.IssuedState, str | None] = {
    "present": None,
    "absent": Reason.SECRET_DELETED,
    "replaced": Reason.SECRET_REPLACED,
}
_FOUND = {report: found for found, report in REPORTS.items()}


def pace_from_settings() -> None:
    """The audit's pace at rest, from KUBEIAM_SECRET_AUDIT_*."""
    settings = get_settings().secret_audit
    runtime.audit.rest(
        per_minute=settings.rest_rate, pass_seconds=settings.rest_pass.total_seconds()
    )


def hurry() -> None:
    """A credential was deleted: whoever deletes may have deleted Secrets too, so every Secret is
    checked once soon (what the API server does not tell the operator)."""
    runtime.audit.hurry()


async def keep_active(body: Mapping[str, Any], *, read_secret: bool) -> None:
    """An issued credential: its Ready condition follows whether its Secret is still the one
    kube-iam wrote (absent and replaced Secrets are reported, never re-created or touched).
    Without `read_secret` the Secret is taken to be as the status says (the audit checks soon)."""
    metadata = body["metadata"]
    current = body.get("status") or {}
    generation = int(metadata.get("generation", 1))
    secret_name = current.get("secretName", "")
    was = reported(current)
    if read_secret:
        found = await secret_state(issued_of(body), runtime.proof_keys())
    else:
        found = _FOUND[was]
    desired = rules.secret_status(current, found, generation=generation, now=now())
    written = await status.write(CREDENTIALS, body, desired)
    now_reported = REPORTS[found]
    if now_reported is not None and now_reported != was:
        message = (
            f"Secret {secret_name!r} was deleted; it is not re-created."
            if found == "absent"
            else f"Secret {secret_name!r} was replaced by one kube-iam did not write; it is "
            "not trusted or touched."
        )
        events.post(written, "Warning", str(now_reported), message)
    expiry.track(view_of(written))


async def audit_secret(
    target: IssuedSecret, reconcile: Callable[[Mapping[str, Any]], Awaitable[None]]
) -> None:
    """One metadata GET: is the Secret where (and what) the credential's condition says? If
    not, `reconcile` the credential, which says so. An ended credential's Secret that its policy
    deletes and that is still there (and still ours) is deleted."""
    if target.ended:
        if target.uid not in runtime.cleaned:
            await ending.remove_secret(target.credential, target.issued())
        return
    found = await secret_state(target.issued(), runtime.proof_keys())
    if REPORTS[found] == target.reported:
        return
    body = await api.get_credential(target.namespace, target.credential)
    if body is not None and body["metadata"]["uid"] == target.uid:
        await reconcile(body)
        # One finding often comes with others (a namespace emptied, a rotation gone wrong).
        # Only once it is reported: one that cannot be must not keep the audit in a hurry.
        runtime.audit.hurry()
