"""Whether a token is trusted: each check in order, the classic forgeries, and messages that say
what was found against what was expected without ever showing the token."""

from __future__ import annotations

import ast
import base64
import datetime
import hashlib
import hmac
import inspect
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from kubeiam.domain.conditions import Reason
from kubeiam.oidc import tokens as tokens_module
from kubeiam.oidc.cel.condition import compile_condition
from kubeiam.oidc.jwks import KeySet, parse_jwks
from kubeiam.oidc.tokens import MAX_TOKEN_LENGTH, Check, TokenVerdict, TrustTerms, evaluate_token

GITHUB = "https://token.actions.githubusercontent.com"
NOW = datetime.datetime(2026, 11, 23, 12, 0, tzinfo=datetime.UTC)
LEEWAY = datetime.timedelta(seconds=60)
EPOCH = int(NOW.timestamp())

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
STRANGER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(algorithm: Any, key: Any, kid: str, **members: Any) -> dict[str, Any]:
    return {**algorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, **members}


KEYS = parse_jwks(
    {
        "keys": [
            public_jwk(RSAAlgorithm, RSA_KEY, "rsa-1"),
            public_jwk(ECAlgorithm, EC_KEY, "ec-1", alg="ES256", use="sig"),
            public_jwk(OKPAlgorithm, ED_KEY, "ed-1"),
        ]
    },
    max_keys=20,
    source="spec.jwks",
)
ONE_KEY = parse_jwks(
    {"keys": [public_jwk(RSAAlgorithm, RSA_KEY, "rsa-1", alg="RS256")]},
    max_keys=20,
    source="spec.jwks",
)
CONDITION = compile_condition(
    'claims.repository == "acme/api" && claims.repository_id == "123456"'
    ' && claims.ref == "refs/heads/main"'
)
TERMS = TrustTerms(
    issuer=GITHUB, audiences=("sts.example", "kube-iam"), subject=None, condition=CONDITION
)
ORDER = [
    "enabled",
    "format",
    "algorithm",
    "key",
    "signature",
    "issuer",
    "lifetime",
    "audience",
    "subject",
    "condition",
]


def github_claims(**changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": GITHUB,
        "aud": "sts.example",
        "sub": "repo:acme/api:ref:refs/heads/main",
        "repository": "acme/api",
        "repository_id": "123456",
        "repository_owner": "acme",
        "repository_owner_id": "7890",
        "ref": "refs/heads/main",
        "workflow": "deploy",
        "iat": EPOCH - 10,
        "nbf": EPOCH - 10,
        "exp": EPOCH + 300,
    }
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def mint(
    claims: dict[str, Any] | None = None,
    *,
    algorithm: str = "RS256",
    key: Any = RSA_KEY,
    kid: str | None = "rsa-1",
    **header: Any,
) -> str:
    headers = {**header, **({"kid": kid} if kid is not None else {})}
    payload = github_claims() if claims is None else claims
    return jwt.encode(payload, key, algorithm=algorithm, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segments(header: Any, payload: Any) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"


# Every string the checks' messages are written from: hypothesis draws test strings from the
# code's own constants, and one of those found in a message was not echoed from the token.
_WORDING = [
    node.value
    for node in ast.walk(ast.parse(inspect.getsource(tokens_module)))
    if isinstance(node, ast.Constant) and isinstance(node.value, str)
]


def _echoed(part: str, text: str) -> bool:
    """`part` of the input is in the message text, and not because the code wrote it there."""
    return len(part) >= 8 and part in text and not any(part in words for words in _WORDING)


def check(
    token: str,
    terms: TrustTerms = TERMS,
    keys: KeySet = KEYS,
    now: datetime.datetime = NOW,
) -> TokenVerdict:
    verdict = evaluate_token(token, terms, keys, now=now, leeway=LEEWAY)
    text = " ".join(c.message for c in verdict.checks)
    stripped = token.strip()
    assert not _echoed(stripped, text)  # never the token
    signature = stripped.rsplit(".", 1)[-1]
    assert not _echoed(signature, text)  # never its signature
    return verdict


def failure(token: str, **kwargs: Any) -> Check:
    verdict = check(token, **kwargs)
    assert not verdict.accepted
    failed = verdict.failure
    assert failed is not None
    assert failed is verdict.checks[-1]
    assert [c.name for c in verdict.checks] == ORDER[: len(verdict.checks)]
    assert failed.reason is not None
    return failed


# -- accepted ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "key", "kid"),
    [
        ("RS256", RSA_KEY, "rsa-1"),
        ("RS512", RSA_KEY, "rsa-1"),
        ("PS256", RSA_KEY, "rsa-1"),
        ("ES256", EC_KEY, "ec-1"),
        ("EdDSA", ED_KEY, "ed-1"),
    ],
)
def test_a_github_style_token_is_accepted(algorithm: str, key: Any, kid: str) -> None:
    verdict = check(mint(algorithm=algorithm, key=key, kid=kid))
    assert verdict.accepted
    assert verdict.failure is None
    assert [c.name for c in verdict.checks] == ORDER
    assert all(c.passed and c.reason is None for c in verdict.checks)
    assert verdict.claims is not None
    assert verdict.claims["repository"] == "acme/api"


