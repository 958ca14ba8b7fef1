"""A real OIDC issuer on loopback for tests: HTTPS from a test CA, discovery, JWKS, minted tokens.

Tests trust it the way an operator would: through its CA bundle (KUBEIAM_ISSUER_CA_BUNDLE) and
loopback allowed explicitly (KUBEIAM_ISSUER_ALLOWED_NETWORKS), never by turning checks off.
Knobs are plain attributes a test sets while the issuer runs; each answer reads them afresh.
"""

from __future__ import annotations

import base64
import datetime
import enum
import hashlib
import hmac
import json
import secrets
import socketserver
import ssl
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from kubeiam.devcluster.certs import KeyPair, create_ca, issue_certificate

DEFAULT_AUDIENCE = "sts.kubeiam.test"
DISCOVERY_PATH = "/.well-known/openid-configuration"
# Where the discovery document is also served, never redirected: a target for same-host redirects.
PLAIN_DISCOVERY_PATH = "/discovery"
KEYS_PATH = "/keys"
# Past the operator's default 256 KiB cap on an issuer's responses.
OVERSIZE_BYTES = 300 * 1024


class _Default(enum.Enum):
    KID = enum.auto()


@dataclass(frozen=True)
class SigningKey:
    """One of the issuer's keys: its kid, the algorithm it signs with, the private key."""

    kid: str
    alg: str
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    def public_jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _new_keys() -> dict[str, SigningKey]:
    """An RS256 and an ES256 key under fresh kids, so a rotation is visible as new kids."""
    return {
        "RS256": SigningKey(
            f"rsa-{secrets.token_hex(4)}",
            "RS256",
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ),
        "ES256": SigningKey(
            f"ec-{secrets.token_hex(4)}", "ES256", ec.generate_private_key(ec.SECP256R1())
        ),
    }


def github_claims(
    repository: str = "acme/api", ref: str = "refs/heads/main", **overrides: Any
) -> dict[str, Any]:
    """Claims shaped like a GitHub Actions OIDC token for a push to `ref` of `repository`."""
    owner = repository.split("/", 1)[0]
    sha = hashlib.sha1(f"{repository}@{ref}".encode(), usedforsecurity=False).hexdigest()
    workflow_ref = f"{repository}/.github/workflows/deploy.yml@{ref}"
    claims: dict[str, Any] = {
        "jti": str(uuid.uuid4()),
        "sub": f"repo:{repository}:ref:{ref}",
        "aud": DEFAULT_AUDIENCE,
        "ref": ref,
        "ref_type": "tag" if ref.startswith("refs/tags/") else "branch",
        "ref_protected": "true",
        "sha": sha,
        "repository": repository,
        # Ids never change when a repository or owner is renamed; derived from the name here
        # only so that different names get different ids, as they do on GitHub.
        "repository_id": _numeric_id(repository),
        "repository_owner": owner,
        "repository_owner_id": _numeric_id(owner),
        "repository_visibility": "private",
        "run_id": "9876543210",
        "run_number": "42",
        "run_attempt": "1",
        "runner_environment": "github-hosted",
        "actor": "octocat",
        "actor_id": "583231",
        "workflow": "deploy",
        "workflow_ref": workflow_ref,
        "workflow_sha": sha,
        "job_workflow_ref": workflow_ref,
        "job_workflow_sha": sha,
        "event_name": "push",
        "head_ref": "",
        "base_ref": "",
    }
    claims.update(overrides)
    return claims


