"""Introspection (RFC 7662): an active token's claims, and exactly `{"active": false}` else."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import jwt
import pytest

from kubeiam.tokens import keys, tokens
from kubeiam.tokens.grants import Account, Credential, Grant
from kubeiam.tokens.introspection import introspect

from .test_tokens_claims import HOUR, ISSUER, NOW, grant, signing_keys

# The claims tests' credential, account, clock and issuer: one fixture for both modules.
CREDENTIAL, ACCOUNT = grant().credential, grant().account
KEYS = signing_keys()
OTHER_KEYS = signing_keys()


def token(signing: keys.SigningKeys = KEYS, issuer: str = ISSUER, jkt: str | None = None) -> str:
    grant = Grant(
        CREDENTIAL, ACCOUNT, CREDENTIAL.effective_roles, ISSUER, CREDENTIAL.expires_at, jkt
    )
    return tokens.issue(grant, signing.active_at(NOW), issuer=issuer, lifetime=HOUR, now=NOW).token


def ask(
    text: str,
    *,
    credential: Credential | None = CREDENTIAL,
    account: Account | None = ACCOUNT,
    now: datetime.datetime = NOW,
) -> dict[str, Any]:
    return introspect(
        text,
        keys=KEYS,
        issuer=ISSUER,
        credential_by_id=lambda cid: (
            credential if credential and cid == credential.credential_id else None
        ),
        account_of=lambda ns, name: (
            account if account and (ns, name) == ("team-a", "pipeline") else None
        ),
        now=now,
    )


def test_an_active_token_shows_its_claims() -> None:
    answer = ask(token())
    assert answer == {
        "active": True,
        "scope": "compute.deployer storage.reader",
        "client_id": CREDENTIAL.client_id,
        "sub": ACCOUNT.client_id,
        "aud": ISSUER,
        "iss": ISSUER,
        "exp": int((NOW + HOUR).timestamp()),
        "iat": int(NOW.timestamp()),
        "token_type": "Bearer",
    }


def test_a_dpop_bound_token_shows_its_key_and_type() -> None:
    """RFC 9449 §6.2: cnf.jkt and token_type DPoP, so a resource server can check the proof."""
    answer = ask(token(jkt="thumb"))
    assert answer["active"] is True
    assert answer["cnf"] == {"jkt": "thumb"}
    assert answer["token_type"] == "DPoP"


def _forged() -> str:
    claims = jwt.decode(token(), options={"verify_signature": False})
    return jwt.encode(
        {**claims, "scope": "admin"},
        KEYS.active_at(NOW).private,
        algorithm="ES256",
        headers={"typ": "JWT", "kid": "k1"},  # our key, but not an access token's type
    )


@pytest.mark.parametrize(
    ("what", "text", "changes"),
    [
        ("expired", token(), {"now": NOW + HOUR}),
        ("signed by another key", token(OTHER_KEYS), {}),
        ("another issuer", token(issuer="https://evil.example"), {}),
        ("not at+jwt", _forged(), {}),
        ("a tampered payload", token()[:-10] + "AAAAAAAAAA", {}),
        ("not a JWT", "not-a-token", {}),
        ("empty", "", {}),
        (
            "revoked credential",
            token(),
            {"credential": dataclasses.replace(CREDENTIAL, state="Revoked")},
        ),
        (
            "credential past its expiry",
            token(),
            {"credential": dataclasses.replace(CREDENTIAL, expires_at=NOW)},
        ),
        ("deleted credential", token(), {"credential": None}),
        ("deleted account", token(), {"account": None}),
        ("disabled account", token(), {"account": dataclasses.replace(ACCOUNT, disabled=True)}),
        (
            "account recreated with another client id",
            token(),
            {"account": dataclasses.replace(ACCOUNT, client_id="someone@else")},
        ),
    ],
)
def test_anything_else_is_exactly_inactive(what: str, text: str, changes: dict[str, Any]) -> None:
    assert ask(text, **changes) == {"active": False}, what
