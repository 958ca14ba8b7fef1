"""Watch events without `metadata.managedFields`, dropped before kopf keeps the objects.

The API server sends every object with the field managers' record of who set which field:
half of a credential's parsed body (about 6.5 of 13 KB). Neither kopf nor kube-iam reads it,
yet kopf holds every listed body until all objects are indexed, so at a restart over N objects
all N are alive at once, and the heap keeps that peak afterwards. The objects kopf hands to
handlers are the same but for this field; kube-iam's own writes never send it back (merge
patches of status, and Secrets it creates).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import Any

from kopf._cogs.clients import watching
from kopf._core.reactor import queueing

from kubeiam.kube import kopf_toggles

# The one place kopf starts a watch: the swap works only if kopf looks it up in its module.
CALL_SITE = "watching.infinite_watch("
KOPF_INFINITE_WATCH = watching.infinite_watch


def slim(raw_event: Any) -> Any:
    """The event with its object's managedFields removed (kopf's bookmarks pass as they are)."""
    if isinstance(raw_event, dict):
        body = raw_event.get("object")
        metadata = body.get("metadata") if isinstance(body, dict) else None
        if isinstance(metadata, dict):
            metadata.pop("managedFields", None)
    return raw_event


async def slim_watch(**kwargs: Any) -> AsyncIterator[Any]:
    async for raw_event in KOPF_INFINITE_WATCH(**kwargs):
        yield slim(raw_event)


def install(*, enabled: bool = True) -> None:
    """Make kopf's watchers read slim events; refuse (RuntimeError) against another kopf."""
    if not enabled:
        watching.infinite_watch = KOPF_INFINITE_WATCH
        return
    found = kopf_toggles.version_mismatch()
    if CALL_SITE not in inspect.getsource(queueing):
        found = f"{found}; " if found else ""
        found += f"{queueing.__name__} no longer calls {CALL_SITE}...)"
    if found:
        raise RuntimeError(
            f"kube-iam's watch filter (kube/kopf_bodies.py) was written for kopf "
            f"{kopf_toggles.KOPF_VERSION}: {found}. Check that kopf's watcher still calls "
            "watching.infinite_watch, or turn it off with KUBEIAM_SLIM_WATCH_EVENTS=false."
        )
    watching.infinite_watch = slim_watch
