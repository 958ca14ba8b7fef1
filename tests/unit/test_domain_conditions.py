"""Condition merging, without a cluster."""

from __future__ import annotations

import datetime

from kubeiam.domain.conditions import (
    Condition,
    Reason,
    changed_fields,
    merge_condition,
    observed_status,
)

NOW = datetime.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=datetime.UTC)


def test_other_conditions_are_kept_and_the_list_is_ordered() -> None:
    existing = [{"type": "Zeta", "status": "True"}, {"type": "Alpha", "status": "False"}]
    merged = merge_condition(
        existing, Condition("Ready", "True", Reason.ACTIVE, "ok"), generation=4, now=NOW
    )
    assert [c["type"] for c in merged] == ["Alpha", "Ready", "Zeta"]
    assert merged[1]["lastTransitionTime"] == "2026-01-02T03:04:05Z"
    assert merged[1]["observedGeneration"] == 4


def test_a_new_message_with_the_same_status_keeps_the_transition_time() -> None:
    existing = [
        {
            "type": "Ready",
            "status": "True",
            "reason": "Active",
            "message": "old",
            "lastTransitionTime": "2020-01-01T00:00:00Z",
        }
    ]
    merged = merge_condition(
        existing, Condition("Ready", "True", Reason.ACTIVE, "new"), generation=2, now=NOW
    )
    assert merged[0]["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    assert merged[0]["message"] == "new"


def test_changed_fields_lists_only_differences() -> None:
    assert changed_fields({"a": 1, "b": [1]}, {"a": 1, "b": [2], "c": 3}) == {"b": [2], "c": 3}
    assert changed_fields({"a": 1}, {"a": 1}) == {}


def test_observed_status_moves_every_observed_generation_and_nothing_else() -> None:
    current = {
        "state": "Expired",
        "observedGeneration": 1,
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "Expired", "observedGeneration": 1},
            {"type": "Other", "status": "True", "reason": "Fine", "observedGeneration": 1},
        ],
    }
    observed = observed_status(current, 3)
    assert observed["observedGeneration"] == 3
    assert [c["observedGeneration"] for c in observed["conditions"]] == [3, 3]
    assert [(c["type"], c["status"], c["reason"]) for c in observed["conditions"]] == [
        ("Ready", "False", "Expired"),
        ("Other", "True", "Fine"),
    ]
    assert set(observed) == {"observedGeneration", "conditions"}
    assert current["conditions"][0]["observedGeneration"] == 1, "the input was changed"
    assert changed_fields(current, observed_status(current, 1)) == {}
