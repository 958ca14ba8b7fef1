"""DPoP proofs at the token endpoint (RFC 9449 §4.3): every row of the matrix, one rule each."""

from __future__ import annotations

import base64
import dataclasses
import json
import warnings
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st

from kubeiam.tokens import dpop, tokens
from kubeiam.tokens.grants import Error, Refusal, bind
from kubeiam.tokens.holds import HoldsUnavailable, LocalHolds

from ..dpop_support import ProofKey
from .test_tokens_claims import HOUR, ISSUER, NOW, grant, signing_keys

URL = "https://iam.example.test/tenant/oauth2/token"
T = 1_800_000_000
WINDOW = dpop.Window(max_age=60, skew=5)
KEY = ProofKey()


def check(
    *values: str,
    url: str = URL,
    method: str = "POST",
    now: float = T,
    holds: LocalHolds | None = None,
) -> str | Refusal:
    return dpop.check(
        values,
        method=method,
        url=url,
        window=WINDOW,
        now=now,
        holds=LocalHolds() if holds is None else holds,
    )


def refused(result: str | Refusal, rule: str) -> None:
    assert isinstance(result, Refusal), "the proof was accepted"
    assert result.error == Error.INVALID_DPOP_PROOF
    assert rule in result.description


def proof(signer: ProofKey = KEY, **changes: Any) -> str:
    fields: dict[str, Any] = {"htm": "POST", "htu": URL, "iat": T}
    fields.update(changes)
    return signer.proof(**fields)


# -- accepted ----------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "ES384", "EdDSA", "RS256", "PS256"])
def test_a_valid_proof_gives_the_keys_rfc7638_thumbprint(alg: str) -> None:
    key = ProofKey(alg)
    jkt = check(proof(key))
    # An implementation nobody here wrote computes the same thumbprint.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # authlib.jose, still maintained
        from authlib.jose import JsonWebKey

        assert jkt == JsonWebKey.import_key(key.public_jwk()).thumbprint()


def test_the_thumbprint_hashes_only_the_required_members_in_order() -> None:
    # RFC 7638 §3.1's example key, with members it ignores.
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tS"
        "oc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65Y"
        "GjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdk"
        "t-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqD"
        "Kgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert dpop.thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize(
    "htu",
    [
        "HTTPS://IAM.Example.TEST/tenant/oauth2/token",
        "https://iam.example.test:443/tenant/oauth2/token",
        "https://iam.example.test/%74enant/oauth2/token",
        "https://iam.example.test/tenant/./x/../oauth2/token",
        "https://iam.example.test/tenant/oauth2/token?ignored=1#and-this",
    ],
)
def test_htu_is_compared_after_rfc3986_normalisation_ignoring_query_and_fragment(
    htu: str,
) -> None:
    assert isinstance(check(proof(htu=htu)), str)


def test_a_client_clock_a_little_ahead_is_tolerated() -> None:
    assert isinstance(check(proof(iat=T + 5)), str)
    assert isinstance(check(proof(iat=T - 60)), str)


# -- refused -----------------------------------------------------------------------------------


def test_no_header_and_two_headers_are_refused() -> None:
    refused(check(), "exactly one DPoP header")
    refused(check(proof(), proof()), "exactly one DPoP header")


def test_a_proof_over_the_size_bound_is_refused_unread() -> None:
    big = proof(claims={"pad": "x" * dpop.MAX_PROOF_BYTES})
    refused(check(big), f"longer than {dpop.MAX_PROOF_BYTES} bytes")


@pytest.mark.parametrize("text", ["", "not-a-jwt", "a.b.c", "e30.e30"])
def test_what_is_not_a_signed_jwt_is_refused(text: str) -> None:
    refused(check(text), "not a signed JWT")


@pytest.mark.parametrize("typ", ["JWT", "at+jwt", "DPOP+JWT"])
def test_a_proof_without_typ_dpop_jwt_is_refused(typ: str) -> None:
    refused(check(proof(header={"typ": typ})), "typ must be dpop+jwt")


