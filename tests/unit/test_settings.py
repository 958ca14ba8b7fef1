"""The settings object: defaults, environment variables, and errors that name the variable."""

from __future__ import annotations

import datetime

import pytest
from pydantic import ValidationError

from kubeiam.settings import Settings


def test_defaults_are_the_documented_org_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("KUBEIAM_"):
            monkeypatch.delenv(name)
    settings = Settings()
    assert settings.max_active_credentials == 5
    assert settings.default_credential_lifetime == datetime.timedelta(days=90)
    assert settings.max_credential_lifetime == datetime.timedelta(days=365)
    assert settings.organization == "example"


def test_environment_variables_with_the_prefix_set_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBEIAM_ORGANIZATION", "acme")
    monkeypatch.setenv("KUBEIAM_MAX_ACTIVE_CREDENTIALS", "3")
    monkeypatch.setenv("KUBEIAM_DEFAULT_CREDENTIAL_LIFETIME", "P30D")
    monkeypatch.setenv("KUBEIAM_ALLOWED_ISSUERS", '["https://token.actions.githubusercontent.com"]')
    settings = Settings()
    assert settings.organization == "acme"
    assert settings.max_active_credentials == 3
    assert settings.default_credential_lifetime == datetime.timedelta(days=30)
    assert settings.allowed_issuers == ["https://token.actions.githubusercontent.com"]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("KUBEIAM_ORGANIZATION", "Not A Name", "organization"),
        ("KUBEIAM_MAX_ACTIVE_CREDENTIALS", "0", "max_active_credentials"),
        ("KUBEIAM_TOKEN_URL", "http://insecure.example/token", "KUBEIAM_TOKEN_URL"),
        ("KUBEIAM_DEFAULT_CREDENTIAL_LIFETIME", "P400D", "KUBEIAM_DEFAULT_CREDENTIAL_LIFETIME"),
    ],
)
def test_a_bad_value_is_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as error:
        Settings()
    assert expected in str(error.value)


def test_a_duration_may_be_a_plain_number_of_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBEIAM_ISSUER_RETRY_MIN", "1.5")
    monkeypatch.setenv("KUBEIAM_ISSUER_RETRY_MAX", "PT2S")
    settings = Settings()
    assert settings.issuer_retry_min == datetime.timedelta(seconds=1.5)
    assert settings.issuer_retry_max == datetime.timedelta(seconds=2)
