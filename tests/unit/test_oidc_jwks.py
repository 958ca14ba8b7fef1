"""Reading an issuer's JWKS as untrusted input: which keys are used, skipped or refuse the set."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from kubeiam.domain.conditions import Reason
from kubeiam.oidc.jwks import JwksError, KeySet, parse_jwks

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC384_KEY = ec.generate_private_key(ec.SECP384R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
# Weak on purpose: the set must skip it.
WEAK_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505


def rsa_jwk(kid: str | None = "rsa-1", **members: Any) -> dict[str, Any]:
    jwk = RSAAlgorithm.to_jwk(RSA_KEY.public_key(), as_dict=True)
    return _with(jwk, kid, members)


def ec_jwk(kid: str | None = "ec-1", key: Any = EC_KEY, **members: Any) -> dict[str, Any]:
    return _with(ECAlgorithm.to_jwk(key.public_key(), as_dict=True), kid, members)


def ed_jwk(kid: str | None = "ed-1", **members: Any) -> dict[str, Any]:
    return _with(OKPAlgorithm.to_jwk(ED_KEY.public_key(), as_dict=True), kid, members)


def _with(jwk: dict[str, Any], kid: str | None, members: dict[str, Any]) -> dict[str, Any]:
    jwk = {**jwk, **members}
    if kid is not None:
        jwk["kid"] = kid
    return jwk


def parse(*keys: Any, max_keys: int = 20) -> KeySet:
    return parse_jwks({"keys": list(keys)}, max_keys=max_keys, source="spec.jwks")


def refused(document: Any, max_keys: int = 20) -> str:
    with pytest.raises(JwksError) as caught:
        parse_jwks(document, max_keys=max_keys, source="https://issuer.example/jwks")
    assert caught.value.reason is Reason.JWKS_INVALID
    assert caught.value.message.startswith("https://issuer.example/jwks: ")
    return caught.value.message


def secrets_of(jwk: dict[str, Any]) -> list[str]:
    return [str(value) for name, value in jwk.items() if name not in ("kty", "kid", "crv")]


def test_rsa_ec_and_okp_keys_are_read_by_kid() -> None:
    keys = parse(rsa_jwk(), ec_jwk(), ed_jwk(), rsa_jwk("rsa-2", alg="RS256", use="sig"))
    assert keys.key_ids == ("ec-1", "ed-1", "rsa-1", "rsa-2")
    assert set(keys.keys) == {"ec-1", "ed-1", "rsa-1", "rsa-2"}
    assert keys.keys["rsa-1"].key_type == "RSA"
    assert keys.algorithms["rsa-1"] == {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    assert keys.algorithms["rsa-2"] == {"RS256"}
    assert keys.algorithms["ec-1"] == {"ES256"}
    assert keys.algorithms["ed-1"] == {"EdDSA"}


def test_a_p384_key_verifies_es384_only() -> None:
    assert parse(ec_jwk(key=EC384_KEY)).algorithms["ec-1"] == {"ES384"}


def test_a_single_key_without_kid_is_kept_under_none() -> None:
    keys = parse(rsa_jwk(kid=None))
    assert list(keys.keys) == [None]
    assert keys.key_ids == ()


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ([rsa_jwk()], "a JWKS must be a JSON object, not a list"),
        ("keys", "not a string"),
        (None, "not null"),
        ({}, 'a JWKS must have a "keys" list'),
        ({"keys": {"kid": "a"}}, 'a JWKS must have a "keys" list'),
        ({"keys": []}, "the JWKS has no usable signing key."),
        ({"keys": ["rsa"]}, "key 1 is not a JSON object"),
    ],
)
def test_a_document_that_is_not_a_jwks_is_refused(document: Any, fragment: str) -> None:
    assert fragment in refused(document)


def test_more_keys_than_allowed_are_refused() -> None:
    document = {"keys": [rsa_jwk(f"k{i}") for i in range(4)]}
    assert "the JWKS has 4 keys, more than the 3 allowed" in refused(document, max_keys=3)


def test_a_private_key_refuses_the_set_without_showing_it() -> None:
    private = RSAAlgorithm.to_jwk(RSA_KEY, as_dict=True) | {"kid": "leaked"}
    message = refused({"keys": [ec_jwk(), private]})
    assert 'a JWKS must carry public keys only; key 2 (kid "leaked") includes a private key' in (
        message
    )
    for secret in secrets_of(private):
        assert secret not in message


@pytest.mark.parametrize("member", ["d", "p", "q", "dp", "dq", "qi"])
def test_each_private_member_refuses_the_set(member: str) -> None:
    assert "includes a private key" in refused({"keys": [rsa_jwk(**{member: "AQAB"})]})


def test_an_ec_private_key_refuses_the_set() -> None:
    private = ECAlgorithm.to_jwk(EC_KEY, as_dict=True)
    message = refused({"keys": [private]})
    assert "includes a private key" in message
    assert private["d"] not in message


def test_a_symmetric_key_refuses_the_set_without_showing_it() -> None:
    secret = "c2hhcmVkLXNlY3JldC12YWx1ZQ"
    message = refused({"keys": [rsa_jwk(), {"kty": "oct", "kid": "hmac", "k": secret}]})
    assert 'key 2 (kid "hmac") is a symmetric (oct) key' in message
    assert secret not in message


def test_duplicate_kids_are_refused() -> None:
    message = refused({"keys": [rsa_jwk("same"), ec_jwk("same")]})
    assert 'key 2 (kid "same") repeats a kid another key has' in message


def test_keys_without_kid_are_refused_when_there_are_several() -> None:
    assert "several keys have no kid" in refused({"keys": [rsa_jwk(None), ec_jwk(None)]})
    assert "a key without a kid sits beside others" in refused(
        {"keys": [rsa_jwk(None), ec_jwk("ec-1")]}
    )


def test_a_kid_that_is_not_a_string_is_refused() -> None:
    assert "has a kid that is not a string" in refused({"keys": [rsa_jwk(kid=None) | {"kid": 7}]})


@pytest.mark.parametrize(
    ("key", "why"),
    [
        (rsa_jwk("enc", use="enc"), 'key 2 (kid "enc") is for enc, not signatures'),
        (rsa_jwk("wrap", key_ops=["wrapKey"]), "does not allow verify in key_ops"),
        (rsa_jwk("oaep", alg="RSA-OAEP"), "is for RSA-OAEP, which is not accepted"),
        (rsa_jwk("hmac", alg="HS256"), "is for HS256, which is not accepted"),
        ({"kty": "AKP", "kid": "pq", "pub": "AAAA"}, "has key type AKP, which is not accepted"),
        (ec_jwk("k1", crv="secp256k1"), "has a curve that is not accepted on curve secp256k1"),
    ],
)
def test_keys_not_for_verifying_signatures_here_are_skipped(key: dict[str, Any], why: str) -> None:
    assert parse(rsa_jwk(), key).key_ids == ("rsa-1",)
    message = refused({"keys": [key]})
    assert "the JWKS has no usable signing key (key 1" in message
    assert why.replace("key 2", "key 1") in message


def test_a_short_rsa_key_is_skipped() -> None:
    weak = RSAAlgorithm.to_jwk(WEAK_RSA_KEY.public_key(), as_dict=True) | {"kid": "weak"}
    assert parse(rsa_jwk(), weak).key_ids == ("rsa-1",)
    assert "is a 1024-bit RSA key, shorter than 2048 bits" in refused({"keys": [weak]})


def test_an_rsa_key_of_megabits_is_skipped() -> None:
    # Not a real key: a modulus of 2**20 bits loads all the same, and nothing issues with one.
    modulus = base64.urlsafe_b64encode(b"\xc7" * (128 * 1024)).rstrip(b"=").decode()
    huge = {"kty": "RSA", "kid": "huge", "n": modulus, "e": "AQAB"}
    assert parse(rsa_jwk(), huge).key_ids == ("rsa-1",)
    assert "is a 1048576-bit RSA key, longer than 16384 bits" in refused({"keys": [huge]})


def test_an_algorithm_that_does_not_fit_the_key_refuses_the_set() -> None:
    message = refused({"keys": [ec_jwk(alg="ES384")]})
    assert "declares alg ES384, which does not fit its key type EC on curve P-256" in message
    assert "does not fit its key type RSA" in refused({"keys": [rsa_jwk(alg="ES256")]})


@pytest.mark.parametrize(
    "broken",
    [
        rsa_jwk(n="!!!not-base64!!!"),
        rsa_jwk(e=None),
        ec_jwk(x=ec_jwk()["y"]),  # a point that is not on the curve
        ed_jwk(x="AAAA"),
    ],
)
def test_key_material_that_does_not_load_refuses_the_set(broken: dict[str, Any]) -> None:
    message = refused({"keys": [broken]})
    assert "key material that does not load" in message
    for material in secrets_of(broken):
        assert material not in message


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)
jwk_like = st.fixed_dictionaries(
    {"kty": st.sampled_from(["RSA", "EC", "OKP", "oct", "AKP", 3])},
    optional={
        "kid": st.text(max_size=5) | st.integers(),
        "use": st.sampled_from(["sig", "enc", None]),
        "alg": st.sampled_from(["RS256", "ES256", "EdDSA", "HS256", "none"]),
        "crv": st.sampled_from(["P-256", "P-384", "Ed25519", "X25519"]),
        "n": st.text(max_size=8),
        "e": st.text(max_size=8),
        "x": st.text(max_size=8),
        "y": st.text(max_size=8),
        "d": st.text(max_size=8),
    },
)


@given(json_values | st.fixed_dictionaries({"keys": st.lists(jwk_like | json_values, max_size=4)}))
def test_any_document_gives_keys_or_a_jwks_error(document: Any) -> None:
    try:
        keys = parse_jwks(document, max_keys=3, source="spec.jwks")
    except JwksError as error:
        message = error.message
    else:
        message = json.dumps(keys.key_ids)
        assert keys.keys
    assert message


def test_an_rsa_modulus_eaten_by_yaml_as_false_gets_a_hint_to_quote_it() -> None:
    key = rsa_jwk()
    key["false"] = key.pop("n")  # what kubectl's YAML 1.1 makes of an unquoted `n:`
    message = refused({"keys": [key]})
    assert 'quote the key in YAML ("n": ...)' in message
    assert key["false"] not in message