def test_alg_none_is_refused() -> None:
    unsigned = jwt.encode(
        {"jti": "a", "htm": "POST", "htu": URL, "iat": T},
        None,
        algorithm="none",
        headers={"typ": "dpop+jwt", "jwk": KEY.public_jwk()},
    )
    refused(check(unsigned), "alg must be one of")


@pytest.mark.parametrize("alg", ["HS256", "HS512"])
def test_a_mac_is_refused(alg: str) -> None:
    refused(check(proof(key=b"k" * 64, alg=alg)), "alg must be one of")


def test_an_algorithm_outside_the_allowlist_is_refused() -> None:
    es512 = ProofKey("ES256", ec.generate_private_key(ec.SECP521R1()))
    refused(check(es512.proof(htm="POST", htu=URL, iat=T, alg="ES512")), "alg must be one of")


def test_a_private_key_in_jwk_is_refused() -> None:
    refused(check(proof(header={"jwk": KEY.private_jwk()})), "holds private members")


def test_a_symmetric_jwk_is_refused() -> None:
    refused(check(proof(header={"jwk": {"kty": "oct", "k": "c2VjcmV0"}})), "private members")


@pytest.mark.parametrize("change", [{"y": None}, {"x": 12345}])
def test_a_jwk_without_a_member_its_thumbprint_needs_is_refused(change: dict[str, Any]) -> None:
    jwk = {**KEY.public_jwk(), **change}
    jwk = {name: value for name, value in jwk.items() if value is not None}
    refused(check(proof(header={"jwk": jwk})), "lacks a member its key type needs")


def test_a_missing_jwk_is_refused() -> None:
    refused(check(proof(header={"jwk": None})), "carry its public key as jwk")


@pytest.mark.parametrize(
    ("alg", "other"),
    [("ES256", "ES384"), ("RS256", "ES256"), ("EdDSA", "ES256"), ("ES256", "RS256")],
)
def test_a_jwk_that_does_not_fit_the_alg_is_refused(alg: str, other: str) -> None:
    """alg says one key type or curve, jwk is another; refused before any signature is read."""
    header = {"typ": "dpop+jwt", "alg": alg, "jwk": ProofKey(other).public_jwk()}
    claims = {"jti": "j", "htm": "POST", "htu": URL, "iat": T}
    crafted = ".".join(
        base64.urlsafe_b64encode(part).rstrip(b"=").decode()
        for part in (json.dumps(header).encode(), json.dumps(claims).encode(), b"signature")
    )
    refused(check(crafted), f"as alg {alg} needs")


def test_a_signature_by_another_key_is_refused() -> None:
    refused(check(proof(key=ProofKey().private)), "signature does not verify")


def test_a_key_already_read_from_an_accepted_proof_still_refuses_another_signer() -> None:
    # Keys read from proofs are kept (dpop.KEY_CACHE_SIZE): an attacker who copies a client's
    # jwk after that client's proof was accepted still needs its private key.
    client = ProofKey()
    assert isinstance(check(proof(client)), str)
    forged = proof(client, key=ProofKey().private)
    refused(check(forged), "signature does not verify")


def test_a_tampered_payload_is_refused() -> None:
    head, _, signature = proof().split(".")
    other = proof(htu=URL, jti="other").split(".")[1]
    refused(check(f"{head}.{other}.{signature}"), "signature does not verify")


def test_a_short_rsa_key_is_refused() -> None:
    weak = ProofKey("RS256", rsa.generate_private_key(public_exponent=65537, key_size=1024))  # noqa: S505
    refused(check(proof(weak)), "not an acceptable public key")
    refused(check(proof(weak)), "not an acceptable public key")  # and again, once it is known


@pytest.mark.parametrize("claim", ["jti", "htm", "htu", "iat"])
def test_each_required_claim_missing_is_refused(claim: str) -> None:
    refused(check(proof(claims={claim: None})), f"lacks the {claim} claim")


@pytest.mark.parametrize("jti", ["", "j" * (dpop.MAX_JTI_CHARS + 1)])
def test_an_empty_or_overlong_jti_is_refused(jti: str) -> None:
    refused(check(proof(claims={"jti": jti})), "jti must be a string")


def test_a_jti_that_is_not_a_string_is_refused() -> None:
    refused(check(proof(claims={"jti": 7})), "jti must be a string")


