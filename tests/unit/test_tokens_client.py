"""`kube-iam token`'s client rules (tokens/client.py), without a server: the credential as read,
the answer as RFC 6749 reads it, and the RFC 9449 DPoP proof it builds."""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kubeiam.tokens import client
from kubeiam.tokens.dpop import thumbprint

NOW = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.UTC)
URL = "https://iam.example.test/prefix/oauth2/token"
SECRET = "kiam_aaaaaaaaaaaaaaaaaaaa_not-a-real-secret"
VALUES = {
    "client-id": "pipeline@team-a.acme.iam\n",
    "client-secret": SECRET + "\n",
    "token-url": URL,
}


def _pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return client.load_dpop_key(_pem(ec.generate_private_key(ec.SECP256R1())))


def _verified(proof: str) -> tuple[dict[str, object], dict[str, object]]:
    """The proof's header and claims, its signature checked with the key it carries."""
    header = jwt.get_unverified_header(proof)
    public = jwt.PyJWK(header["jwk"], algorithm="ES256")
    claims = jwt.decode(proof, public.key, algorithms=["ES256"])
    return header, claims


# -- the credential ----------------------------------------------------------------------------


def test_a_credential_is_read_as_mounted_trailing_newlines_dropped() -> None:
    credential = client.credential_from(VALUES, "here")
    assert credential.client_id == "pipeline@team-a.acme.iam"
    assert credential.client_secret == SECRET
    assert credential.token_url == URL
    assert credential.ca_bundle is None
    assert SECRET not in repr(credential)


def test_a_missing_key_is_named_and_no_value_is_quoted() -> None:
    with pytest.raises(client.CredentialError) as refused:
        client.credential_from({"client-secret": SECRET}, "Secret ns/key")
    assert str(refused.value) == "Secret ns/key has no client-id, token-url"


def test_a_token_url_that_is_not_https_is_refused_unless_overridden() -> None:
    plain = {**VALUES, "token-url": "http://iam.example.test/oauth2/token"}
    with pytest.raises(client.CredentialError, match="must be an https URL"):
        client.credential_from(plain, "here")
    overridden = client.credential_from(plain, "here", token_url="https://127.0.0.1:8443/t")
    assert overridden.token_url == "https://127.0.0.1:8443/t"


def test_the_ca_bundle_comes_from_ca_crt_unless_given() -> None:
    with_ca = {**VALUES, "ca.crt": "PEM"}
    assert client.credential_from(with_ca, "here").ca_bundle == "PEM"
    assert client.credential_from(with_ca, "here", ca_bundle="OTHER").ca_bundle == "OTHER"


def test_a_directory_is_read_as_a_pod_mounts_the_secret(tmp_path: Path) -> None:
    for name, value in {**VALUES, "expires-at": "2027-01-01T00:00:00Z"}.items():
        (tmp_path / name).write_text(value)
    assert client.read_directory(tmp_path) == VALUES
    with pytest.raises(client.CredentialError, match="is not a directory"):
        client.read_directory(tmp_path / "absent")


def test_a_secrets_data_is_decoded_and_a_key_that_is_not_text_left_out() -> None:
    import base64

    data = {k: base64.b64encode(v.encode()).decode() for k, v in VALUES.items()}
    data["binary"] = base64.b64encode(b"\xff\xfe").decode()
    assert client.secret_values(data) == VALUES


def test_a_credential_that_renamed_its_keys_is_read_by_its_names() -> None:
    spec = {"secretTemplate": {"keys": {"clientId": "id", "clientSecret": "secret"}}}
    names = client.key_names({"spec": spec})
    assert names == {
        "clientId": "id",
        "clientSecret": "secret",
        "tokenUrl": "token-url",
        "expiresAt": "expires-at",
    }
    values = {"id": "pipeline@team-a.acme.iam", "secret": SECRET, "token-url": URL}
    assert client.renamed(values)
    assert not client.renamed(VALUES)
    credential = client.credential_from(values, "here", names=names)
    assert (credential.client_id, credential.client_secret) == ("pipeline@team-a.acme.iam", SECRET)
    with pytest.raises(client.CredentialError, match=r"here has no id, secret$"):
        client.credential_from(VALUES, "here", names=names)
    assert client.key_names({"spec": {}}) == client.DEFAULT_SECRET_KEYS


# -- the answer --------------------------------------------------------------------------------


def test_an_answer_is_granted_or_refused_as_rfc_6749_says() -> None:
    granted = client.interpret(200, b'{"access_token": "t", "token_type": "Bearer"}')
    assert isinstance(granted, client.Granted)
    assert granted.token == "t"
    refused = client.interpret(400, b'{"error": "invalid_target", "error_description": "No."}')
    assert refused == client.Refused(400, "invalid_target", "No.")
    assert refused.message() == "the token endpoint refused (HTTP 400): invalid_target: No."
    assert client.interpret(503, b"not ready") == client.Refused(
        503, "invalid_response", "the answer is not a JSON object"
    )
    assert isinstance(client.interpret(200, b'{"token_type": "Bearer"}'), client.Refused)


# -- DPoP --------------------------------------------------------------------------------------


