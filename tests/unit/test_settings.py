"""The settings object: defaults, environment variables, and errors that name the variable."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from kubeiam import settings as settings_module
from kubeiam.settings import Settings


def test_defaults_are_the_documented_org_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("KUBEIAM_"):
            monkeypatch.delenv(name)
    settings = Settings()
    assert settings.credentials.max_active_credentials == 5
    assert settings.credentials.default_credential_lifetime == datetime.timedelta(days=90)
    assert settings.credentials.max_credential_lifetime == datetime.timedelta(days=365)
    assert settings.organization == "example"


def test_environment_variables_with_the_prefix_set_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBEIAM_ORGANIZATION", "acme")
    monkeypatch.setenv("KUBEIAM_MAX_ACTIVE_CREDENTIALS", "3")
    monkeypatch.setenv("KUBEIAM_DEFAULT_CREDENTIAL_LIFETIME", "P30D")
    monkeypatch.setenv("KUBEIAM_ALLOWED_ISSUERS", '["https://token.actions.githubusercontent.com"]')
    settings = Settings()
    assert settings.organization == "acme"
    assert settings.credentials.max_active_credentials == 3
    assert settings.credentials.default_credential_lifetime == datetime.timedelta(days=30)
    assert settings.trusts.allowed_issuers == ["https://token.actions.githubusercontent.com"]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("KUBEIAM_ORGANIZATION", "Not A Name", "organization"),
        ("KUBEIAM_MAX_ACTIVE_CREDENTIALS", "0", "max_active_credentials"),
        ("KUBEIAM_TOKEN_ISSUER", "http://insecure.example", "KUBEIAM_TOKEN_ISSUER"),
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
    assert settings.issuers.retry_min == datetime.timedelta(seconds=1.5)
    assert settings.issuers.retry_max == datetime.timedelta(seconds=2)


def test_the_settings_page_lists_every_variable_as_the_models_say() -> None:
    """docs/settings.md's table is the generated one: `make docs` after changing a setting."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "settings.md").read_text()
    assert settings_module.with_table(page) == page


def test_every_setting_has_its_own_variable_and_a_description() -> None:
    found = settings_module.variables()
    names = [variable.name for variable in found]
    assert len(names) == len(set(names))
    assert all(name.startswith("KUBEIAM_") for name in names)
    assert all(variable.description for variable in found)
    # The grouping kept the variables the ConfigMap already sets.
    assert {
        "KUBEIAM_MAX_ACTIVE_CREDENTIALS",
        "KUBEIAM_ISSUER_RETRY_MIN",
        "KUBEIAM_WEBHOOK_PORT",
        "KUBEIAM_ADMISSION_TIMEOUT",
        "KUBEIAM_PEERING_LIFETIME",
    } <= set(names)


def test_the_configmap_sets_only_variables_kube_iam_reads() -> None:
    configmap = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "deploy" / "settings.yaml").read_text()
    )
    known = {variable.name for variable in settings_module.variables()}
    assert set(configmap["data"]) <= known


def test_the_token_url_is_the_issuers_token_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBEIAM_TOKEN_ISSUER", "https://iam.acme.example/tenant/")
    assert Settings().tokens.token_url == "https://iam.acme.example/tenant/oauth2/token"


def test_the_removed_token_url_setting_is_refused_not_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KUBEIAM_TOKEN_URL", "https://iam.acme.example/oauth2/token")
    with pytest.raises(ValidationError) as error:
        Settings()
    assert "KUBEIAM_TOKEN_URL is no longer read: set KUBEIAM_TOKEN_ISSUER" in str(error.value)
