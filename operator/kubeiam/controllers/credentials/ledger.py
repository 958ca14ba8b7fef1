"""The account's ledger of active slots: where the active limit is enforced.

The ledger is a list in the account's status (`activeCredentials`), written by compare-and-swap
on the account's resourceVersion and retried on conflict, so concurrent writers (two replicas,
two handlers of one process) never admit more than the limit. `settle` releases the ended and
admits the oldest waiting (domain/limit.py decides who); it returns whom it admitted and issues
nobody: the caller (reconcile.py) does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from kubeiam.controllers.credentials.state import AccountKey, runtime
from kubeiam.domain import credentials as rules
from kubeiam.domain import upkeep
from kubeiam.domain.limit import LedgerEntry, plan_admission
from kubeiam.kube import api, faults
from kubeiam.kube.resources import SERVICE_ACCOUNTS
from kubeiam.settings import get_settings

_LEDGER_ATTEMPTS = 20


@dataclass(frozen=True)
class Settlement:
    """The ledger after a settle: who was admitted just now, who holds a slot, and the account
    as last read or written (None: the account does not exist)."""

    admitted: tuple[LedgerEntry, ...] = ()
    ledger: tuple[LedgerEntry, ...] = ()
    account: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def holders(self) -> set[str]:
        return {entry.uid for entry in self.ledger}


async def settle(
    key: AccountKey,
    *,
    ended: Iterable[str] = (),
    account: Mapping[str, Any] | None = None,
    caller: str | None = None,
) -> Settlement:
    """Bring the account's ledger up to date: release ended holders, admit the oldest waiting.
    `account`, if given, was read a moment ago (a stale one costs a re-read, never a wrong
    write: the write is a compare-and-swap). `caller` is the uid of the credential whose
    reconcile asks, from the event that fed the index: no fresher read of it is needed."""
    if not key[1]:
        return Settlement()
    async with runtime.lock(key):
        return await _update(key, set(ended), account, caller)


async def _update(
    key: AccountKey, ended: set[str], given: Mapping[str, Any] | None, caller: str | None
) -> Settlement:
    namespace, account_name = key
    limit = get_settings().credentials.max_active_credentials
    for attempt in range(_LEDGER_ATTEMPTS):
        if attempt == 0 and given is not None:
            account: dict[str, Any] | None = dict(given)
        else:
            account = await api.get_account(namespace, account_name)
        if account is None:
            return Settlement()
        status = account.get("status") or {}
        ledger = [
            LedgerEntry(entry["name"], entry["uid"])
            for entry in status.get("activeCredentials") or []
        ]
        views = {view.uid: view for view in runtime.views(key)}
        gone = ended | {uid for uid, view in views.items() if view.state in rules.TERMINAL}
        gone |= await _confirm_ended(
            [e for e in ledger if e.uid not in views and e.uid not in gone], namespace
        )
        disabled = bool((account.get("spec") or {}).get("disabled"))
        waiting = upkeep.contenders(views.values(), gone=gone, account_disabled=disabled)
        # Credentials still Active for an earlier account of this name are ended by
        # triggers.account_changed; until then they hold back admission, so the name never has
        # more than `limit` Active. They never enter this account's ledger.
        room = upkeep.room_beside_replaced(
            views.values(), gone=gone, account_uid=account["metadata"]["uid"], limit=limit
        )
        plan = plan_admission(ledger, waiting=waiting, ended=gone, limit=room)
        # The index may lag: a candidate it shows waiting may have ended meanwhile. Ask the
        # API server about each one about to be admitted, and plan again without the ended;
        # not about the caller, whose body is the event the index holds. Were it ended a
        # moment ago, it would hold a slot until that event releases it, never one too many.
        while plan.admitted and (
            stale := await _confirm_ended([e for e in plan.admitted if e.uid != caller], namespace)
        ):
            gone |= stale
            waiting = [c for c in waiting if c.uid not in gone]
            plan = plan_admission(ledger, waiting=waiting, ended=gone, limit=room)
        count = len(plan.ledger)
        if not plan.changed and status.get("activeCredentialCount") == count:
            return Settlement((), plan.ledger, account)
        try:
            written = await api.patch_status(
                SERVICE_ACCOUNTS,
                namespace,
                account_name,
                account["metadata"]["resourceVersion"],
                {
                    "activeCredentials": [entry.as_dict() for entry in plan.ledger],
                    "activeCredentialCount": count,
                },
            )
        except api.Gone:
            return Settlement()
        except api.Conflict:
            # The account read (or given) was stale: read it again at once the first time.
            if attempt:
                await asyncio.sleep(min(0.05 * attempt, 0.5))
            continue
        if plan.admitted:
            faults.crash_point("after-admission")
        return Settlement(plan.admitted, plan.ledger, written)
    raise kopf.TemporaryError("The account's ledger kept changing; trying again.", delay=1)


async def _confirm_ended(entries: list[LedgerEntry], namespace: str) -> set[str]:
    """Ledger entries this process has not seen: ended only if the API server says so."""
    confirmed = set()
    for entry in entries:
        body = await api.get_credential(namespace, entry.name)
        if (
            body is None
            or body["metadata"]["uid"] != entry.uid
            or (body.get("status") or {}).get("state") in rules.TERMINAL
        ):
            confirmed.add(entry.uid)
    return confirmed
