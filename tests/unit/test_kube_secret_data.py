"""What a pod that mounts a generated Secret reads: the four keys, and the CA bundle if set."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from kubeiam.api.credential import CA_BUNDLE_KEY, DEFAULT_SECRET_KEYS
from kubeiam.kube.secrets import SecretRequest, secret_data
from kubeiam.settings import CredentialSettings

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def _request(ca_bundle: str | None = None, **keys: str) -> SecretRequest:
    return SecretRequest(
        namespace="team-a",
        name="key",
        credential="key",
        credential_uid="uid",
        credential_id="id",
        account="pipeline",
        client_id="pipeline@team-a.example.iam",
        token_url="https://iam.example.com/oauth2/token",
        expires_at=datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC),
        keys={**DEFAULT_SECRET_KEYS, **keys},
        labels={},
        annotations={},
        ca_bundle=ca_bundle,
    )


def test_without_a_ca_bundle_the_secret_holds_the_four_keys_only() -> None:
    data = secret_data(_request(), "kiam_secret")
    assert set(data) == set(DEFAULT_SECRET_KEYS.values())
    assert CA_BUNDLE_KEY not in data


def test_a_ca_bundle_is_written_under_ca_crt_beside_renamed_keys() -> None:
    data = secret_data(_request(PEM, tokenUrl="endpoint"), "kiam_secret")
    assert data[CA_BUNDLE_KEY] == PEM
    assert data["endpoint"] == "https://iam.example.com/oauth2/token"
    assert len(data) == 5


def test_the_ca_file_setting_must_be_a_readable_pem_file(tmp_path: Path) -> None:
    good = tmp_path / "ca.crt"
    good.write_text(PEM)
    assert CredentialSettings(token_ca_file=good).token_ca_file == good
    not_pem = tmp_path / "key.pem"
    not_pem.write_text("not a certificate")
    with pytest.raises(ValidationError, match="no PEM certificate"):
        CredentialSettings(token_ca_file=not_pem)
    with pytest.raises(ValidationError, match="readable PEM file"):
        CredentialSettings(token_ca_file=tmp_path / "missing.crt")