def test_the_checks_say_what_they_found() -> None:
    messages = {c.name: c.message for c in check(mint()).checks}
    assert messages["key"] == "key 'rsa-1' is an RSA key for RS256"
    assert messages["signature"] == "the signature verifies with key 'rsa-1' (RS256)"
    assert messages["issuer"] == f"iss is '{GITHUB}'"
    assert (
        messages["lifetime"] == "valid until 2026-11-23T12:05:00Z; it is now 2026-11-23T12:00:00Z"
    )
    assert messages["audience"] == "aud 'sts.example' is accepted"
    assert messages["subject"] == "the trust does not require a subject"


def test_a_token_read_from_a_file_may_end_with_a_newline() -> None:
    assert check(mint() + "\n").accepted


def test_one_key_and_no_kid_needs_no_choosing() -> None:
    assert check(mint(kid=None), keys=ONE_KEY).accepted


# -- enabled, format ---------------------------------------------------------------------------


def test_a_disabled_trust_refuses_before_anything_else() -> None:
    failed = failure(mint(), terms=TrustTerms(GITHUB, ("sts.example",), None, CONDITION, True))
    assert failed.name == "enabled"
    assert failed.reason is Reason.DISABLED
    assert (
        check("not even a token", terms=TrustTerms(GITHUB, (), None, CONDITION, True))
        .checks[0]
        .reason
        is Reason.DISABLED
    )


VALID = mint()
HEADER, PAYLOAD, SIGNATURE = VALID.split(".")
NAN = b64(b'{"exp": NaN}')
REPEATED = b64(b'{"a": 1, "a": 2}')


@pytest.mark.parametrize(
    ("token", "fragment"),
    [
        ("", "the token is empty"),
        (" \n", "the token is empty"),
        (f".{PAYLOAD}.{SIGNATURE}", "the token's header is empty"),
        ("not a token", "this token has 1"),
        (f"{HEADER}.{PAYLOAD}", "this token has 2"),
        (f"{HEADER}.{PAYLOAD}.{SIGNATURE}.x", "this token has 4"),
        ("a.b.c.d.e", "encrypted (a JWE, five parts)"),
        (f"{HEADER}!.{PAYLOAD}.{SIGNATURE}", "the token's header is not base64url"),
        (f"{HEADER}.{PAYLOAD}.{SIGNATURE}+", "the token's signature is not base64url"),
        (f"{b64(b'not json')}.{PAYLOAD}.{SIGNATURE}", "the token's header is not JSON"),
        (f"{b64(b'[1]')}.{PAYLOAD}.{SIGNATURE}", "the token's header is not a JSON object"),
        (f"{HEADER}.{b64(b'{')}.{SIGNATURE}", "the token's payload is not JSON"),
        (f"{HEADER}.{b64(bytes([0xFF]))}.{SIGNATURE}", "the token's payload is not JSON"),
        (f"{HEADER}.{NAN}.{SIGNATURE}", "the token's payload is not JSON"),
        (f"{HEADER}.{REPEATED}.{SIGNATURE}", "has the member 'a' twice"),
        (f"{segments({'typ': 'JWT'}, {})}.{SIGNATURE}", 'the token\'s header has no "alg"'),
        (f"{segments({'alg': 'RS256', 'kid': 7}, {})}.{SIGNATURE}", "kid is not a string"),
        (
            f"{segments({'alg': 'RS256', 'crit': ['exp'], 'exp': 1}, {})}.{SIGNATURE}",
            "critical extensions",
        ),
        (
            f"{segments({'alg': 'RS256', 'b64': False, 'crit': ['b64']}, {})}.{SIGNATURE}",
            "critical extensions",
        ),
        ("a" * (MAX_TOKEN_LENGTH + 1), f"more than the {MAX_TOKEN_LENGTH} accepted"),
    ],
)
def test_a_malformed_token_is_refused_with_what_is_wrong(token: str, fragment: str) -> None:
    failed = failure(token)
    assert failed.name == "format"
    assert failed.reason is Reason.TOKEN_MALFORMED
    assert fragment in failed.message