def _numeric_id(name: str) -> str:
    return str(int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big"))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segments(header: dict[str, Any], payload: dict[str, Any]) -> str:
    """The signing input of a JWT built by hand, for tokens PyJWT rightly refuses to make."""
    return ".".join(
        _b64(json.dumps(part, separators=(",", ":")).encode()) for part in (header, payload)
    )


class LocalIssuer:
    """An OIDC issuer at https://localhost:<port>, served from a background thread.

    Knobs (set them at any time; the next answer follows them):
    - `issuer_override`: the `issuer` the discovery document announces instead of `url`.
    - `oversize_jwks`: pad the JWKS past `oversize_bytes`.
    - `redirect_to`: discovery answers 302 to this location.
    - `cache_control`: the Cache-Control header of discovery and JWKS answers.
    - `response_delay`: seconds to wait before answering (a slow issuer).
    - `discovery_body` / `jwks_body`: raw bytes served instead of the documents (bad JSON...).
    - `send_content_length`: False streams bodies without Content-Length.
    `requests` lists the paths asked for, in order.
    """

    def __init__(self, ca_dir: Path | None = None) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if ca_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="kubeiam-issuer-")
            ca_dir = Path(self._tmp.name)
        self.directory = ca_dir
        self.directory.mkdir(parents=True, exist_ok=True)
        ca = KeyPair(self.directory / "issuer-ca.crt", self.directory / "issuer-ca.key")
        if not (ca.cert.exists() and ca.key.exists()):
            # Issuers made with the same ca_dir share one CA: a test trusts one bundle for all.
            create_ca(ca, "kube-iam test issuer CA")
        self.ca_bundle: Path = ca.cert
        stem = f"issuer-{secrets.token_hex(4)}"
        serving = issue_certificate(
            ca,
            KeyPair(self.directory / f"{stem}.crt", self.directory / f"{stem}.key"),
            "localhost",
            server_names=("localhost",),
            server_ips=("127.0.0.1",),
        )
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(serving.cert, serving.key)

        self.issuer_override: str | None = None
        self.oversize_jwks = False
        self.oversize_bytes = OVERSIZE_BYTES
        self.redirect_to: str | None = None
        self.cache_control: str | None = None
        self.response_delay = 0.0
        self.discovery_body: bytes | None = None
        self.jwks_body: bytes | None = None
        self.send_content_length = True
        self.requests: list[str] = []

        self._lock = threading.Lock()
        self._keys = _new_keys()
        self._port = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> LocalIssuer:
        """Listen (on the same port as before, if it ran already) and serve in the background."""
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server(self._port, self)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"local-issuer-{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def down(self) -> None:
        """Stop listening: connections are refused until `up()`, on the same port."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def up(self) -> LocalIssuer:
        """Serve again on the same port, after `down()` (a no-op while up)."""
        return self.start()

    def stop(self) -> None:
        self.down()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> LocalIssuer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what it is --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the issuer has not been started")
        return self._port

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    @property
    def ip_url(self) -> str:
        """The same server by its IP: to a client, another host than `url`."""
        return f"https://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        """The issuer the discovery document announces: `url` unless overridden."""
        return self.issuer_override or self.url

    @property
    def jwks_uri(self) -> str:
        return self.url + KEYS_PATH

    def settings_env(self) -> dict[str, str]:
        """The operator settings that let it reach this issuer: its CA trusted, loopback allowed."""
        return {
            "KUBEIAM_ISSUER_CA_BUNDLE": str(self.ca_bundle),
            "KUBEIAM_ISSUER_ALLOWED_NETWORKS": json.dumps(["127.0.0.0/8", "::1/128"]),
        }

    def key_ids(self) -> tuple[str, ...]:
        return tuple(key.kid for key in self._keys.values())

    def kid(self, alg: str = "RS256") -> str:
        return self._key(alg).kid

    def rotate(self) -> tuple[str, ...]:
        """Replace every key with a new one under a new kid; tokens signed before then carry
        a kid the JWKS no longer has. Returns the new kids."""
        self._keys = _new_keys()
        return self.key_ids()

    def discovery_document(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": self.jwks_uri,
            "subject_types_supported": ["public", "pairwise"],
            "response_types_supported": ["id_token"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            "scopes_supported": ["openid"],
            "claims_supported": ["sub", "aud", "exp", "iat", "iss", "jti", "nbf", "repository"],
        }

    def public_jwks(self) -> dict[str, Any]:
        """The public keys as a JWKS, e.g. for a trust's inline spec.jwks."""
        return {"keys": [key.public_jwk() for key in self._keys.values()]}

    # -- tokens ------------------------------------------------------------------------------

    def mint(
        self,
        claims: dict[str, Any],
        *,
        alg: str = "RS256",
        kid: str | Literal[_Default.KID] | None = _Default.KID,
        lifetime: datetime.timedelta = datetime.timedelta(minutes=10),
        audience: str | list[str] | None = DEFAULT_AUDIENCE,
        headers: dict[str, Any] | None = None,
    ) -> str:
        """A token signed with the issuer's `alg` key. `iss`, `aud`, `iat`, `nbf` and `exp` are
        filled unless `claims` has them; a negative `lifetime` makes an expired token. `kid`
        defaults to the signing key's; None leaves it out, another value names a key that is
        not there."""
        key = self._key(alg)
        header: dict[str, Any] = (
            {} if kid is None else {"kid": key.kid if kid is _Default.KID else kid}
        )
        header.update(headers or {})
        return jwt.encode(
            self._payload(claims, lifetime, audience), key.private, algorithm=alg, headers=header
        )

    def mint_none(self, claims: dict[str, Any]) -> str:
        """An unsigned token (`alg: none`), which a verifier must refuse."""
        payload = self._payload(claims, datetime.timedelta(minutes=10), DEFAULT_AUDIENCE)
        return _segments({"alg": "none", "typ": "JWT"}, payload) + "."

    def mint_hs256_with_public_key(self, claims: dict[str, Any]) -> str:
        """The algorithm-confusion attack: HS256 keyed with the RSA public key's PEM, under the
        RSA key's kid, which a verifier that lets the token pick the algorithm would accept."""
        key = self._key("RS256")
        payload = self._payload(claims, datetime.timedelta(minutes=10), DEFAULT_AUDIENCE)
        signing_input = _segments({"alg": "HS256", "typ": "JWT", "kid": key.kid}, payload)
        signature = hmac.new(key.public_pem(), signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(signature)}"

    github_claims = staticmethod(github_claims)

    def _key(self, alg: str) -> SigningKey:
        try:
            return self._keys[alg]
        except KeyError:
            raise ValueError(
                f"the local issuer signs with {sorted(self._keys)}, not {alg}"
            ) from None

    def _payload(
        self,
        claims: dict[str, Any],
        lifetime: datetime.timedelta,
        audience: str | list[str] | None,
    ) -> dict[str, Any]:
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "iat": now,
            "nbf": now,
            "exp": now + int(lifetime.total_seconds()),
        }
        if audience is not None:
            payload["aud"] = audience
        payload.update(claims)
        return payload

    # -- serving -----------------------------------------------------------------------------

    def _answer(self, target: str) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body for a GET of `target`, following the knobs."""
        path = urlsplit(target).path
        with self._lock:
            self.requests.append(path)
        if self.response_delay:
            self._stopping.wait(self.response_delay)
        if path == DISCOVERY_PATH and self.redirect_to:
            return 302, {"Location": self.redirect_to, "Content-Length": "0"}, b""
        if path in (DISCOVERY_PATH, PLAIN_DISCOVERY_PATH):
            body = self.discovery_body
            if body is None:
                body = json.dumps(self.discovery_document()).encode()
        elif path == KEYS_PATH:
            body = self.jwks_body if self.jwks_body is not None else self._jwks_bytes()
        else:
            return 404, {"Content-Type": "text/plain", "Content-Length": "10"}, b"not found\n"
        headers = {"Content-Type": "application/json"}
        if self.cache_control is not None:
            headers["Cache-Control"] = self.cache_control
        if self.send_content_length:
            headers["Content-Length"] = str(len(body))
        return 200, headers, body

    def _jwks_bytes(self) -> bytes:
        document = self.public_jwks()
        if self.oversize_jwks:
            # Still a well-formed JWKS, just too big: the size cap must be what refuses it.
            document["padding"] = "x" * self.oversize_bytes
        return json.dumps(document).encode()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # HTTP/1.0: every answer closes its connection, so after down() no kept-alive connection
    # goes on answering for an issuer that is supposed to be gone.
    protocol_version = "HTTP/1.0"
    timeout = 10

    def setup(self) -> None:
        super().setup()
        # The handshake runs here, in the request's thread, so a client that stalls or
        # rejects the certificate never holds up the accepting loop.
        self.request.do_handshake()

    def do_GET(self) -> None:
        status, headers, body = self.server.issuer._answer(self.path)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read `requests`; stderr stays quiet


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, issuer: LocalIssuer) -> None:
        self.issuer = issuer
        super().__init__(("127.0.0.1", port), _Handler)
        self.socket = issuer._tls.wrap_socket(
            self.socket, server_side=True, do_handshake_on_connect=False
        )

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, a DNS query tests need not wait on.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "localhost", self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that give up (timeouts, refused certificates) are what many tests are about.
        pass
