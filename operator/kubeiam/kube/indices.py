"""kube-iam's in-memory indices, fed from the watch before kopf sees an event.

Why not kopf's own (`kopf.index`): with any index, kopf keeps a worker per listed object, with its
body, its patch and three loggers, waiting until every object of every indexed kind is indexed,
so that no handler sees a partial index. At a restart over N objects all N are alive at once, and
the process keeps that peak (docs/performance.md, "Memory"): about 16 KB an object, where what
stays alive afterwards is under 5.

The same guarantee, without the peak: before kopf watches an indexed kind, the kind is listed
once by itself, a page at a time (the prefill); the index functions see each object as its page
arrives and the page is dropped. kopf starts on an indexed kind only once every indexed kind is
prefilled, so no handler sees a partial index; from then on every event (kopf's own listing
included) updates the indices before kopf processes it, so a handler finds its event's object
already indexed, as kopf's own indices promise. kopf's workers then have nothing to wait for:
each handles its object and ends. A listing (kopf's, at start or after "410 Gone") drops the
objects it no longer holds.

An index is what `kopf.Index` is to a handler: a mapping from a key to the values the objects
stored under it, kept by object uid.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Hashable, Iterator, Mapping
from typing import Any, Generic, TypeVar, cast

import aiohttp
import kopf
from kopf._cogs.clients import errors, fetching, watching
from kopf._cogs.structs import bodies, references

from kubeiam.kube.resources import GROUP

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
IndexFn = Callable[[kopf.Body], Mapping[K, V]]
# A watcher's kind (its plural) and namespace (None cluster-wide).
Scope = tuple[str, str | None]

# Seconds between attempts to list a kind again after the API server refused or failed.
RETRY_SECONDS = 5.0


class Index(Mapping[K, Collection[V]], Generic[K, V]):
    """Values by key, each stored by the uid of the object it came from (`fn` maps an object to
    its keys and values; an empty mapping stores nothing for it)."""

    __slots__ = ("_keys", "_stores", "fn", "name")

    def __init__(self, name: str, fn: IndexFn[K, V]) -> None:
        self.name, self.fn = name, fn
        self._stores: dict[K, dict[str, V]] = {}
        # The keys each object is stored under: nearly always one, so a tuple, not a set.
        self._keys: dict[str, tuple[K, ...]] = {}

    def __getitem__(self, key: K) -> Collection[V]:
        return self._stores[key].values()

    def __iter__(self) -> Iterator[K]:
        return iter(self._stores)

    def __len__(self) -> int:
        return len(self._stores)

    def replace(self, uid: str, body: kopf.Body) -> None:
        """Store what `fn` makes of the object now, instead of what it made before."""
        stored = self.fn(body)
        for key in self._keys.pop(uid, ()):
            if key not in stored:
                self._remove(key, uid)
        for key, value in stored.items():
            self._stores.setdefault(key, {})[uid] = value
        if stored:
            self._keys[uid] = tuple(stored)

    def discard(self, uid: str) -> None:
        for key in self._keys.pop(uid, ()):
            self._remove(key, uid)

    def _remove(self, key: K, uid: str) -> None:
        store = self._stores.get(key)
        if store is not None:
            store.pop(uid, None)
            if not store:
                del self._stores[key]


class Indices:
    """Every index by the plural of the kube-iam kind it reads, and the start's prefill."""

    def __init__(self) -> None:
        self.by_plural: dict[str, list[Index[Any, Any]]] = {}
        # Every object of a kind, by watcher (kind and namespace): what a listing can drop.
        self._known: dict[Scope, set[str]] = {}
        # The uids a listing under way has shown so far.
        self._listing: dict[Scope, set[str]] = {}
        # The watchers listing before kopf sees their kind, and whether none is: every watcher
        # waits until all that began with it are prefilled (a later one, until those with it).
        self._prefilling: set[Scope] = set()
        self._quiet: asyncio.Event | None = None
        self._opened = False

    def index(self, plural: str) -> Callable[[IndexFn[K, V]], Index[K, V]]:
        """A decorator: `fn` becomes an index of the kind `plural`, by its own name."""

        def register(fn: IndexFn[K, V]) -> Index[K, V]:
            made: Index[K, V] = Index(fn.__name__, fn)
            self.by_plural.setdefault(plural, []).append(made)
            return made

        return register

    def by_name(self) -> dict[str, Index[Any, Any]]:
        return {made.name: made for found in self.by_plural.values() for made in found}

    def indexes(self, resource: Any) -> bool:
        return bool(resource.group == GROUP and resource.plural in self.by_plural)

    @property
    def ready(self) -> bool:
        """Whether handlers have been let in: every watcher that began has been prefilled."""
        return self._opened and not self._prefilling

    def listing_starts(self, scope: Scope) -> None:
        """A listing of the kind begins (kopf's, or the prefill's): what an earlier one showed
        before it broke off counts no more."""
        if scope[0] in self.by_plural:
            self._listing[scope] = set()

    def feed(self, scope: Scope, raw_event: Any) -> None:
        """Update the kind's indices from one of kopf's watch events, before kopf sees it. The
        end of a listing drops the objects it did not show."""
        found = self.by_plural.get(scope[0])
        if found is None:
            return
        if raw_event is watching.Bookmark.LISTED:
            self._end_listing(scope)
            return
        raw_body = raw_event.get("object") if isinstance(raw_event, dict) else None
        uid = (raw_body.get("metadata") or {}).get("uid") if isinstance(raw_body, dict) else None
        if not isinstance(uid, str) or not isinstance(raw_body, dict):
            return
        known = self._known.setdefault(scope, set())
        if raw_event.get("type") == "DELETED":
            known.discard(uid)
            for made in found:
                made.discard(uid)
            return
        if raw_event.get("type") is None:  # listed
            self._listing.setdefault(scope, set()).add(uid)
        known.add(uid)
        body = kopf.Body(cast(bodies.RawBody, raw_body))
        for made in found:
            try:
                made.replace(uid, body)
            except Exception as error:  # one odd object must not stop the watch
                # Not indexed, as kopf leaves an object whose index handler failed; the object
                # is named, its contents are not (a status may say more than a log should).
                made.discard(uid)
                logger.error(
                    "%s could not index %s/%s: %s",
                    made.name,
                    body.metadata.namespace,
                    body.metadata.name,
                    type(error).__name__,
                )
                logger.debug("%s failed on %s", made.name, uid, exc_info=True)

    def _end_listing(self, scope: Scope) -> None:
        shown = self._listing.pop(scope, set())
        gone = self._known.get(scope, set()) - shown
        for made in self.by_plural.get(scope[0], []):
            for uid in gone:
                made.discard(uid)
        self._known[scope] = shown

    def begin(self, scope: Scope) -> None:
        """A watcher of an indexed kind starts: until its prefill is done, the watchers that
        began with it wait for it (kopf starts all it knows of at once)."""
        self._prefilling.add(scope)
        self._signal().clear()

    async def prefill(
        self, scope: Scope, *, settings: kopf.OperatorSettings, resource: Any
    ) -> None:
        """List the kind a page at a time into its indices, then wait until no watcher is still
        prefilling. A watcher that ends meanwhile (kopf stops one for a namespace or a kind
        that went away) holds no one back."""
        try:
            while True:
                try:
                    await self._list_into(scope, settings=settings, resource=resource)
                    break
                except (aiohttp.ClientError, errors.APIError, TimeoutError) as error:
                    logger.warning(
                        "Listing %s to fill the indices failed (%s); trying again in %.0f s.",
                        scope[0],
                        type(error).__name__,
                        RETRY_SECONDS,
                    )
                    await asyncio.sleep(RETRY_SECONDS)
        finally:
            self._done(scope)
        await self._signal().wait()

    def _done(self, scope: Scope) -> None:
        self._prefilling.discard(scope)
        if not self._prefilling:
            self._opened = True
            self._signal().set()

    async def _list_into(
        self, scope: Scope, *, settings: kopf.OperatorSettings, resource: Any
    ) -> None:
        self.listing_starts(scope)
        async for chunk, _ in fetching.fetch_objs(
            settings=settings,
            resource=resource,
            namespace=cast(references.NamespaceName | None, scope[1]),
            logger=logger,
        ):
            for raw_body in chunk:
                self.feed(scope, {"type": None, "object": raw_body})
            del chunk
        self._end_listing(scope)

    def _signal(self) -> asyncio.Event:
        if self._quiet is None:
            self._quiet = asyncio.Event()
        return self._quiet


# The operator's indices, registered by the controllers at import.
INDICES = Indices()
index = INDICES.index