def test_a_deeply_nested_payload_is_malformed_not_a_crash() -> None:
    payload = b64(b"[" * 100_000 + b"]" * 100_000)
    failed = failure(f"{HEADER}.{payload}.{SIGNATURE}")
    assert failed.reason is Reason.TOKEN_MALFORMED


# -- algorithm and key -------------------------------------------------------------------------


@pytest.mark.parametrize("none", ["none", "None", "NONE"])
def test_an_unsigned_token_is_refused(none: str) -> None:
    token = segments({"alg": none, "typ": "JWT"}, github_claims()) + "."
    failed = failure(token)
    assert failed.name == "algorithm"
    assert failed.reason is Reason.ALGORITHM_NOT_ALLOWED
    assert "the token is unsigned (alg none)" in failed.message


def test_hs256_signed_with_the_issuers_public_key_is_refused() -> None:
    # The algorithm-confusion forgery: anyone can fetch the public key and use it as an HMAC
    # secret; a verifier that lets the token choose the algorithm would accept this.
    public_pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = segments({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, github_claims())
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{b64(mac)}"
    verdict = check(forged)
    failed = failure(forged)
    assert failed.name == "algorithm"
    assert failed.reason is Reason.ALGORITHM_NOT_ALLOWED
    assert "alg is 'HS256' (a shared-secret algorithm" in failed.message
    assert verdict.claims is None
    assert "signature" not in [c.name for c in verdict.checks]


@pytest.mark.parametrize("algorithm", ["HS384", "HS512", "RSA-OAEP", "ES256K"])
def test_other_algorithms_are_refused(algorithm: str) -> None:
    token = segments({"alg": algorithm, "kid": "rsa-1"}, github_claims()) + ".c2ln"
    assert failure(token).reason is Reason.ALGORITHM_NOT_ALLOWED


def test_the_key_must_be_of_the_type_the_algorithm_needs() -> None:
    # An ES256 header over an RSA key's kid: the key decides, not the token.
    token = segments({"alg": "ES256", "kid": "rsa-1"}, github_claims()) + ".c2ln"
    failed = failure(token)
    assert failed.name == "key"
    assert failed.reason is Reason.ALGORITHM_NOT_ALLOWED
    assert "alg is ES256, but key 'rsa-1' is an RSA key for PS256, PS384" in failed.message


def test_a_key_that_declares_its_algorithm_verifies_that_one_only() -> None:
    failed = failure(mint(algorithm="PS256"), keys=ONE_KEY)
    assert failed.reason is Reason.ALGORITHM_NOT_ALLOWED
    assert "key 'rsa-1' is an RSA key for RS256" in failed.message


def test_an_unknown_kid_is_refused_with_the_kids_the_issuer_has() -> None:
    failed = failure(mint(kid="rotated-away"))
    assert failed.name == "key"
    assert failed.reason is Reason.UNKNOWN_KEY_ID
    assert "kid 'rotated-away' is not one of the issuer's keys (ec-1, ed-1, rsa-1)" in (
        failed.message
    )


def test_a_missing_kid_is_refused_when_the_issuer_has_several_keys() -> None:
    failed = failure(mint(kid=None))
    assert failed.reason is Reason.UNKNOWN_KEY_ID
    assert "the token has no kid and the issuer has 3 keys (ec-1, ed-1, rsa-1)" in failed.message


# -- signature ---------------------------------------------------------------------------------


def test_a_token_signed_by_another_key_is_refused() -> None:
    verdict = check(mint(key=STRANGER_KEY))
    failed = failure(mint(key=STRANGER_KEY))
    assert failed.name == "signature"
    assert failed.reason is Reason.SIGNATURE_INVALID
    assert failed.message == "the signature does not verify with key 'rsa-1' (RS256)"
    assert verdict.claims is None


def test_a_changed_claim_breaks_the_signature() -> None:
    tampered = segments(
        {"alg": "RS256", "typ": "JWT", "kid": "rsa-1"}, github_claims(repository="acme/evil")
    )
    failed = failure(f"{tampered}.{SIGNATURE}")
    assert failed.reason is Reason.SIGNATURE_INVALID


def test_an_ecdsa_signature_of_the_wrong_length_is_refused() -> None:
    token = mint(algorithm="ES256", key=EC_KEY, kid="ec-1")
    header, payload, signature = token.split(".")
    assert failure(f"{header}.{payload}.{signature[:-4]}").reason is Reason.SIGNATURE_INVALID


SIGNED = f"{HEADER}.{PAYLOAD}"
# The last character of a segment may carry only padding bits, so it is left alone.
CHANGEABLE = [i for i in range(len(SIGNED) - 1) if "." not in SIGNED[i : i + 2]]
BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@given(st.sampled_from(CHANGEABLE), st.sampled_from(BASE64URL))
def test_changing_any_header_or_payload_character_is_never_accepted(
    position: int, replacement: str
) -> None:
    changed = SIGNED[:position] + replacement + SIGNED[position + 1 :]
    if changed != SIGNED:
        assert not check(f"{changed}.{SIGNATURE}").accepted


@given(st.text(max_size=300))
def test_any_text_gives_a_verdict_without_echoing_it(text: str) -> None:
    verdict = check(text)
    assert not verdict.accepted
    assert verdict.failure is not None


# -- claims ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("iss", "fragment"),
    [
        ("https://token.actions.githubusercontent.com/", "compared exactly"),
        ("https://evil.example", f"iss is 'https://evil.example', the trust accepts '{GITHUB}'"),
        (None, f"the token has no iss; the trust accepts '{GITHUB}'"),
    ],
)
def test_the_issuer_must_match_exactly(iss: str | None, fragment: str) -> None:
    failed = failure(mint(github_claims(iss=iss)))
    assert failed.name == "issuer"
    assert failed.reason is Reason.ISSUER_MISMATCH
    assert fragment in failed.message


