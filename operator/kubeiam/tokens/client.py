"""`kube-iam token`: a credential as a workload holds it, one request to its token endpoint, and
the RFC 9449 DPoP proof that request may carry.

Everything here but `https_post` and `read_directory` is pure, so the CLI (cli.py) only reads
files or a Secret, calls `request_token` and prints. No value read from a credential ever
reaches an exception message: errors name the key and where it was looked for.
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kubeiam.api.credential import CA_BUNDLE_KEY, DEFAULT_SECRET_KEYS, SecretKeys
from kubeiam.tokens.dpop import THUMBPRINT_MEMBERS, thumbprint

# Where a pod mounts its credential's Secret in our examples (docs/tokens.md); `--dir` default.
DEFAULT_DIRECTORY = Path("/var/run/kube-iam")
# What the command needs of the Secret, by the API's names for its keys (api/credential.py).
NEEDED = ("clientId", "clientSecret", "tokenUrl")
# The Secret's key for each (spec.secretTemplate.keys renames them; ca.crt keeps its name).
KeyNames = Mapping[str, str]
# A token endpoint's answer is small; a larger one is not read past this.
MAX_ANSWER_BYTES = 1024 * 1024
DPOP_TYPE = "dpop+jwt"
DPOP_ALGORITHM = "ES256"


class CredentialError(Exception):
    """A credential that cannot be used as read; the message names the key, never a value."""


@dataclass(frozen=True)
class Credential:
    """What a workload needs to get a token: the four values of the generated Secret."""

    client_id: str
    client_secret: str = field(repr=False)
    token_url: str
    ca_bundle: str | None = None  # PEM; None: the system's CAs


def credential_from(
    values: Mapping[str, str],
    where: str,
    *,
    names: KeyNames = DEFAULT_SECRET_KEYS,
    token_url: str | None = None,
    ca_bundle: str | None = None,
) -> Credential:
    """The credential in `values` (the Secret's keys, decoded), the overrides winning."""
    found = {need: values.get(names[need], "").strip() for need in NEEDED}
    if token_url:
        found["tokenUrl"] = token_url
    missing = [names[need] for need in NEEDED if not found[need]]
    if missing:
        raise CredentialError(f"{where} has no {', '.join(missing)}")
    url = found["tokenUrl"]
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise CredentialError(
            f"the token URL ({names['tokenUrl']} in {where}) must be an https URL"
        )
    return Credential(
        client_id=found["clientId"],
        client_secret=found["clientSecret"],
        token_url=url,
        ca_bundle=ca_bundle or (values.get(CA_BUNDLE_KEY) or None),
    )


def renamed(values: Mapping[str, str]) -> bool:
    """Whether a key the command needs is missing under its default name: the credential may
    have renamed it (spec.secretTemplate.keys)."""
    return any(DEFAULT_SECRET_KEYS[need] not in values for need in NEEDED)


def key_names(credential: Mapping[str, Any]) -> dict[str, str]:
    """The Secret's key names a ServiceAccountCredential (its body) chose, defaults filled in."""
    spec = credential.get("spec") or {}
    keys = (spec.get("secretTemplate") or {}).get("keys")
    return SecretKeys.model_validate(keys).resolved() if keys else dict(DEFAULT_SECRET_KEYS)


def read_directory(directory: Path) -> dict[str, str]:
    """The credential's keys as files in `directory`, as a pod mounts its Secret."""
    if not directory.is_dir():
        raise CredentialError(f"{directory} is not a directory (where is the Secret mounted?)")
    values = {}
    for key in (*(DEFAULT_SECRET_KEYS[need] for need in NEEDED), CA_BUNDLE_KEY):
        path = directory / key
        if path.is_file():
            try:
                values[key] = path.read_text()
            except (OSError, UnicodeDecodeError):
                raise CredentialError(f"cannot read {path}") from None
    return values


def secret_values(data: Mapping[str, str | bytes] | None) -> dict[str, str]:
    """A Secret's `data` (base64), decoded: what a pod would see as files. A key that is not
    text is left out (a key the command needs is then named as missing)."""
    values = {}
    for key, value in (data or {}).items():
        try:
            values[key] = base64.b64decode(value).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            continue
    return values


# -- the answer --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Granted:
    """A token response (RFC 6749 §5.1), whole."""

    answer: dict[str, Any] = field(repr=False)

    @property
    def token(self) -> str:
        return str(self.answer["access_token"])


@dataclass(frozen=True)
class Refused:
    """An error response (RFC 6749 §5.2), or an answer that is not one."""

    status: int
    error: str
    description: str | None = None

    def message(self) -> str:
        said = f": {self.description}" if self.description else ""
        return f"the token endpoint refused (HTTP {self.status}): {self.error}{said}"


def interpret(status: int, body: bytes) -> Granted | Refused:
    """The token endpoint's answer, read as RFC 6749 says; a body that is not one is `Refused`."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        document = None
    if not isinstance(document, dict):
        return Refused(status, "invalid_response", "the answer is not a JSON object")
    if status == 200:
        if isinstance(document.get("access_token"), str) and document["access_token"]:
            return Granted(document)
        return Refused(status, "invalid_response", "the answer holds no access_token")
    error = document.get("error")
    description = document.get("error_description")
    return Refused(
        status,
        error if isinstance(error, str) and error else "invalid_response",
        description if isinstance(description, str) else None,
    )


# -- DPoP (RFC 9449) ---------------------------------------------------------------------------


def load_dpop_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    """The PEM's EC P-256 private key (the only curve ES256 signs with)."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise CredentialError(
            "--dpop-key must be an unencrypted PEM private key (EC P-256)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise CredentialError("--dpop-key must be an EC P-256 key (DPoP proofs are ES256 here)")
    return key


def public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    """The key's public half as a JWK with only its required members (no private `d`)."""
    full = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {member: str(full[member]) for member in THUMBPRINT_MEMBERS["EC"]}


def dpop_proof(
    key: ec.EllipticCurvePrivateKey,
    *,
    method: str,
    url: str,
    now: datetime.datetime,
    jti: str | None = None,
    nonce: str | None = None,
) -> str:
    """An RFC 9449 §4.2 proof for one request: `htu` is the URL without query and fragment."""
    parts = urllib.parse.urlsplit(url)
    claims: dict[str, Any] = {
        "jti": jti or secrets.token_urlsafe(16),
        "htm": method,
        "htu": urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")),
        "iat": int(now.timestamp()),
    }
    if nonce is not None:
        claims["nonce"] = nonce
    return jwt.encode(
        claims,
        key,
        algorithm=DPOP_ALGORITHM,
        headers={"typ": DPOP_TYPE, "jwk": public_jwk(key)},
    )


def binding_problem(granted: Granted, key: ec.EllipticCurvePrivateKey) -> str | None:
    """Why a token asked for with a DPoP proof is not bound to its key; None when it is.

    The token is our own receipt here, not something we trust: its claims are only read.
    """
    if str(granted.answer.get("token_type", "")).lower() != "dpop":
        return "the token endpoint answered a Bearer token: it did not bind it to the DPoP key"
    try:
        claims = jwt.decode(granted.token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return "the DPoP-bound token is not a JWT whose cnf.jkt can be read"
    bound = claims.get("cnf", {}).get("jkt") if isinstance(claims.get("cnf"), dict) else None
    if bound != thumbprint(public_jwk(key)):
        return "the token's cnf.jkt is not the thumbprint of the DPoP key"
    return None


# -- the request -------------------------------------------------------------------------------

# (url, form, headers) -> (status, response headers, body)
Post = Callable[[str, dict[str, str], dict[str, str]], tuple[int, Mapping[str, str], bytes]]
Clock = Callable[[], datetime.datetime]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def token_form(
    credential: Credential, *, scope: str | None, audience: str | None
) -> dict[str, str]:
    """The client_credentials request (RFC 6749 §4.4.2), client_secret_post."""
    form = {
        "grant_type": "client_credentials",
        "client_id": credential.client_id,
        "client_secret": credential.client_secret,
    }
    if scope:
        form["scope"] = scope
    if audience:
        form["audience"] = audience
    return form


def request_token(
    credential: Credential,
    post: Post,
    *,
    scope: str | None = None,
    audience: str | None = None,
    dpop_key: ec.EllipticCurvePrivateKey | None = None,
    clock: Clock = _now,
) -> Granted | Refused:
    """Ask for a token; with a DPoP key, a fresh proof, and once more with the server's nonce
    when it asks for one (RFC 9449 §8, `use_dpop_nonce`)."""
    form = token_form(credential, scope=scope, audience=audience)
    nonce: str | None = None
    while True:
        headers = {}
        if dpop_key is not None:
            headers["DPoP"] = dpop_proof(
                dpop_key, method="POST", url=credential.token_url, now=clock(), nonce=nonce
            )
        status, answered, body = post(credential.token_url, form, headers)
        result = interpret(status, body)
        offered = {name.lower(): value for name, value in answered.items()}.get("dpop-nonce")
        if (
            isinstance(result, Refused)
            and result.error == "use_dpop_nonce"
            and dpop_key is not None
            and nonce is None
            and offered
        ):
            nonce = offered
            continue
        return result


def https_post(ca_bundle: str | None, timeout: float) -> Post:
    """A `Post` over HTTPS that verifies the server against `ca_bundle` (else the system CAs)."""
    context = ssl.create_default_context(cadata=ca_bundle) if ca_bundle else None

    def post(
        url: str, form: dict[str, str], headers: dict[str, str]
    ) -> tuple[int, Mapping[str, str], bytes]:
        request = urllib.request.Request(  # noqa: S310 - credential_from admits https only
            url,
            data=urllib.parse.urlencode(form).encode("ascii"),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
                **headers,
            },
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as answer:  # noqa: S310
                return answer.status, dict(answer.headers), answer.read(MAX_ANSWER_BYTES)
        except urllib.error.HTTPError as refused:
            with refused:
                return refused.code, dict(refused.headers), refused.read(MAX_ANSWER_BYTES)

    return post