def test_a_proof_verifies_with_its_own_public_jwk_and_says_what_rfc_9449_asks(
    key: ec.EllipticCurvePrivateKey,
) -> None:
    proof = client.dpop_proof(key, method="POST", url=URL + "?x=1#f", now=NOW)
    header, claims = _verified(proof)
    assert header["typ"] == "dpop+jwt"
    assert header["alg"] == "ES256"
    assert header["jwk"] == client.public_jwk(key)
    assert set(client.public_jwk(key)) == {"kty", "crv", "x", "y"}  # no private "d"
    assert claims["htm"] == "POST"
    assert claims["htu"] == URL
    assert claims["iat"] == int(NOW.timestamp())
    assert isinstance(claims["jti"], str)
    assert len(claims["jti"]) >= 16
    assert "nonce" not in claims
    again = client.dpop_proof(key, method="POST", url=URL, now=NOW)
    assert _verified(again)[1]["jti"] != claims["jti"]


def test_a_proof_carries_the_servers_nonce(key: ec.EllipticCurvePrivateKey) -> None:
    proof = client.dpop_proof(key, method="POST", url=URL, now=NOW, nonce="n-1")
    assert _verified(proof)[1]["nonce"] == "n-1"


def test_the_proofs_key_thumbprint_is_that_of_its_jwk(key: ec.EllipticCurvePrivateKey) -> None:
    jwk = client.public_jwk(key)
    other = jwt.PyJWK(jwk, algorithm="ES256")  # the JWK is a key PyJWT reads back
    assert isinstance(other.key, ec.EllipticCurvePublicKey)
    assert other.key.public_numbers() == key.public_key().public_numbers()
    canonical = json.dumps({m: jwk[m] for m in ("crv", "kty", "x", "y")}, separators=(",", ":"))
    assert canonical.startswith('{"crv":"P-256","kty":"EC","x":')
    assert len(thumbprint(jwk)) == 43


@pytest.mark.parametrize(
    ("pem", "rule"),
    [
        (b"not a key", "unencrypted PEM private key"),
        (_pem(ec.generate_private_key(ec.SECP384R1())), "EC P-256"),
        (_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)), "EC P-256"),
    ],
)
def test_a_dpop_key_other_than_p256_is_refused(pem: bytes, rule: str) -> None:
    with pytest.raises(client.CredentialError, match=rule):
        client.load_dpop_key(pem)


def _bound_token(jkt: str) -> str:
    signer = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode({"sub": "x", "cnf": {"jkt": jkt}}, signer, algorithm="ES256")


def test_a_token_asked_with_a_proof_must_come_bound_to_its_key(
    key: ec.EllipticCurvePrivateKey,
) -> None:
    jkt = thumbprint(client.public_jwk(key))
    bound = client.Granted({"access_token": _bound_token(jkt), "token_type": "DPoP"})
    assert client.binding_problem(bound, key) is None
    bearer = client.Granted({"access_token": _bound_token(jkt), "token_type": "Bearer"})
    assert "Bearer" in (client.binding_problem(bearer, key) or "")
    other = client.Granted({"access_token": _bound_token("other"), "token_type": "DPoP"})
    assert "cnf.jkt" in (client.binding_problem(other, key) or "")


# -- the request -------------------------------------------------------------------------------


class Endpoint:
    """A token endpoint's answers, in order, and what it was sent."""

    def __init__(self, *answers: tuple[int, Mapping[str, str], bytes]) -> None:
        self.answers = list(answers)
        self.sent: list[tuple[str, dict[str, str], dict[str, str]]] = []

    def __call__(
        self, url: str, form: dict[str, str], headers: dict[str, str]
    ) -> tuple[int, Mapping[str, str], bytes]:
        self.sent.append((url, form, headers))
        return self.answers.pop(0)


GRANTED = (200, {}, b'{"access_token": "t", "token_type": "DPoP"}')
NONCE = (400, {"DPoP-Nonce": "n-1"}, b'{"error": "use_dpop_nonce"}')


def test_the_request_is_client_credentials_with_the_secret_in_the_body() -> None:
    endpoint = Endpoint((200, {}, b'{"access_token": "t"}'))
    credential = client.credential_from(VALUES, "here")
    result = client.request_token(credential, endpoint, scope="a b", audience="https://k8s")
    assert isinstance(result, client.Granted)
    [(url, form, headers)] = endpoint.sent
    assert url == URL
    assert form == {
        "grant_type": "client_credentials",
        "client_id": "pipeline@team-a.acme.iam",
        "client_secret": SECRET,
        "scope": "a b",
        "audience": "https://k8s",
    }
    assert headers == {}


def test_with_a_key_each_request_carries_a_fresh_proof_and_a_nonce_is_used_once(
    key: ec.EllipticCurvePrivateKey,
) -> None:
    endpoint = Endpoint(NONCE, GRANTED)
    credential = client.credential_from(VALUES, "here")
    result = client.request_token(credential, endpoint, dpop_key=key, clock=lambda: NOW)
    assert isinstance(result, client.Granted)
    first, second = (_verified(headers["DPoP"])[1] for _, _, headers in endpoint.sent)
    assert "nonce" not in first
    assert second["nonce"] == "n-1"
    assert first["jti"] != second["jti"]
    # A second demand for a nonce is the server's answer, not a loop.
    endpoint = Endpoint(NONCE, NONCE, GRANTED)
    refused = client.request_token(credential, endpoint, dpop_key=key, clock=lambda: NOW)
    assert refused == client.Refused(400, "use_dpop_nonce")
    assert len(endpoint.sent) == 2


def test_without_a_key_a_nonce_demand_is_returned_as_is() -> None:
    endpoint = Endpoint(NONCE)
    result = client.request_token(client.credential_from(VALUES, "here"), endpoint)
    assert result == client.Refused(400, "use_dpop_nonce")