def test_an_expired_token_within_the_leeway_is_accepted() -> None:
    assert check(mint(github_claims(exp=EPOCH - 30))).accepted


def test_an_expired_token_beyond_the_leeway_is_refused() -> None:
    failed = failure(mint(github_claims(exp=EPOCH - 120, iat=EPOCH - 900, nbf=EPOCH - 900)))
    assert failed.name == "lifetime"
    assert failed.reason is Reason.TOKEN_EXPIRED
    assert failed.message == (
        "the token expired at 2026-11-23T11:58:00Z, 2m ago; it is now 2026-11-23T12:00:00Z and"
        " the leeway is 60s"
    )


def test_the_clock_is_the_callers() -> None:
    token = mint(github_claims(exp=EPOCH + 300))
    assert check(token, now=NOW + datetime.timedelta(minutes=4)).accepted
    later = failure(token, now=NOW + datetime.timedelta(minutes=7))
    assert later.reason is Reason.TOKEN_EXPIRED


def test_a_token_without_exp_is_refused() -> None:
    failed = failure(mint(github_claims(exp=None)))
    assert failed.name == "lifetime"
    assert failed.reason is Reason.TOKEN_MALFORMED
    assert "a token that never expires is not accepted" in failed.message


@pytest.mark.parametrize("exp", ["tomorrow", True, [1], 10**400])
def test_an_exp_that_is_not_a_time_is_refused(exp: Any) -> None:
    failed = failure(mint(github_claims(exp=exp)))
    assert failed.reason is Reason.TOKEN_MALFORMED


