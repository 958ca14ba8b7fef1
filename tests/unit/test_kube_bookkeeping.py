"""kube/bookkeeping.py: kopf tells create, update, resume and nothing apart, writing nothing.

The causes are computed as kopf's processing computes them (fetch, build, diff, detect), so a
change in kopf that broke the storage's contract fails here, not in a cluster.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kopf._cogs.structs import diffs
from kopf._core.intents.causes import Reason, detect_changing_cause

from kubeiam.kube.bookkeeping import (
    ObservedGenerationDiffBase,
    UnmarkedProgressStorage,
    handling_state,
)

PREFIX = "kubeiam.io"


def credential(generation: int, observed: int | None, **metadata: Any) -> kopf.Body:
    status = {} if observed is None else {"state": "Active", "observedGeneration": observed}
    return kopf.Body(
        {
            "apiVersion": "iam.kubeiam.io/v1alpha1",
            "kind": "ServiceAccountCredential",
            "metadata": {
                "name": "key",
                "namespace": "shop",
                "uid": "u-1",
                "generation": generation,
                "resourceVersion": "7",
                **metadata,
            },
            "spec": {"serviceAccountName": "pipeline", "displayName": "key"},
            "status": status,
        }
    )


def cause_of(body: kopf.Body, *, initial: bool = False) -> tuple[Reason, diffs.Diff]:
    storage = ObservedGenerationDiffBase(UnmarkedProgressStorage(prefix=PREFIX))
    old = storage.fetch(body=body)
    new = storage.build(body=body)
    diff = diffs.diff(old, new)
    cause = detect_changing_cause(
        finalizer=f"{PREFIX}/finalizer",
        raw_event={"type": "MODIFIED", "object": dict(body)},
        body=body,
        old=old,
        new=new,
        diff=diff,
        initial=initial,
        logger=logging.getLogger("test"),
        resource=kopf.Resource("iam.kubeiam.io", "v1alpha1", "serviceaccountcredentials"),
        patch=kopf.Patch(),
        memo=kopf.Memo(),
        indices=None,
    )
    return cause.reason, diff


@pytest.mark.parametrize(
    ("generation", "observed", "expected"),
    [(1, None, "new"), (1, 1, "handled"), (3, 3, "handled"), (2, 1, "changed")],
)
def test_the_state_comes_from_the_objects_own_fields(
    generation: int, observed: int | None, expected: str
) -> None:
    assert handling_state(credential(generation, observed)) == expected


def test_an_object_never_handled_is_a_create() -> None:
    reason, _ = cause_of(credential(1, None))
    assert reason == Reason.CREATE
    # Even when first seen in the start-up listing: it was never handled.
    reason, _ = cause_of(credential(1, None), initial=True)
    assert reason == Reason.CREATE


def test_a_handled_spec_is_nothing_and_a_resume_at_start_up() -> None:
    assert cause_of(credential(4, 4))[0] == Reason.NOOP
    assert cause_of(credential(4, 4), initial=True)[0] == Reason.RESUME


def test_labels_and_annotations_alone_change_nothing() -> None:
    body = credential(2, 2, labels={"team": "a"}, annotations={"note": "x"})
    assert cause_of(body)[0] == Reason.NOOP


def test_a_spec_changed_since_it_was_handled_is_an_update_of_spec() -> None:
    reason, diff = cause_of(credential(3, 2))
    assert reason == Reason.UPDATE
    # The handlers are registered with field="spec": kopf calls them only for a spec diff.
    assert diff, "an update with an empty diff would call no handler"
    assert all(path[:1] == ("spec",) for _, path, _, _ in diff), diff
    # At start-up the same object is resumed and updated at once.
    assert cause_of(credential(3, 2), initial=True)[0] == Reason.UPDATE


def test_a_handler_kopf_still_retries_is_handled_again_to_finish_and_clear_its_record() -> None:
    """Created, its handler retried (the account had no client id yet), then issued by another
    path: kopf must still finish the retry, or its record stays and is cleared by a PATCH at the
    next start."""
    retrying = {f"{PREFIX}/reconcile_credential": '{"started":"2026-12-01T00:00:00Z","retries":1}'}
    reason, diff = cause_of(credential(1, 1, annotations=retrying))
    assert reason == Reason.UPDATE
    assert all(path[:1] == ("spec",) for _, path, _, _ in diff), diff
    # What earlier versions left behind is no pending handler.
    legacy = {
        f"{PREFIX}/last-handled-configuration": '{"spec":{}}',
        f"{PREFIX}/kopf-managed": "yes",
        "iam.kubeiam.io/created-by": "alice",
    }
    assert cause_of(credential(1, 1, annotations=legacy))[0] == Reason.NOOP
    assert cause_of(credential(1, 1, annotations=legacy), initial=True)[0] == Reason.RESUME


def test_a_finished_handling_writes_nothing() -> None:
    body = credential(1, 1)
    patch = kopf.Patch()
    storage = ObservedGenerationDiffBase(UnmarkedProgressStorage(prefix=PREFIX))
    storage.store(body=body, patch=patch, essence=storage.build(body=body))
    assert not patch


HANDLER = kopf.HandlerId("reconcile_credential")


def stored_progress(record: Any, *, purged: bool) -> kopf.Patch:
    """The patch kopf builds for a never-handled credential: the handler's record, then, once
    every handler is done, the purge of it."""
    body = credential(1, None)
    storage = UnmarkedProgressStorage(prefix=PREFIX)
    patch = kopf.Patch()
    storage.store(key=HANDLER, record=record, body=body, patch=patch)
    if purged:
        storage.purge(key=HANDLER, body=body, patch=patch)
    return patch


def test_a_first_success_leaves_no_progress_and_no_marker_to_write() -> None:
    record = {"started": "2026-12-01T00:00:00Z", "success": True, "retries": 1}
    patch = stored_progress(record, purged=True)
    assert dict(patch) == {}, patch


def test_a_failing_handler_still_keeps_its_retry_count_in_our_annotations() -> None:
    record = {"started": "2026-12-01T00:00:00Z", "failure": False, "retries": 2}
    annotations = dict(stored_progress(record, purged=False).metadata.annotations)
    assert list(annotations) == [f"{PREFIX}/reconcile_credential"]
    assert '"retries":2' in annotations[f"{PREFIX}/reconcile_credential"]


# -- the essence, built without deep-copying what kopf drops ------------------------------------

_texts = st.text(alphabet="abcxyz./-", min_size=1, max_size=6)
_values = st.recursive(
    st.none() | st.booleans() | st.integers() | _texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_texts, inner, max_size=3),
    max_leaves=8,
)
_annotation_keys = st.sampled_from(
    [
        "team",
        f"{PREFIX}/reconcile_credential",
        "kopf.zalando.org/last-handled-configuration",
        "kubectl.kubernetes.io/last-applied-configuration",
        "example.com/owner",
    ]
)
_bodies = st.fixed_dictionaries(
    {
        "apiVersion": st.just("iam.kubeiam.io/v1alpha1"),
        "kind": st.just("ServiceAccountCredential"),
        "metadata": st.fixed_dictionaries(
            {"name": _texts, "generation": st.integers(1, 3)},
            optional={
                "labels": st.dictionaries(_texts, _texts, max_size=3),
                "annotations": st.dictionaries(_annotation_keys, _texts, max_size=4),
                "managedFields": st.lists(st.dictionaries(_texts, _values, max_size=3), max_size=3),
            },
        ),
        "spec": st.dictionaries(_texts, _values, max_size=4),
    },
    optional={"status": st.dictionaries(_texts, _values, max_size=3), "data": _values},
)
_extra_fields = st.lists(
    st.sampled_from(["spec", "spec.a", ("spec", "b"), "status.state", "metadata.generation"]),
    max_size=2,
)


@given(raw=_bodies, extra_fields=_extra_fields)
@settings(max_examples=300, deadline=None)
def test_the_essence_is_kopfs_own_for_every_body(raw: dict[str, Any], extra_fields: Any) -> None:
    storage = ObservedGenerationDiffBase(UnmarkedProgressStorage(prefix=PREFIX))
    stock = kopf.AnnotationsDiffBaseStorage(prefix=PREFIX)
    body = kopf.Body(raw)
    assert storage.build(body=body, extra_fields=extra_fields) == stock.build(
        body=body, extra_fields=extra_fields
    )


def test_the_essence_copies_nothing_kopf_drops(monkeypatch: pytest.MonkeyPatch) -> None:
    import copy

    copied: list[Any] = []
    deepcopy = copy.deepcopy
    monkeypatch.setattr(
        copy, "deepcopy", lambda value, *a: copied.append(value) or deepcopy(value, *a)
    )
    body = credential(2, 1, managedFields=[{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}])
    ObservedGenerationDiffBase(UnmarkedProgressStorage(prefix=PREFIX)).build(body=body)
    everything = repr(copied)
    assert copied
    assert "managedFields" not in everything
    assert "observedGeneration" not in everything
