"""The metrics module without a cluster: reasons of bounded cardinality, error counting on sync
and async handlers, gauges computed at scrape time, and what a paused replica reports."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import kopf
import pytest
from kubernetes.client.exceptions import ApiException
from prometheus_client import generate_latest

from kubeiam.kube import api, metrics, peering


def _errors(kind: str, reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "kubeiam_reconcile_errors_total", {"kind": kind, "reason": reason}
    )
    return value or 0.0


@pytest.fixture
def active() -> Iterator[None]:
    """This process as kopf's peering leaves it when it is not paused."""
    peering.STATE.emit(_peering_record("Resuming operations after the pause. ..."))
    yield
    peering.STATE.emit(_peering_record("Resuming operations after the pause. ..."))


def _peering_record(message: str) -> logging.LogRecord:
    return logging.LogRecord(peering.PEERING_LOGGER, logging.INFO, __file__, 1, message, (), None)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (ApiException(status=409, reason="Conflict"), "Conflict"),
        (ApiException(status=403, reason="Forbidden"), "Forbidden"),
        (ApiException(status=422, reason="Unprocessable Entity"), "Invalid"),
        (ApiException(status=418, reason="I'm a teapot"), "HTTP418"),
        (api.Conflict("x"), "Conflict"),
        (api.Gone("x"), "NotFound"),
        (api.Refused("creating a Secret failed: HTTP 429", 429), "TooManyRequests"),
        (TimeoutError(), "Timeout"),
        (kopf.TemporaryError("The account has no client id yet."), "TemporaryError"),
        (ValueError("a message that must not become a label"), "ValueError"),
    ],
)
def test_an_error_reason_is_a_short_word_never_the_message(error: Exception, reason: str) -> None:
    assert metrics.error_reason(error) == reason


def test_errors_of_a_sync_handler_are_counted_and_raised_again() -> None:
    @metrics.counts_errors("UnitSync")
    def handler(fail: bool) -> str:
        if fail:
            raise api.Conflict("someone else wrote first")
        return "done"

    assert handler(fail=False) == "done"
    assert _errors("UnitSync", "Conflict") == 0
    with pytest.raises(api.Conflict):
        handler(fail=True)
    assert _errors("UnitSync", "Conflict") == 1


def test_errors_of_an_async_handler_are_counted_and_it_stays_a_coroutine_function() -> None:
    @metrics.counts_errors("UnitAsync")
    async def reconcile_something(**_: object) -> None:
        raise TimeoutError

    # kopf decides how to call a handler, and names it, by these two.
    assert asyncio.iscoroutinefunction(reconcile_something)
    assert reconcile_something.__name__ == "reconcile_something"
    for _ in range(2):
        with pytest.raises(TimeoutError):
            asyncio.run(reconcile_something())
    assert _errors("UnitAsync", "Timeout") == 2


def test_a_cancelled_handler_is_not_an_error() -> None:
    @metrics.counts_errors("UnitCancelled")
    async def handler() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(handler())
    assert _errors("UnitCancelled", "CancelledError") == 0


def test_api_requests_are_counted_by_verb_resource_and_code() -> None:
    metrics.count_api_request("get", "unit-things", 200)
    metrics.count_api_request("get", "unit-things", 200)
    metrics.count_api_request("patch", "unit-things/status", 409)
    metrics.count_api_request("get", "unit-things", None)

    def value(verb: str, resource: str, code: str) -> float | None:
        return metrics.REGISTRY.get_sample_value(
            "kubeiam_api_requests_total", {"verb": verb, "resource": resource, "code": code}
        )

    assert value("get", "unit-things", "200") == 2
    assert value("patch", "unit-things/status", "409") == 1
    assert value("get", "unit-things", "error") == 1


def test_a_gauge_from_memory_is_computed_at_each_scrape(active: None) -> None:
    things = {"a": "Ready", "b": "Ready", "c": "Broken"}

    def by_state() -> Iterator[metrics.Sample]:
        for state in ("Ready", "Broken"):
            yield (state,), float(sum(1 for s in things.values() if s == state))

    metrics.gauge_from_memory("kubeiam_unit_things", "Things by state.", ["state"], by_state)

    def value(state: str) -> float | None:
        return metrics.REGISTRY.get_sample_value("kubeiam_unit_things", {"state": state})

    assert (value("Ready"), value("Broken")) == (2, 1)
    things["c"] = "Ready"
    del things["a"]
    assert (value("Ready"), value("Broken")) == (2, 0)


def test_a_paused_replica_reports_no_values_from_memory(active: None) -> None:
    metrics.gauge_from_memory("kubeiam_unit_expiry", "Expiry.", ["name"], lambda: [(("one",), 1.0)])
    assert metrics.REGISTRY.get_sample_value("kubeiam_unit_expiry", {"name": "one"}) == 1.0
    assert metrics.REGISTRY.get_sample_value("kubeiam_peering_paused") == 0.0

    # kopf's own words when a replica of higher priority appears.
    peering.STATE.emit(_peering_record("Pausing operations in favour of [<Peer b: ...>]."))
    assert peering.paused()
    assert metrics.REGISTRY.get_sample_value("kubeiam_unit_expiry", {"name": "one"}) is None
    assert metrics.REGISTRY.get_sample_value("kubeiam_peering_paused") == 1.0
    assert b"# TYPE kubeiam_unit_expiry gauge" in generate_latest(metrics.REGISTRY)

    peering.STATE.emit(_peering_record("Resuming operations after the pause. Conflicting ..."))
    assert not peering.paused()
    assert metrics.REGISTRY.get_sample_value("kubeiam_unit_expiry", {"name": "one"}) == 1.0


def test_equal_priorities_pause_too(active: None) -> None:
    peering.STATE.emit(_peering_record("Pausing all operators, including self: [...]"))
    assert peering.paused()


def test_a_failing_gauge_leaves_the_rest_of_the_page_intact(active: None) -> None:
    def broken() -> Iterator[metrics.Sample]:
        raise KeyError("index not filled yet")

    metrics.gauge_from_memory("kubeiam_unit_broken", "Broken.", ["x"], broken)
    page = generate_latest(metrics.REGISTRY).decode()
    assert "# TYPE kubeiam_unit_broken gauge" in page
    assert "kubeiam_peering_paused 0.0" in page
