"""Watch events without `metadata.managedFields`, dropped before kopf keeps the objects.

The API server sends every object with the field managers' record of who set which field:
half of a credential's parsed body (about 6.5 of 13 KB). Neither kopf nor kube-iam reads it,
yet kopf holds every listed body until all objects are indexed, so at a restart over N objects
all N are alive at once, and the heap keeps that peak afterwards. The objects kopf hands to
handlers are the same but for this field; kube-iam's own writes never send it back (merge
patches of status, and Secrets it creates).

The texts that thousands of objects repeat (a namespace, an account, a condition's reason and
message, a finalizer) are also made one copy shared by every body: a JSON parser gives each
body its own, and a restart holds them all at once.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, MutableMapping
from sys import intern
from typing import Any

from kopf._cogs.clients import fetching, watching
from kopf._core.reactor import queueing

from kubeiam.kube import indices, kopf_toggles

# The one place kopf starts a watch: the swap works only if kopf looks it up in its module.
CALL_SITE = "watching.infinite_watch("
KOPF_INFINITE_WATCH = watching.infinite_watch
# And where its watch lists a kind: the indices must know a listing began, in case it breaks
# off before its end (kopf then lists again, with no end marker for the first).
LISTING_CALL_SITE = "fetching.fetch_objs("
KOPF_FETCH_OBJS = fetching.fetch_objs


# Fields whose texts many objects repeat: accounts have several credentials and trusts, every
# settled credential the same conditions. Never the object's own name, uid, hash or id.
METADATA_SHARED = ("namespace",)
# The owner is the account, shared by its credentials and trusts.
OWNER_SHARED = ("apiVersion", "kind", "name", "uid")
SPEC_SHARED = ("serviceAccountName",)
STATUS_SHARED = ("state", "clientId", "createdBy", "createdAt", "expiresAt")
CONDITION_SHARED = ("type", "status", "reason", "message", "lastTransitionTime")


def slim(raw_event: Any) -> Any:
    """The event with its object's managedFields removed and its repeated texts shared (kopf's
    bookmarks pass as they are)."""
    if isinstance(raw_event, dict):
        body = raw_event.get("object")
        metadata = body.get("metadata") if isinstance(body, dict) else None
        if isinstance(body, dict) and isinstance(metadata, dict):
            metadata.pop("managedFields", None)
            _share_texts(body, metadata)
    return raw_event


def _share_texts(body: dict[str, Any], metadata: dict[str, Any]) -> None:
    _share(metadata, METADATA_SHARED)
    _share_each(metadata.get("ownerReferences"), OWNER_SHARED)
    _share_values(metadata.get("labels"))
    _share_items(metadata, "finalizers")
    spec, status = body.get("spec"), body.get("status")
    if isinstance(spec, dict):
        _share(spec, SPEC_SHARED)
    if isinstance(status, dict):
        _share(status, STATUS_SHARED)
        _share_items(status, "effectiveRoles")
        _share_each(status.get("conditions"), CONDITION_SHARED)


def _share(mapping: MutableMapping[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        value = mapping.get(key)
        if isinstance(value, str):
            mapping[key] = intern(value)


def _share_each(items: Any, keys: tuple[str, ...]) -> None:
    if isinstance(items, list):
        for item in items:
            if isinstance(item, dict):
                _share(item, keys)


def _share_values(mapping: Any) -> None:
    if isinstance(mapping, dict):
        _share(mapping, tuple(mapping))


def _share_items(mapping: MutableMapping[str, Any], key: str) -> None:
    items = mapping.get(key)
    if isinstance(items, list):
        for i, item in enumerate(items):
            if isinstance(item, str):
                items[i] = intern(item)


def watch_with(*, slimmed: bool) -> Callable[..., AsyncIterator[Any]]:
    """kopf's watch, whose events feed kube-iam's indices (kube/indices.py) first: an indexed
    kind is prefilled before kopf sees any of it. Slimmed, the events are slim() too."""

    async def watch(**kwargs: Any) -> AsyncIterator[Any]:
        resource, namespace = kwargs["resource"], kwargs.get("namespace")
        indexed = indices.INDICES.indexes(resource)
        scope = (resource.plural, namespace)
        if indexed:
            indices.INDICES.begin(scope)
            await indices.INDICES.prefill(scope, settings=kwargs["settings"], resource=resource)
        async for raw_event in KOPF_INFINITE_WATCH(**kwargs):
            if slimmed:
                raw_event = slim(raw_event)
            if indexed:
                indices.INDICES.feed(scope, raw_event)
            yield raw_event

    return watch


async def fetch_objs(**kwargs: Any) -> AsyncIterator[Any]:
    """kopf's listing, telling the indices first that a listing of the kind begins."""
    resource = kwargs["resource"]
    if indices.INDICES.indexes(resource):
        indices.INDICES.listing_starts((resource.plural, kwargs.get("namespace")))
    async for chunk in KOPF_FETCH_OBJS(**kwargs):
        yield chunk


def install(*, enabled: bool = True) -> None:
    """Make kopf's watchers feed kube-iam's indices, and read slim events unless `enabled` is
    false; refuse (RuntimeError) against another kopf."""
    found = kopf_toggles.version_mismatch()
    for module, call in ((queueing, CALL_SITE), (watching, LISTING_CALL_SITE)):
        if call not in inspect.getsource(module):
            found = f"{found}; " if found else ""
            found += f"{module.__name__} no longer calls {call}...)"
    if found:
        raise RuntimeError(
            f"kube-iam's watch filter (kube/kopf_bodies.py) was written for kopf "
            f"{kopf_toggles.KOPF_VERSION}: {found}. Check that kopf's watcher still calls "
            "watching.infinite_watch and lists through fetching.fetch_objs."
        )
    watching.infinite_watch = watch_with(slimmed=enabled)
    fetching.fetch_objs = fetch_objs
