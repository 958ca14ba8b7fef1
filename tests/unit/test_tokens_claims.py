"""Access tokens: RFC 9068's header and claims, the lifetime cap, and the signing key's JWKS."""

from __future__ import annotations

import datetime
import json

import jwt
import pytest

from kubeiam.kube.key_secret import KeyRing, KeySecretError
from kubeiam.tokens import keys, tokens
from kubeiam.tokens.grants import Account, Credential, Grant

NOW = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.UTC)
ISSUER = "https://iam.example.test"
HOUR = datetime.timedelta(hours=1)


def grant(expires_at: datetime.datetime | None = NOW + datetime.timedelta(days=1)) -> Grant:
    credential = Credential(
        namespace="team-a",
        name="key",
        account="pipeline",
        credential_id="abcdefghijklmnopqrst",
        client_id="pipeline@team-a.acme.iam",
        secret_hash="sha256:00",
        state="Active",
        expires_at=expires_at,
        effective_roles=("compute.deployer", "storage.reader"),
    )
    account = Account("team-a", "pipeline", "pipeline@team-a.acme.iam", disabled=False)
    return Grant(credential, account, credential.effective_roles, ISSUER, expires_at)


def signing_keys() -> keys.SigningKeys:
    return keys.from_ring(KeyRing(active="k1", keys={"k1": keys.new_private_key_pem()}))


def test_the_claims_name_the_account_the_roles_and_where_the_token_came_from() -> None:
    body = tokens.claims(grant(), issuer=ISSUER, lifetime=HOUR, now=NOW, jti="j")
    assert body == {
        "iss": ISSUER,
        "sub": "pipeline@team-a.acme.iam",
        "aud": ISSUER,
        "exp": int((NOW + HOUR).timestamp()),
        "iat": int(NOW.timestamp()),
        "nbf": int(NOW.timestamp()),
        "jti": "j",
        "client_id": "pipeline@team-a.acme.iam",
        "scope": "compute.deployer storage.reader",
        "kubeiam.io/namespace": "team-a",
        "kubeiam.io/account": "pipeline",
        "kubeiam.io/credential_id": "abcdefghijklmnopqrst",
    }


def test_a_token_never_outlives_its_credential() -> None:
    soon = NOW + datetime.timedelta(minutes=10)
    body = tokens.claims(grant(soon), issuer=ISSUER, lifetime=HOUR, now=NOW, jti="j")
    assert body["exp"] == int(soon.timestamp())


def test_a_signed_token_verifies_with_the_published_key_and_says_at_jwt() -> None:
    signing = signing_keys()
    issued = tokens.issue(grant(), signing.active_at(NOW), issuer=ISSUER, lifetime=HOUR, now=NOW)
    header = jwt.get_unverified_header(issued.token)
    assert header == {"alg": "ES256", "typ": "at+jwt", "kid": "k1"}
    (public,) = signing.jwks()["keys"]
    assert public["kid"] == "k1"
    assert public["alg"] == "ES256"
    assert "d" not in public
    verified = jwt.decode(
        issued.token,
        jwt.PyJWK(public).key,
        algorithms=["ES256"],
        audience=ISSUER,
        issuer=ISSUER,
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    assert verified["sub"] == "pipeline@team-a.acme.iam"
    assert issued.expires_in == 3600
    assert issued.token not in repr(issued)


def test_the_jwks_and_the_keys_repr_hold_no_private_part() -> None:
    signing = signing_keys()
    text = json.dumps(signing.jwks())
    assert '"d"' not in text
    assert "PRIVATE" not in repr(signing)


def test_a_key_secret_entry_that_is_not_a_p256_pem_is_refused() -> None:
    with pytest.raises(KeySecretError):
        keys.from_ring(KeyRing(active="k1", keys={"k1": b"x" * 40}))
