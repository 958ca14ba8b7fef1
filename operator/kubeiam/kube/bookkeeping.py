"""Where kopf keeps its bookkeeping: in what the objects already say, so that it costs no write.

Why, with the figures: docs/decisions/0002-kopf-bookkeeping-in-observed-generation.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import kopf

# The stand-in for a spec kopf has not seen handled: any value unequal to every real spec.
_STALE_SPEC_KEY = "kubeiam.io/handled-generation"


# Written by earlier versions of kube-iam (kopf's stock storages): no handling is pending there.
LEGACY_KEYS = frozenset({"last-handled-configuration", "kopf-managed"})


def handling_state(body: Any, *, pending: bool = False) -> str:
    """'new', 'handled' or 'changed': what the object's own fields say of its last handling.

    `pending` says kopf has a handler of it still to finish (a retry): the object is then
    handled again even if its status says the spec was seen, so that kopf completes the retry
    and clears its record, as it did when it stored the essence only after every handler.
    """
    observed = (body.get("status") or {}).get("observedGeneration")
    if observed is None:
        return "new"
    generation = (body.get("metadata") or {}).get("generation")
    return "handled" if observed == generation and not pending else "changed"


class UnmarkedProgressStorage(kopf.AnnotationsProgressStorage):
    """kopf's progress annotations, without the marker that costs a write per new object."""

    def _store_marker(self, prefix: str, patch: kopf.Patch, body: kopf.Body) -> None:
        return None

    def pending(self, body: Any) -> bool:
        """Whether the object carries a progress record: a handler kopf has yet to finish."""
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        prefix = f"{self.prefix}/"
        return any(
            key.startswith(prefix) and key[len(prefix) :] not in LEGACY_KEYS for key in annotations
        )


class ObservedGenerationDiffBase(kopf.DiffBaseStorage):
    """The last-handled essence, as `status.observedGeneration` tells it; never written."""

    def __init__(self, progress: UnmarkedProgressStorage) -> None:
        super().__init__()
        self._progress = progress

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        state = handling_state(body, pending=self._progress.pending(body))
        if state == "new":
            return None
        essence = self.build(body=body)
        if state == "handled":
            return essence
        observed = body.get("status", {}).get("observedGeneration")
        return kopf.BodyEssence({**essence, "spec": {_STALE_SPEC_KEY: observed}})

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        """kopf's essence, built from only the parts of the body it keeps.

        kopf deep-copies the whole body, then drops its metadata (managedFields: half a
        credential) and status; it does so twice at every event of every object (fetch, then
        build), which a restart pays for all objects at once. Given a body without those, it
        builds the same essence (a unit property test compares the two)."""
        fields = list(extra_fields or ())
        if any(_path(field)[:1] != ("spec",) for field in fields):
            return super().build(body=body, extra_fields=fields)
        metadata = body.get("metadata") or {}
        kept = {key: value for key, value in body.items() if key not in ("metadata", "status")}
        kept["metadata"] = {
            key: metadata[key] for key in ("labels", "annotations") if key in metadata
        }
        return super().build(body=kopf.Body(cast(kopf.RawBody, kept)), extra_fields=fields)

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        # The handlers' own status write (with observedGeneration) is the record.
        return None


def _path(field: Any) -> tuple[str, ...]:
    """A kopf field spec (`"spec.x"`, `["spec", "x"]` or a tuple) as a tuple of keys."""
    return tuple(field.split(".")) if isinstance(field, str) else tuple(field)
