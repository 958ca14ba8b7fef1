"""What the bench sees through its own watches: when each credential reached each state, when
each Secret appeared. Secrets are watched as metadata only, so no secret reaches the bench."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.client import CREDENTIALS, PARTIAL_METADATA, Api, custom_path, secret_path

POLL = 0.05


def _ready(status: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def parse_time(value: str) -> float:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@dataclass
class Credential:
    """One credential as the watch showed it, with the first instant of each fact."""

    account: str = ""
    state: str = ""
    ready: bool = False
    expires_at: float | None = None
    first_state: dict[str, float] = field(default_factory=dict)  # monotonic
    first_state_wall: dict[str, float] = field(default_factory=dict)  # time.time()
    ready_at: float | None = None  # monotonic, first Ready=True with Active
    secret_at: float | None = None  # monotonic, the Secret's ADDED


@dataclass
class Observer:
    """Watches one namespace's credentials and Secrets until stopped."""

    api: Api
    namespace: str
    credentials: dict[str, Credential] = field(default_factory=dict)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def __aenter__(self) -> Observer:
        self._tasks = [
            asyncio.create_task(self._watch_credentials()),
            asyncio.create_task(self._watch_secrets()),
        ]
        return self

    async def __aexit__(self, *_: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _get(self, name: str) -> Credential:
        return self.credentials.setdefault(name, Credential())

    async def _watch_credentials(self) -> None:
        async for event in self.api.watch(custom_path(self.namespace, CREDENTIALS)):
            now, wall = time.monotonic(), time.time()
            obj = event["object"]
            seen = self._get(obj["metadata"]["name"])
            status = obj.get("status") or {}
            seen.account = (obj.get("spec") or {}).get("serviceAccountName", "")
            seen.state = status.get("state") or ""
            seen.ready = _ready(status)
            if status.get("expiresAt"):
                seen.expires_at = parse_time(status["expiresAt"])
            if seen.state and seen.state not in seen.first_state:
                seen.first_state[seen.state] = now
                seen.first_state_wall[seen.state] = wall
            if seen.state == "Active" and seen.ready and seen.ready_at is None:
                seen.ready_at = now

    async def _watch_secrets(self) -> None:
        path = secret_path(self.namespace)
        async for event in self.api.watch(path, accept=PARTIAL_METADATA):
            if event["type"] != "ADDED":
                continue
            owners = event["object"]["metadata"].get("ownerReferences") or []
            for owner in owners:
                if owner.get("kind") == "ServiceAccountCredential":
                    seen = self._get(owner["name"])
                    if seen.secret_at is None:
                        seen.secret_at = time.monotonic()

    def issued_at(self, name: str) -> float | None:
        """When the credential was Active, Ready and its Secret present, whichever came last."""
        seen = self.credentials.get(name)
        if seen is None or seen.ready_at is None or seen.secret_at is None:
            return None
        return max(seen.ready_at, seen.secret_at)

    async def wait_issued(self, name: str, *, within: float) -> float:
        """Until the credential is issued; when that was seen."""
        await self.wait(lambda: self.issued_at(name) is not None, within=within, what=name)
        issued = self.issued_at(name)
        assert issued is not None
        return issued

    async def wait(
        self, done: Callable[[], bool], *, within: float, what: str, poll: float = POLL
    ) -> None:
        """Poll `done` (cheap checks often, costly ones over thousands less often)."""
        deadline = time.monotonic() + within
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {within:.0f}s waiting for {what}")
            await asyncio.sleep(poll)
