"""The credential gauges are computed from the index alone: every state counted, and only the
credentials that have not ended have an expiry series."""

from __future__ import annotations

import datetime
from typing import Any, cast

from kubeiam.controllers.credentials.state import Runtime as _Runtime
from kubeiam.domain.credentials import CredentialView


def _view(name: str, state: str | None, *, expires_at: str | None = None, **more: Any) -> Any:
    return CredentialView(
        namespace="team-a",
        name=name,
        uid=f"uid-{name}",
        account="pipeline",
        created_at="2026-01-01T00:00:00Z",
        state=state,
        revoked=bool(more.get("revoked")),
        issued=expires_at is not None,
        expires_at=expires_at,
    )


def _runtime(*views: Any) -> _Runtime:
    runtime = _Runtime()
    # A kopf index is a mapping of keys to collections of values; a dict of lists is one too.
    runtime.credentials = cast(Any, {("team-a", "pipeline"): list(views)})
    return runtime


def test_every_state_is_reported_even_at_zero_and_new_ones_have_no_status_yet() -> None:
    runtime = _runtime(
        _view("a", "Active", expires_at="2027-01-01T00:00:00Z"),
        _view("b", "Active", expires_at="2027-02-01T00:00:00Z"),
        _view("c", "Pending"),
        _view("d", None),
        _view("e", "Revoked", revoked=True),
    )
    counts = {labels[0]: value for labels, value in runtime.count_by_state()}
    assert counts == {
        "New": 1,
        "Pending": 1,
        "Active": 2,
        "Expired": 0,
        "Revoked": 1,
        "Failed": 0,
    }


def test_expiry_series_exist_only_for_credentials_that_have_not_ended() -> None:
    runtime = _runtime(
        _view("a", "Active", expires_at="2027-01-01T00:00:00Z"),
        _view("gone", "Expired", expires_at="2026-01-02T00:00:00Z"),
        # Revoked in the spec, its status not written yet: it is ending, no alert for it.
        _view("ending", "Active", expires_at="2027-03-01T00:00:00Z", revoked=True),
        _view("waiting", "Pending"),
    )
    expected = datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC).timestamp()
    assert list(runtime.expiries()) == [(("team-a", "a", "pipeline"), expected)]


def test_without_an_index_yet_there_is_nothing_to_report() -> None:
    runtime = _Runtime()
    assert all(value == 0 for _, value in runtime.count_by_state())
    assert list(runtime.expiries()) == []