@pytest.mark.parametrize("htm", ["GET", "post", "PUT"])
def test_another_method_is_refused(htm: str) -> None:
    refused(check(proof(htm=htm)), "htm is not this request's method")


@pytest.mark.parametrize(
    "htu",
    [
        "https://iam.example.test/tenant/oauth2/introspect",
        "https://other.example.test/tenant/oauth2/token",
        "http://iam.example.test/tenant/oauth2/token",
        "https://iam.example.test:8443/tenant/oauth2/token",
        "https://user@iam.example.test/tenant/oauth2/token",
        "/tenant/oauth2/token",
        "https://iam.example.test/tenant/oauth2/token/",
    ],
)
def test_another_url_is_refused(htu: str) -> None:
    refused(check(proof(htu=htu)), "htu is not the token endpoint's URL")


def test_an_htu_that_is_not_a_string_is_refused() -> None:
    refused(check(proof(claims={"htu": ["x"]})), "htu is not the token endpoint's URL")


def test_an_old_proof_is_refused() -> None:
    refused(check(proof(iat=T - 61)), "more than 60 seconds old")


def test_a_proof_from_the_future_is_refused() -> None:
    refused(check(proof(iat=T + 6)), "iat is in the future")


@pytest.mark.parametrize("iat", ["1800000000", 1.8e9, True])
def test_an_iat_that_is_not_an_integer_is_refused(iat: object) -> None:
    refused(check(proof(claims={"iat": iat})), "iat must be an integer")


def test_a_replayed_proof_is_refused_for_as_long_as_it_is_young_enough() -> None:
    holds = LocalHolds()
    once = proof(jti="only-once")
    assert isinstance(check(once, holds=holds), str)
    refused(check(once, holds=holds), "used before")
    refused(check(once, holds=holds, now=T + 60), "used before")
    # Once the hold ends, the proof is too old anyway.
    refused(check(once, holds=holds, now=T + 62), "seconds old")


class _Full:
    """Holds that cannot answer (a full shared table)."""

    def take(self, key: bytes, until: float, now: float) -> bool:
        raise HoldsUnavailable("full")


def test_a_proof_whose_replay_cannot_be_checked_is_refused_never_accepted() -> None:
    checked = dpop.check(
        [proof(jti="unchecked")], method="POST", url=URL, window=WINDOW, now=T, holds=_Full()
    )
    refused(checked, "cannot tell whether the proof was used before")


def test_the_same_jti_under_another_key_is_another_proof() -> None:
    holds = LocalHolds()
    assert isinstance(check(proof(jti="shared"), holds=holds), str)
    assert isinstance(check(proof(ProofKey(), jti="shared"), holds=holds), str)


def test_a_refused_proof_does_not_use_up_its_jti() -> None:
    holds = LocalHolds()
    refused(check(proof(jti="later", htm="GET"), holds=holds), "htm")
    assert isinstance(check(proof(jti="later"), holds=holds), str)


def test_no_refusal_quotes_the_proof() -> None:
    sent = proof(htm="GET")
    result = check(sent)
    assert isinstance(result, Refusal)
    for part in sent.split("."):
        assert part not in result.description


@given(
    st.text(alphabet="abcXYZ019-._~%/:.?#", max_size=40),
)
def test_normalising_a_url_twice_changes_nothing(path: str) -> None:
    once = dpop.normalised_url("https://Host.example" + "/" + path)
    assert once is None or dpop.normalised_url(once) == once


# -- the token it binds ------------------------------------------------------------------------


def test_a_credential_requiring_dpop_gets_no_token_without_a_proof() -> None:
    plain = grant()
    required = dataclasses.replace(
        plain, credential=dataclasses.replace(plain.credential, require_dpop=True)
    )
    assert bind(required, None) == Refusal(
        Error.INVALID_DPOP_PROOF, "This credential requires a DPoP proof."
    )
    bound = bind(required, "thumb")
    assert not isinstance(bound, Refusal)
    assert bound.jkt == "thumb"


