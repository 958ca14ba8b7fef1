"""Issuing an admitted credential: its Secret written once (kube/secrets.py) and the status that
records it; and the Pending status of a credential that is not issued yet.

The client secret exists only inside `write_once` and in the Secret: nothing here sees it.
"""

from __future__ import annotations

import datetime
import http
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from kubeiam.api import ServiceAccountCredential
from kubeiam.api.credential import DEFAULT_SECRET_KEYS
from kubeiam.controllers.credentials import expiry
from kubeiam.controllers.credentials.state import now, runtime
from kubeiam.controllers.credentials.views import view_of
from kubeiam.domain import credentials as rules
from kubeiam.domain import secret_proof
from kubeiam.domain.conditions import Reason, format_time, parse_time
from kubeiam.domain.credentials import State
from kubeiam.domain.lifetimes import format_duration
from kubeiam.domain.secret_format import credential_id
from kubeiam.kube import api, events, faults, metrics, status
from kubeiam.kube.resources import CREDENTIALS
from kubeiam.kube.secrets import SecretRequest, write_once
from kubeiam.settings import Settings

# How soon an admitted credential whose Secret the API server refused (a quota, a policy) tries
# again; its Ready condition says why meanwhile.
SECRET_RETRY = 10.0
# How soon issuance looks again at a Secret of its name that is on its way out.
BLOCKED_RETRY = 5.0

ISSUANCE_SECONDS = metrics.histogram(
    "kubeiam_credential_issuance_seconds",
    "From a credential's creation (creationTimestamp, whole seconds) to its Secret written "
    "and its status Active. waited: whether it was Pending first (no slot, account missing or "
    "disabled), which then counts in the time.",
    buckets=(0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 300, 3600, 86400),
    labels=["waited"],
)


@dataclass(frozen=True)
class Conflict:
    """The Secret's name is taken by a Secret that is not this credential's: it must end."""

    message: str


class SecretRefusedError(kopf.TemporaryError):
    """Retried by kopf after SECRET_RETRY; `status` labels it in the reconcile error metric."""

    def __init__(self, status: int) -> None:
        super().__init__(f"The API server refused the Secret (HTTP {status}).", delay=SECRET_RETRY)
        self.status = status


def _ca_bundle(settings: Settings) -> str | None:
    """The token endpoint's CA bundle, read afresh (a renewed file is picked up), if set."""
    path = settings.credentials.token_ca_file
    if path is None:
        return None
    try:
        return path.read_text()
    except OSError:
        raise kopf.TemporaryError(
            "KUBEIAM_TOKEN_CA_FILE cannot be read; the Secret waits for it.", delay=SECRET_RETRY
        ) from None


async def issue(
    body: Mapping[str, Any],
    credential: ServiceAccountCredential,
    account_body: Mapping[str, Any],
    expires_at: datetime.datetime,
    settings: Settings,
) -> Conflict | None:
    """Write the Secret once and record the issuance; a Conflict if the name is taken."""
    metadata = body["metadata"]
    namespace, name, uid = metadata["namespace"], metadata["name"], metadata["uid"]
    spec = credential.spec
    client_id = (account_body.get("status") or {}).get("clientId")
    if not client_id:
        raise kopf.TemporaryError("The account has no client id yet.", delay=1)
    template = spec.secret_template
    secret_name = spec.secret_name or name
    request = SecretRequest(
        namespace=namespace,
        name=secret_name,
        credential=name,
        credential_uid=uid,
        credential_id=credential_id(uid),
        account=spec.service_account_name,
        client_id=client_id,
        token_url=settings.tokens.token_url,
        expires_at=expires_at,
        keys=(
            template.keys.resolved() if template and template.keys else dict(DEFAULT_SECRET_KEYS)
        ),
        labels=(template.labels or {}) if template else {},
        annotations=(template.annotations or {}) if template else {},
        ca_bundle=_ca_bundle(settings),
    )
    try:
        outcome = await write_once(request, runtime.proof_keys())
    except api.Refused as refusal:
        if refusal.status >= 500 or refusal.status == http.HTTPStatus.TOO_MANY_REQUESTS:
            raise  # the API server's own trouble: retried with kopf's backoff, not reported
        message = rules.secret_refused_message(secret_name, _status_line(refusal), SECRET_RETRY)
        await write_pending(body, Reason.SECRET_REFUSED, message)
        raise SecretRefusedError(refusal.status) from None
    if isinstance(outcome, secret_proof.Leftover):
        # A Secret on its way out (a deleted credential's, held by a finalizer): wait for it, a
        # bounded time, then give up as on any Secret that is not ours.
        if not secret_proof.leftover_given_up(parse_time(metadata["creationTimestamp"]), now()):
            raise kopf.TemporaryError(
                f"Secret {secret_name!r} is in the way ({outcome.why}); waiting for it to go.",
                delay=BLOCKED_RETRY,
            )
        grace = format_duration(secret_proof.LEFTOVER_GRACE)
        outcome = secret_proof.Foreign(
            f"{outcome.why}, still {grace} after this credential was created"
        )
    if isinstance(outcome, secret_proof.Foreign):
        return Conflict(rules.secret_conflict_message(secret_name, outcome.why))
    faults.crash_point("after-secret-created")
    issuance = rules.Issuance(
        credential_id=request.credential_id,
        client_id=client_id,
        secret_name=secret_name,
        secret_hash=outcome.secret_hash,
        expires_at=expires_at,
        effective_roles=rules.effective_roles(
            (account_body.get("spec") or {}).get("roles") or [], spec.scoped_roles
        ),
        deletion_policy=str(
            spec.secret_deletion_policy or settings.credentials.secret_deletion_policy
        ),
        secret_uid=outcome.secret_uid,
        account_uid=account_body["metadata"]["uid"],
    )
    desired, warned = rules.issued_status(
        body.get("status") or {},
        generation=int(metadata.get("generation", 1)),
        created_at=metadata["creationTimestamp"],
        issuance=issuance,
        warning_lead=settings.credentials.expiry_warning_lead,
        now=now(),
    )
    written = await status.write(CREDENTIALS, body, desired)
    faults.crash_point("after-status-written")
    waited = (body.get("status") or {}).get("state") == State.PENDING
    waited_for = max(0.0, (now() - parse_time(metadata["creationTimestamp"])).total_seconds())
    ISSUANCE_SECONDS.labels(waited=str(waited).lower()).observe(waited_for)
    events.post(
        written,
        "Normal",
        str(Reason.ISSUED),
        f"Issued; the client secret is in Secret {secret_name!r}, expiring at "
        f"{format_time(expires_at)}.",
    )
    if warned:
        expiry.post_warning(written)
    expiry.track(view_of(written))
    return None


async def write_pending(body: Mapping[str, Any], reason: Reason, message: str) -> None:
    """Not issued (yet): say why, with an event when the reason changes."""
    metadata = body["metadata"]
    current = body.get("status") or {}
    desired = rules.pending_status(
        current,
        generation=int(metadata.get("generation", 1)),
        created_at=metadata["creationTimestamp"],
        reason=reason,
        message=message,
        now=now(),
    )
    previous_reason = rules.ready_reason(current)
    written = await status.write(CREDENTIALS, body, desired)
    if previous_reason != str(reason):
        events.post(written, "Normal", str(reason), message)


def _status_line(refusal: api.Refused) -> str:
    try:
        return f"HTTP {refusal.status} {http.HTTPStatus(refusal.status).phrase}"
    except ValueError:
        return f"HTTP {refusal.status}"
