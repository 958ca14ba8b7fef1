"""Refusal logs (tokens/refusal_log.py): one INFO line per kind of refusal a minute, with how
many of that kind went to DEBUG since; and the token server's refusals follow it."""

from __future__ import annotations

import datetime
import logging

import pytest

from kubeiam.tokens import grants, server
from kubeiam.tokens.refusal_log import RefusalLog

T0 = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.UTC)
SECOND = datetime.timedelta(seconds=1)
BAD_CLIENT = ("invalid_client", "Client authentication failed.")


def test_the_first_refusal_of_a_kind_is_info_and_the_rest_of_its_minute_debug() -> None:
    log = RefusalLog()
    assert log.line(*BAD_CLIENT, T0) == (
        logging.INFO,
        "Refused a token request: invalid_client: Client authentication failed.",
    )
    levels = [log.line(*BAD_CLIENT, T0 + n * SECOND)[0] for n in range(1, 60)]
    assert levels == [logging.DEBUG] * 59


def test_after_the_window_one_info_line_counts_what_went_to_debug() -> None:
    log = RefusalLog()
    log.line(*BAD_CLIENT, T0)
    for n in range(1, 1001):
        log.line(*BAD_CLIENT, T0 + n * datetime.timedelta(milliseconds=50))
    level, message = log.line(*BAD_CLIENT, T0 + 60 * SECOND)
    assert level == logging.INFO
    assert message.endswith("(1000 more since 12:00:00Z, logged at DEBUG)")
    # And the count starts again from there.
    log.line(*BAD_CLIENT, T0 + 61 * SECOND)
    assert log.line(*BAD_CLIENT, T0 + 120 * SECOND)[1].endswith(
        "(1 more since 12:01:00Z, logged at DEBUG)"
    )


def test_a_quiet_kind_says_no_count() -> None:
    log = RefusalLog()
    log.line(*BAD_CLIENT, T0)
    assert log.line(*BAD_CLIENT, T0 + 3600 * SECOND) == (
        logging.INFO,
        "Refused a token request: invalid_client: Client authentication failed.",
    )


def test_each_kind_has_its_own_window() -> None:
    log = RefusalLog()
    assert log.line(*BAD_CLIENT, T0)[0] == logging.INFO
    assert log.line("invalid_scope", "Not yours.", T0 + SECOND)[0] == logging.INFO
    assert log.line("invalid_client", "The credential has expired.", T0 + SECOND)[0] == logging.INFO
    assert log.line(*BAD_CLIENT, T0 + 2 * SECOND)[0] == logging.DEBUG


def test_the_token_server_writes_one_info_line_for_a_burst_of_refusals(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "_REFUSALS", RefusalLog())
    refusal = grants.Refusal(grants.Error.INVALID_CLIENT, "Client authentication failed.")
    with caplog.at_level(logging.DEBUG, logger=server.logger.name):
        for _ in range(500):
            assert server._refuse(refusal, basic=False).status == 400
    refused = [record for record in caplog.records if "Refused" in record.getMessage()]
    assert len(refused) == 500
    assert [r.levelno for r in refused].count(logging.INFO) == 1