def test_a_proof_binds_any_credentials_token_and_none_leaves_it_bearer() -> None:
    plain = grant()
    assert bind(plain, None) == plain
    bound = bind(plain, "thumb")
    assert not isinstance(bound, Refusal)
    key = signing_keys().active_at(NOW)
    issued = tokens.issue(bound, key, issuer=ISSUER, lifetime=HOUR, now=NOW)
    assert issued.token_type == "DPoP"
    claims = jwt.decode(issued.token, options={"verify_signature": False})
    assert claims["cnf"] == {"jkt": "thumb"}
    bearer = tokens.issue(plain, key, issuer=ISSUER, lifetime=HOUR, now=NOW)
    assert bearer.token_type == "Bearer"
    assert "cnf" not in jwt.decode(bearer.token, options={"verify_signature": False})


# -- server nonces (§8) ------------------------------------------------------------------------

NONCES = dpop.Nonces.derived(b"the signing key's secret bytes", period=60)


def test_a_nonce_is_fresh_in_its_slot_and_the_next_then_stale() -> None:
    nonce = NONCES.issue(T)
    assert NONCES.fresh(nonce, T)
    assert NONCES.fresh(nonce, T + 60)
    assert not NONCES.fresh(nonce, T + 120)
    # A replica whose clock runs a little ahead issued it: still fresh here.
    assert NONCES.fresh(NONCES.issue(T + 60), T)
    assert not NONCES.fresh(NONCES.issue(T + 120), T)


def test_every_replica_deriving_from_the_same_key_accepts_the_others_nonces() -> None:
    replica = dpop.Nonces.derived(b"the signing key's secret bytes", period=60)
    assert replica.fresh(NONCES.issue(T), T)
    stranger = dpop.Nonces.derived(b"another key", period=60)
    assert not stranger.fresh(NONCES.issue(T), T)


@pytest.mark.parametrize(
    "nonce",
    [None, 7, "", "no-dot", "30000000.", "30000000.forged", "٣٠٠٠٠٠٠٠.x", "x" * 65],
)
def test_what_is_not_our_nonce_is_not_fresh(nonce: object) -> None:
    assert not NONCES.fresh(nonce, T)


def test_a_forged_mac_for_the_current_slot_is_not_fresh() -> None:
    slot, _, mac = NONCES.issue(T).partition(".")
    flipped = ("A" if mac[0] != "A" else "B") + mac[1:]
    assert not NONCES.fresh(f"{slot}.{flipped}", T)


def check_nonced(sent: str, holds: LocalHolds) -> str | Refusal:
    return dpop.check(
        [sent], method="POST", url=URL, window=WINDOW, holds=holds, now=T, nonces=NONCES
    )


def test_with_nonces_a_proof_without_a_fresh_one_is_use_dpop_nonce() -> None:
    holds = LocalHolds()
    for claims in ({}, {"nonce": "1.forged"}, {"nonce": NONCES.issue(T - 120)}):
        result = check_nonced(proof(jti="j", claims=claims), holds)
        assert isinstance(result, Refusal)
        assert result.error == Error.USE_DPOP_NONCE
        assert "DPoP-Nonce" in result.description
    # None of those used up the jti: the same jti with the server's nonce is accepted.
    assert isinstance(check_nonced(proof(jti="j", claims={"nonce": NONCES.issue(T)}), holds), str)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
HEADER_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "typ": st.sampled_from(["dpop+jwt", "JWT"]) | JSON,
        "alg": st.sampled_from([*dpop.ALGORITHMS, "none", "HS256"]) | JSON,
        "jwk": st.just(KEY.public_jwk()) | JSON,
    },
)


def _segment(value: object) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@given(header=HEADER_FIELDS, claims=JSON, signature=st.binary(max_size=80))
def test_any_crafted_proof_is_refused_and_never_raises(
    header: dict[str, Any], claims: object, signature: bytes
) -> None:
    """Whatever a client puts in the three parts, the answer is a refusal, not an exception (a
    signature of random bytes never verifies)."""
    crafted = f"{_segment(header)}.{_segment(claims)}.{_segment(signature)}"
    assert isinstance(check(crafted), Refusal)


@given(st.text(max_size=200))
def test_any_text_is_refused_and_never_raises(text: str) -> None:
    assert isinstance(check(text), Refusal)
