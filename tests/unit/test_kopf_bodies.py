"""kube/kopf_bodies.py: kopf's watchers get every object without its managedFields, and
nothing else of it changes."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kopf._cogs.clients import watching

from kubeiam.kube import kopf_bodies


def event(kind: str = "MODIFIED") -> dict[str, Any]:
    return {
        "type": kind,
        "object": {
            "apiVersion": "iam.kubeiam.io/v1alpha1",
            "kind": "ServiceAccountCredential",
            "metadata": {
                "name": "key",
                "uid": "u-1",
                "labels": {"team": "a"},
                "managedFields": [{"manager": "kube-iam", "fieldsV1": {"f:status": {}}}],
            },
            "spec": {"serviceAccountName": "pipeline"},
            "status": {"state": "Active"},
        },
    }


def test_an_event_loses_its_managed_fields_and_nothing_else() -> None:
    whole = event()
    slim = kopf_bodies.slim(copy.deepcopy(whole))
    del whole["object"]["metadata"]["managedFields"]
    assert slim == whole


@pytest.mark.parametrize(
    "raw", [watching.Bookmark.LISTED, {"type": "BOOKMARK", "object": {}}, {"type": None}]
)
def test_what_carries_no_object_metadata_passes_as_it_is(raw: Any) -> None:
    before = copy.deepcopy(raw)
    assert kopf_bodies.slim(raw) == before


def test_kopfs_watchers_read_slim_events(monkeypatch: pytest.MonkeyPatch) -> None:
    async def stream(**_: Any) -> AsyncIterator[Any]:
        yield {"type": None, **{"object": event()["object"]}}
        yield watching.Bookmark.LISTED
        yield event("ADDED")

    monkeypatch.setattr(kopf_bodies, "KOPF_INFINITE_WATCH", stream)
    monkeypatch.setattr(watching, "infinite_watch", watching.infinite_watch)
    kopf_bodies.install(enabled=True)

    async def read() -> list[Any]:
        # As kopf's queueing.watcher calls it: through the module, at every (re)start.
        return [raw async for raw in watching.infinite_watch(settings=None)]

    seen = asyncio.run(read())
    assert seen[1] is watching.Bookmark.LISTED
    for raw in (seen[0], seen[2]):
        assert "managedFields" not in raw["object"]["metadata"]
        assert raw["object"]["metadata"]["labels"] == {"team": "a"}
    kopf_bodies.install(enabled=False)
    assert watching.infinite_watch is kopf_bodies.KOPF_INFINITE_WATCH