def test_a_token_not_yet_valid_within_the_leeway_is_accepted() -> None:
    assert check(mint(github_claims(nbf=EPOCH + 30, iat=EPOCH + 30))).accepted


def test_a_token_not_yet_valid_beyond_the_leeway_is_refused() -> None:
    failed = failure(mint(github_claims(nbf=EPOCH + 300)))
    assert failed.reason is Reason.TOKEN_NOT_YET_VALID
    assert "not valid before 2026-11-23T12:05:00Z (nbf), 5m from now" in failed.message


def test_a_token_issued_in_the_future_is_refused() -> None:
    failed = failure(mint(github_claims(iat=EPOCH + 3600, nbf=None)))
    assert failed.reason is Reason.TOKEN_NOT_YET_VALID
    assert "issued at 2026-11-23T13:00:00Z (iat), 60m in the future" in failed.message


def test_a_list_audience_is_accepted_when_it_holds_one_of_the_trusts() -> None:
    verdict = check(mint(github_claims(aud=["other", "kube-iam"])))
    assert verdict.accepted
    assert verdict.checks[ORDER.index("audience")].message == "aud 'kube-iam' is accepted"


@pytest.mark.parametrize(
    ("aud", "message"),
    [
        ("x", "aud is ['x'], the trust accepts ['sts.example', 'kube-iam']"),
        (["x", "y"], "aud is ['x', 'y'], the trust accepts ['sts.example', 'kube-iam']"),
        (None, "the token has no aud; the trust accepts ['sts.example', 'kube-iam']"),
        (7, "aud is neither a string nor a list of strings"),
        ([], "aud is neither a string nor a list of strings"),
    ],
)
def test_a_token_for_another_audience_is_refused(aud: Any, message: str) -> None:
    failed = failure(mint(github_claims(aud=aud)))
    assert failed.name == "audience"
    assert failed.reason is Reason.AUDIENCE_MISMATCH
    assert failed.message.startswith(message)


def test_the_subject_must_match_when_the_trust_sets_one() -> None:
    subject = "repo:acme/api:ref:refs/heads/main"
    terms = TrustTerms(GITHUB, ("sts.example",), subject, CONDITION)
    assert check(mint(), terms=terms).accepted
    failed = failure(mint(github_claims(sub="repo:acme/api:pull_request")), terms=terms)
    assert failed.name == "subject"
    assert failed.reason is Reason.SUBJECT_MISMATCH
    assert failed.message == (
        "sub is 'repo:acme/api:pull_request', the trust requires"
        " 'repo:acme/api:ref:refs/heads/main'"
    )
    assert "the token has no sub" in failure(mint(github_claims(sub=None)), terms=terms).message


def test_a_condition_that_is_false_refuses_the_token() -> None:
    failed = failure(mint(github_claims(repository="acme/evil")))
    assert failed.name == "condition"
    assert failed.reason is Reason.CONDITION_FALSE
    assert failed.message.startswith("the condition is false for this token: 'claims.repository")


def test_a_condition_that_cannot_be_evaluated_refuses_the_token() -> None:
    failed = failure(mint(github_claims(ref=None)))
    assert failed.reason is Reason.CONDITION_ERROR
    assert "the token has no claim or key 'ref'" in failed.message


def test_hostile_claims_are_a_condition_error_not_a_stall() -> None:
    nested: Any = "deep"
    for _ in range(40):
        nested = [nested]
    failed = failure(mint(github_claims(blob=nested)))
    assert failed.reason is Reason.CONDITION_ERROR
    assert "nest deeper than" in failed.message


def test_a_verdict_is_accepted_only_when_the_signature_and_condition_checks_ran() -> None:
    passed = Check("format", True, None, "fine")
    assert not TokenVerdict(checks=(passed,)).accepted
    assert not TokenVerdict(checks=()).accepted


def test_the_clock_must_know_its_timezone() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate_token(VALID, TERMS, KEYS, now=NOW.replace(tzinfo=None), leeway=LEEWAY)
