"""The one retry path for a reconcile that lost a compare-and-swap: read the object again and
decide again."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import kopf

from kubeiam.kube import api

Body = Mapping[str, Any]


async def until_settled(
    body: Body,
    step: Callable[[Body], Awaitable[None]],
    read: Callable[[str, str], Awaitable[dict[str, Any] | None]],
    *,
    what: str,
    attempts: int = 5,
    read_first: bool = False,
) -> None:
    """Run `step` on `body`; on `Conflict` (someone else wrote first) run it again on a fresh
    read, up to `attempts` times. With `read_first`, `body` is known to be stale already (another
    reconcile of the object ran meanwhile): the first attempt reads it again too. The object
    deleted, or replaced by another of the same name, ends the work: nothing is left to write."""
    metadata = body["metadata"]
    for attempt in range(attempts):
        if attempt or read_first:
            fresh = await read(metadata["namespace"], metadata["name"])
            if fresh is None or fresh["metadata"]["uid"] != metadata["uid"]:
                return
            body = fresh
        try:
            await step(body)
            return
        except api.Gone:
            return
        except api.Conflict:
            continue
    raise kopf.TemporaryError(f"The {what} kept changing while it was handled.", delay=1)
