"""kube/kopf_bodies.py: kopf's watchers get every object without its managedFields, and
nothing else of it changes."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator
from typing import Any

import kopf
import pytest
from kopf._cogs.clients import fetching, watching

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
    monkeypatch.setattr(fetching, "fetch_objs", fetching.fetch_objs)
    kopf_bodies.install(enabled=True)

    async def read() -> list[Any]:
        # As kopf's queueing.watcher calls it: through the module, at every (re)start. A kind
        # kube-iam does not index passes without a listing of its own.
        other = kopf.Resource("example.com", "v1", "things", namespaced=True)
        stream = watching.infinite_watch(settings=None, resource=other, namespace=None)
        return [raw async for raw in stream]

    seen = asyncio.run(read())
    assert seen[1] is watching.Bookmark.LISTED
    for raw in (seen[0], seen[2]):
        assert "managedFields" not in raw["object"]["metadata"]
        assert raw["object"]["metadata"]["labels"] == {"team": "a"}
    # Turned off, the events are kopf's as parsed.
    kopf_bodies.install(enabled=False)
    assert all("managedFields" in raw["object"]["metadata"] for raw in asyncio.run(read())[::2])


def _listed(name: str, uid: str) -> dict[str, Any]:
    """A settled credential as a JSON parser gives it: every text a copy of its own."""
    condition = {
        "type": "Ready",
        "status": "True",
        "reason": "Issued",
        "message": "The credential is active; its Secret holds the client secret.",
        "lastTransitionTime": "2026-12-07T15:00:00Z",
    }
    body = {
        "apiVersion": "iam.kubeiam.io/v1alpha1",
        "kind": "ServiceAccountCredential",
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "uid": uid,
            "labels": {"iam.kubeiam.io/service-account": "pipeline"},
            "finalizers": ["kubeiam.io/finalizer"],
            "ownerReferences": [
                {
                    "apiVersion": "iam.kubeiam.io/v1alpha1",
                    "kind": "ServiceAccount",
                    "name": "pipeline",
                    "uid": "acct-uid",
                }
            ],
            "managedFields": [{"manager": "kube-iam"}],
        },
        "spec": {"serviceAccountName": "pipeline"},
        "status": {
            "state": "Active",
            "clientId": "pipeline@team-a.acme.iam",
            "createdBy": "system:admin",
            "createdAt": "2026-12-07T15:00:00Z",
            "expiresAt": "2027-01-06T15:00:00Z",
            "secretHash": f"sha256:{uid}",
            "effectiveRoles": ["compute.deployer"],
            "conditions": [condition, {**condition, "type": "Issued"}],
        },
    }
    return {"type": None, "object": json.loads(json.dumps(body))}


def _texts(value: Any, path: str = "") -> dict[str, str]:
    """Every text of a body by its path (values only)."""
    if isinstance(value, dict):
        return {k: t for key, v in value.items() for k, t in _texts(v, f"{path}.{key}").items()}
    if isinstance(value, list):
        return {k: t for i, v in enumerate(value) for k, t in _texts(v, f"{path}[{i}]").items()}
    return {path: value} if isinstance(value, str) else {}


def test_texts_that_objects_repeat_are_one_copy_and_their_own_texts_stay_theirs() -> None:
    first, second = _listed("key-1", "u-1"), _listed("key-2", "u-2")
    before = copy.deepcopy([first, second])
    kopf_bodies.slim(first)
    kopf_bodies.slim(second)
    for raw in before:
        del raw["object"]["metadata"]["managedFields"]
    assert [first, second] == before
    mine, theirs = _texts(first["object"]), _texts(second["object"])
    shared = {path for path in mine if mine[path] is theirs[path]}
    # Everything equal in both is one copy now (apiVersion and kind are kopf's, from the list).
    assert shared == {
        path for path in mine if mine[path] == theirs[path] and path not in (".apiVersion", ".kind")
    }
    assert ".status.conditions[1].message" in shared
    assert ".metadata.finalizers[0]" in shared
    assert ".metadata.ownerReferences[0].name" in shared
    # An object's own texts are left alone: nothing holds them longer than the object.
    for own in (".metadata.name", ".metadata.uid", ".status.secretHash"):
        assert mine[own] is not theirs[own]
