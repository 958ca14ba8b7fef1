"""Expiry resolution against the organisation's default and maximum lifetimes."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeiam.domain.conditions import Reason
from kubeiam.domain.lifetimes import (
    Expiry,
    ExpiryRefused,
    format_duration,
    parse_duration,
    resolve_expiry,
)

CREATED = datetime.datetime(2026, 11, 23, 12, 0, tzinfo=datetime.UTC)
DEFAULT = datetime.timedelta(days=90)
MAXIMUM = datetime.timedelta(days=365)


def resolve(**kwargs: object) -> Expiry | ExpiryRefused:
    arguments: dict[str, object] = {
        "created_at": CREATED,
        "expires_at": None,
        "expires_in": None,
        "default_lifetime": DEFAULT,
        "max_lifetime": MAXIMUM,
    }
    arguments.update(kwargs)
    return resolve_expiry(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("720h", datetime.timedelta(hours=720)),
        ("90m", datetime.timedelta(minutes=90)),
        ("1h30m45s", datetime.timedelta(hours=1, minutes=30, seconds=45)),
        ("1.5h", datetime.timedelta(minutes=90)),
        ("10s", datetime.timedelta(seconds=10)),
        ("250ms", datetime.timedelta(milliseconds=250)),
    ],
)
def test_go_durations_parse(text: str, expected: datetime.timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "10", "10d", "h", "1h 30m", "-1h"])
def test_other_text_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_nothing_requested_means_the_default_lifetime() -> None:
    assert resolve() == Expiry(CREATED + DEFAULT)


def test_expires_in_counts_from_creation() -> None:
    assert resolve(expires_in="720h") == Expiry(CREATED + datetime.timedelta(hours=720))


def test_expires_at_is_kept_exactly() -> None:
    moment = CREATED + datetime.timedelta(days=30, seconds=7)
    assert resolve(expires_at=moment) == Expiry(moment)


def test_above_the_maximum_is_refused_with_the_maximum_named() -> None:
    refused = resolve(expires_in="9000h")
    assert isinstance(refused, ExpiryRefused)
    assert refused.reason == Reason.LIFETIME_EXCEEDED
    assert "375d" in refused.message
    assert "maximum of 365d" in refused.message
    assert "spec.expiresIn" in refused.message


def test_an_expiry_before_creation_is_refused() -> None:
    refused = resolve(expires_at=CREATED - datetime.timedelta(seconds=1))
    assert isinstance(refused, ExpiryRefused)
    assert refused.reason == Reason.INVALID_EXPIRY
    assert "spec.expiresAt" in refused.message


@given(seconds=st.integers(min_value=1, max_value=int(MAXIMUM.total_seconds())))
def test_any_lifetime_up_to_the_maximum_is_granted_as_asked(seconds: int) -> None:
    result = resolve(expires_in=f"{seconds}s")
    assert result == Expiry(CREATED + datetime.timedelta(seconds=seconds))


@given(seconds=st.integers(min_value=1, max_value=10**9))
def test_formatted_durations_are_exact(seconds: int) -> None:
    text = format_duration(datetime.timedelta(seconds=seconds))
    days = int(text.split("d")[0]) if "d" in text else 0
    rest = text.split("d", 1)[1] if "d" in text else text
    assert datetime.timedelta(days=days) + (
        parse_duration(rest) if rest else datetime.timedelta()
    ) == datetime.timedelta(seconds=seconds)
