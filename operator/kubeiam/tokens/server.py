"""The token server's HTTPS endpoints: discovery, the JWKS, the token endpoint and its health.

Served with aiohttp under the issuer URL's path. A token request's body is bounded (413 before
reading when declared too large, or as soon as it grows past the bound), must be form-encoded
(else 400), and gets `READ_SECONDS` to arrive. The client authenticates with
`client_secret_post` or HTTP Basic (`client_secret_basic`), not both; a Basic failure is
answered 401 with `WWW-Authenticate`. A `DPoP` proof (RFC 9449) is checked once the client is
authenticated (dpop.py) and binds the token it gets; `requireDpop` makes one necessary. The
access log is off and no line names a secret, a token or a proof: a refusal is logged by its
error code and, once the secret was proven, the credential.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import datetime
import logging
import os
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp.web

from kubeiam.domain import key_rotation
from kubeiam.kube import api, memory, tls
from kubeiam.kube.bodies import read_bounded
from kubeiam.kube.resources import CREDENTIALS, TRUSTS
from kubeiam.kube.tls import ServingCertificate
from kubeiam.settings import TOKEN_PATH, Settings
from kubeiam.tokens import dpop, exchange, grants, introspection, key_store, tokens, usage
from kubeiam.tokens import metrics as token_metrics
from kubeiam.tokens.cache import Cache
from kubeiam.tokens.holds import Holds, LocalHolds
from kubeiam.tokens.keys import ALGORITHM, SigningKeys
from kubeiam.tokens.refusal_log import RefusalLog
from kubeiam.tokens.trust_material import TrustMaterial
from kubeiam.tokens.workers import check_certificate

logger = logging.getLogger(__name__)
TRIM_SECONDS = 30.0  # as often as the operator's sweep trims its heap

READ_SECONDS = 5.0
FORGET_SECONDS = 60.0  # how often the token server drops what deleted trusts held
FORM = "application/x-www-form-urlencoded"
CLIENT_CREDENTIALS = "client_credentials"
TOKEN_EXCHANGE = "token_exchange"  # the grant's label in metrics (its URN is exchange.GRANT_TYPE)
# Where the grant a request used is kept on it, for the metrics.
GRANT_KEY = aiohttp.web.RequestKey("kubeiam.grant", str)
REALM = 'Basic realm="kube-iam", charset="UTF-8"'
JWKS_PATH = "/oauth2/jwks"
INTROSPECT_PATH = "/oauth2/introspect"
AUTH_METHODS = ["client_secret_post", "client_secret_basic"]
# What the answers to a token request carry (RFC 6749 §5.1): no cache may keep a token.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

Clock = Callable[[], datetime.datetime]
# What a grant decided, by either way in; bound to a DPoP key before it is signed.
Decided = TypeVar("Decided", grants.Grant, exchange.Exchanged)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class TokenService:
    """The endpoints over one cache and one set of signing keys (set once they are read)."""

    def __init__(
        self,
        settings: Settings,
        cache: Cache,
        *,
        clock: Clock = _now,
        usage_writer: usage.Writer | None = None,
        holds: Holds | None = None,
        trust_material: TrustMaterial | None = None,
    ) -> None:
        self.settings = settings.tokens
        self.org = settings  # every group: token exchange verifies by the trust settings too
        self.trusts = trust_material or TrustMaterial(settings)
        # The DPoP proofs this server has seen (RFC 9449 §11.1): one memory for its workers.
        self.holds: Holds = LocalHolds() if holds is None else holds
        self._nonces_of: tuple[str, dpop.Nonces] | None = None
        self.dpop_window = dpop.Window(
            max_age=self.settings.dpop_max_age.total_seconds(),
            skew=self.settings.dpop_clock_skew.total_seconds(),
        )
        self.usage = usage_writer
        self.cache = cache
        self.keys: SigningKeys | None = None
        self.clock = clock
        self.prefix = urllib.parse.urlsplit(self.settings.issuer).path.rstrip("/")
        self.proxies = self.settings.proxies()

    # -- the application ---------------------------------------------------------------------

    def app(self) -> aiohttp.web.Application:
        # aiohttp's own cap as a backstop; the token handler refuses earlier and more cheaply.
        app = aiohttp.web.Application(client_max_size=self.settings.max_request_bytes)
        p = self.prefix
        app.add_routes(
            [
                aiohttp.web.get(f"{p}/.well-known/openid-configuration", self.metadata),
                aiohttp.web.get(f"{p}/.well-known/oauth-authorization-server", self.metadata),
                aiohttp.web.get(f"{p}{JWKS_PATH}", self.jwks),
                aiohttp.web.post(f"{p}{TOKEN_PATH}", self.token),
                aiohttp.web.post(f"{p}{INTROSPECT_PATH}", self.introspect),
                aiohttp.web.get("/healthz", self.health),
            ]
        )
        return app

    def signing_key_age(self) -> float | None:
        """Seconds since the key that signs now started signing (None before keys are read)."""
        if self.keys is None:
            return None
        now = self.clock()
        started = key_rotation.active_at(self.keys.ring, now).activates
        return max(0.0, (now - started).total_seconds())

    @property
    def ready(self) -> bool:
        return self.cache.ready and self.keys is not None

    async def health(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        if self.ready:
            return aiohttp.web.Response(text="ok")
        waiting = "the cache's first lists" if not self.cache.ready else "the signing key"
        return aiohttp.web.Response(status=503, text=f"not ready: waiting for {waiting}")

    async def metadata(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        """RFC 8414 metadata, also served as OpenID discovery (a JWT verifier reads that)."""
        issuer = self.settings.issuer
        document = {
            "issuer": issuer,
            "token_endpoint": issuer + TOKEN_PATH,
            "jwks_uri": issuer + JWKS_PATH,
            "grant_types_supported": [CLIENT_CREDENTIALS, exchange.GRANT_TYPE],
            "token_endpoint_auth_methods_supported": AUTH_METHODS,
            "introspection_endpoint": issuer + INTROSPECT_PATH,
            "introspection_endpoint_auth_methods_supported": AUTH_METHODS,
            # No authorization endpoint: no response type is supported.
            "response_types_supported": [],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [ALGORITHM],
            "token_endpoint_auth_signing_alg_values_supported": [ALGORITHM],
            "scopes_supported": [],
            "dpop_signing_alg_values_supported": list(dpop.ALGORITHMS),
        }
        return aiohttp.web.json_response(document, headers={"Cache-Control": "max-age=300"})

    async def jwks(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        if self.keys is None:
            return aiohttp.web.Response(status=503, text="the signing key is not loaded yet")
        age = int(self.settings.jwks_max_age.total_seconds())
        return aiohttp.web.json_response(
            self.keys.jwks(), headers={"Cache-Control": f"public, max-age={age}"}
        )

    # -- the token endpoint ------------------------------------------------------------------

    async def token(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        with token_metrics.SECONDS.time():
            answer = await self._token(request)
        if answer.status == 200:
            token_metrics.ISSUED.labels(request.get(GRANT_KEY, CLIENT_CREDENTIALS)).inc()
        elif answer.status in (408, 413, 503):
            token_metrics.REFUSED.labels(str(answer.status)).inc()
        return answer

    async def _token(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        form = await self._read_form(request)
        if isinstance(form, aiohttp.web.Response):
            return form
        if "grant_type" not in form:
            return _error(grants.Error.INVALID_REQUEST, "The grant_type parameter is missing.")
        if form["grant_type"] not in (CLIENT_CREDENTIALS, exchange.GRANT_TYPE):
            return _error(
                grants.Error.UNSUPPORTED_GRANT_TYPE, "Only client_credentials and token-exchange."
            )
        if not self.ready:
            return aiohttp.web.Response(status=503, text="not ready", headers={"Retry-After": "1"})
        if form["grant_type"] == exchange.GRANT_TYPE:
            request[GRANT_KEY] = TOKEN_EXCHANGE
            return await self._token_exchange(form, request)
        return self._client_credentials(form, request.headers.get("Authorization"), request)

    async def _read_form(
        self, request: aiohttp.web.Request
    ) -> dict[str, str] | aiohttp.web.Response:
        """The request's form parameters, or the answer refusing its body."""
        limit = self.settings.max_request_bytes
        if request.content_length is not None and request.content_length > limit:
            return _too_large(limit)
        if request.content_type != FORM:
            return _error(grants.Error.INVALID_REQUEST, f"The body must be {FORM}.")
        try:
            async with asyncio.timeout(READ_SECONDS):
                body = await read_bounded(request, limit)
        except TimeoutError:
            return aiohttp.web.Response(status=408, text="the body did not arrive in time")
        if body is None:
            return _too_large(limit)
        form = _form(body)
        if form is None:
            return _error(grants.Error.INVALID_REQUEST, "The body is not a valid form.")
        return form

    def _address(self, request: aiohttp.web.Request) -> grants.Address | None:
        """The client's address: the peer, or what trusted proxies say (grants.client_address)."""
        return grants.client_address(
            request.remote, request.headers.getall("X-Forwarded-For", []), self.proxies
        )

    def _client_credentials(
        self, form: dict[str, str], basic: str | None, request: aiohttp.web.Request
    ) -> aiohttp.web.Response:
        """Authenticate the client, decide (grants.py), and sign the token it gets."""
        client = _client(form, basic)
        if isinstance(client, grants.Refusal):
            return _refuse(client, basic=basic is not None)
        if "audience" in form and "resource" in form:
            return _error(grants.Error.INVALID_REQUEST, "Give audience or resource, not both.")
        assert self.keys is not None  # ready
        now = self.clock()
        asked = grants.TokenRequest(
            client_id=client[0],
            client_secret=client[1],
            scope=form.get("scope"),
            audience=form.get("audience") or form.get("resource"),
            client_address=self._address(request),
        )
        decision = grants.decide(
            asked,
            credential_by_id=self.cache.credential_by_id,
            account_of=self.cache.account_of,
            allowed_audiences=self.settings.allowed_audiences(),
            now=now,
        )
        if isinstance(decision, grants.Refusal):
            return _refuse(decision, basic=basic is not None)
        nonces = self._nonces()
        # RFC 9449 §8: a nonce to put in the next proof, with every answer from here on.
        fresh = {} if nonces is None else {dpop.NONCE_HEADER: nonces.issue(now.timestamp())}
        decision = self._bound(decision, request, now, nonces)
        if isinstance(decision, grants.Refusal):
            return _refuse(decision, basic=basic is not None, headers=fresh)
        credential = decision.credential
        where = (CREDENTIALS, credential.namespace, credential.name)
        issued, answer = self._granted(decision, where, asked.client_address, now, fresh)
        logger.info(
            "Issued a token to credential %s/%s (id %s) for %s, expiring in %ds.",
            credential.namespace,
            credential.name,
            credential.credential_id,
            decision.audience,
            issued.expires_in,
        )
        return answer

    def _granted(
        self,
        decision: grants.Grant | exchange.Exchanged,
        used: usage.Key,
        address: grants.Address | None,
        now: datetime.datetime,
        headers: dict[str, str],
        extra: dict[str, str] | None = None,
    ) -> tuple[tokens.Issued, aiohttp.web.Response]:
        """Sign the decided token, note the use of what it came through (a credential or a
        trust) for write-back, and answer it (RFC 6749 §5.1; RFC 8693 §2.2.1 adds `extra`)."""
        assert self.keys is not None  # ready
        issued = tokens.issue(
            decision,
            self.keys.active_at(now),
            issuer=self.settings.issuer,
            lifetime=self.settings.lifetime,
            now=now,
        )
        if self.usage is not None:
            where = None if address is None else str(address)
            self.usage.note(used, usage.Use(now, where))
            token_metrics.USAGE_NOTED.inc()
        answer: dict[str, Any] = {
            "access_token": issued.token,
            **(extra or {}),
            "token_type": issued.token_type,
            "expires_in": issued.expires_in,
        }
        if issued.scope:
            answer["scope"] = issued.scope
        return issued, aiohttp.web.json_response(answer, headers={**NO_STORE, **headers})

    def _nonces(self) -> dpop.Nonces | None:
        """The DPoP nonces when the setting asks for them, keyed from the active signing key,
        which every replica reads from the same Secret and switches at the same instant (so
        each accepts the others' nonces; at a rotation, a nonce of the key before is answered
        use_dpop_nonce with a new one)."""
        if not self.settings.dpop_nonces:
            return None
        assert self.keys is not None  # ready
        active = self.keys.active_at(self.clock())
        if self._nonces_of is None or self._nonces_of[0] != active.kid:
            material = active.private.private_numbers().private_value.to_bytes(32, "big")
            period = self.settings.dpop_max_age.total_seconds()
            self._nonces_of = (active.kid, dpop.Nonces.derived(material, period))
        return self._nonces_of[1]

    def _bound(
        self,
        grant: Decided,
        request: aiohttp.web.Request,
        now: datetime.datetime,
        nonces: dpop.Nonces | None,
    ) -> Decided | grants.Refusal:
        """The grant bound to the request's DPoP proof, if it sends one (RFC 9449 §5); a
        credential that requires a proof is refused without one (grants.bind)."""
        proofs = request.headers.getall(dpop.HEADER, [])
        jkt = None
        if proofs:
            checked = dpop.check(
                proofs,
                method=request.method,
                url=self.settings.issuer + TOKEN_PATH,
                window=self.dpop_window,
                holds=self.holds,
                now=now.timestamp(),
                nonces=nonces,
            )
            if isinstance(checked, grants.Refusal):
                return checked
            jkt = checked
        if isinstance(grant, exchange.Exchanged):
            return grant if jkt is None else dataclasses.replace(grant, jkt=jkt)
        return grants.bind(grant, jkt)

    # -- token exchange (RFC 8693) ----------------------------------------------------------

    async def _token_exchange(
        self, form: dict[str, str], request: aiohttp.web.Request
    ) -> aiohttp.web.Response:
        """An external token through one of the account's trusts: exchange.py decides, with
        each candidate trust's policy and keys prepared here (the only awaits on this path)."""
        malformed = _exchange_malformed(form, request.headers.get("Authorization"))
        if malformed is not None:
            return _refuse(malformed, basic=False)
        assert self.keys is not None  # ready
        now = self.clock()
        asked = exchange.ExchangeRequest(
            client_id=form["client_id"],
            subject_token=form["subject_token"],
            subject_token_type=form["subject_token_type"],
            scope=form.get("scope"),
            audience=form.get("audience") or form.get("resource"),
            client_address=self._address(request),
        )
        tried = exchange.candidates(
            asked,
            account_by_client_id=self.cache.account_by_client_id,
            trusts_of=self.cache.trusts_of,
            own_issuer=self.settings.issuer,
        )
        if isinstance(tried, exchange.Denied):
            return _deny(tried)
        prepared = {
            trust.uid: await self.trusts.prepare(trust)
            for trust in tried.trusts
            if exchange.unusable_because(trust) is None
        }
        decision = exchange.decide(asked, tried, prepared=prepared, settings=self.org, now=now)
        if isinstance(decision, exchange.Denied):
            return _deny(decision)
        nonces = self._nonces()
        fresh = {} if nonces is None else {dpop.NONCE_HEADER: nonces.issue(now.timestamp())}
        bound = self._bound(decision, request, now, nonces)
        if isinstance(bound, grants.Refusal):
            return _refuse(bound, basic=False, headers=fresh)
        trust = bound.trust
        where = (TRUSTS, trust.namespace, trust.name)
        extra = {"issued_token_type": exchange.ACCESS_TOKEN_TYPE}
        issued, answer = self._granted(bound, where, asked.client_address, now, fresh, extra)
        logger.info(
            "Exchanged a token through trust %s/%s for account %s, expiring in %ds.",
            trust.namespace,
            trust.name,
            trust.account,
            issued.expires_in,
        )
        return answer

    # -- introspection (RFC 7662) ------------------------------------------------------------

    async def introspect(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        """Whether a token is active, to a caller that authenticates as a client (RFC 7662 §2.1)."""
        form = await self._read_form(request)
        if isinstance(form, aiohttp.web.Response):
            return form
        if not self.ready:
            return aiohttp.web.Response(status=503, text="not ready", headers={"Retry-After": "1"})
        basic = request.headers.get("Authorization")
        caller = _client(form, basic)
        if isinstance(caller, grants.Refusal):
            return _refuse(caller, basic=basic is not None)
        now = self.clock()
        authenticated = grants.authenticate(
            grants.TokenRequest(caller[0], caller[1], client_address=self._address(request)),
            credential_by_id=self.cache.credential_by_id,
            account_of=self.cache.account_of,
            now=now,
        )
        if isinstance(authenticated, grants.Refusal):
            return _refuse(authenticated, basic=basic is not None)
        if not form.get("token"):
            return _error(grants.Error.INVALID_REQUEST, "The token parameter is missing.")
        assert self.keys is not None  # ready
        answer = introspection.introspect(
            form["token"],
            keys=self.keys,
            issuer=self.settings.issuer,
            credential_by_id=self.cache.credential_by_id,
            account_of=self.cache.account_of,
            now=now,
            trust_by_uid=self.cache.trust_by_uid,
        )
        token_metrics.INTROSPECTED.labels("true" if answer["active"] else "false").inc()
        return aiohttp.web.json_response(answer, headers=NO_STORE)


def _form(body: bytes) -> dict[str, str] | None:
    """The form's parameters; None if it is not UTF-8, or names one twice (RFC 6749 §3.2)."""
    try:
        pairs = urllib.parse.parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body)
        )
    except (UnicodeDecodeError, ValueError):
        return None
    form = dict(pairs)
    return form if len(form) == len(pairs) else None


def _client(form: dict[str, str], basic: str | None) -> tuple[str, str] | grants.Refusal:
    """The client id and secret, from Basic or from the body (exactly one of them)."""
    in_body = "client_secret" in form
    if basic is not None:
        if in_body:
            return grants.Refusal(
                grants.Error.INVALID_REQUEST, "Use one client authentication method, not two."
            )
        scheme, _, encoded = basic.partition(" ")
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        if scheme.lower() != "basic" or ":" not in decoded:
            return grants.Refusal(grants.Error.INVALID_CLIENT, "Client authentication failed.")
        # RFC 6749 §2.3.1: both parts are form-encoded before they are joined.
        client_id, _, secret = decoded.partition(":")
        return urllib.parse.unquote_plus(client_id), urllib.parse.unquote_plus(secret)
    if not in_body or not form.get("client_id"):
        return grants.Refusal(grants.Error.INVALID_CLIENT, "Client authentication is required.")
    return form["client_id"], form["client_secret"]


def _exchange_malformed(form: dict[str, str], basic: str | None) -> grants.Refusal | None:
    """What makes a token-exchange request invalid before anything is looked up (RFC 8693 §2.1):
    a missing parameter, a client secret (the subject token is the proof), an actor token, two
    targets, or a token type we do not issue."""
    for name in ("client_id", "subject_token", "subject_token_type"):
        if not form.get(name):
            return grants.Refusal(grants.Error.INVALID_REQUEST, f"The {name} parameter is missing.")
    if basic is not None or "client_secret" in form:
        return grants.Refusal(
            grants.Error.INVALID_REQUEST,
            "A token exchange takes no client secret: the subject token is the proof.",
        )
    if "actor_token" in form or "actor_token_type" in form:
        return grants.Refusal(grants.Error.INVALID_REQUEST, "Actor tokens are not supported.")
    if "audience" in form and "resource" in form:
        return grants.Refusal(grants.Error.INVALID_REQUEST, "Give audience or resource, not both.")
    if form.get("requested_token_type", exchange.ACCESS_TOKEN_TYPE) != exchange.ACCESS_TOKEN_TYPE:
        return grants.Refusal(
            grants.Error.INVALID_REQUEST,
            "The requested_token_type must be urn:ietf:params:oauth:token-type:access_token.",
        )
    return None


def _deny(denied: exchange.Denied) -> aiohttp.web.Response:
    """A refused exchange: the log says what failed (never the token), the answer does not.
    Paced like every refusal (refusal_log.py), by the denial's fixed kind: one INFO line per
    kind a minute, the rest at DEBUG, so a flood of bad subject tokens cannot flood the log."""
    refusal = denied.refusal
    level, _ = _REFUSALS.line(refusal.error.value, f"token exchange: {denied.kind}", _now())
    logger.log(level, "Refused a token exchange: %s (%s).", refusal.error.value, denied.cause)
    return _error(refusal.error, refusal.description)


# One INFO line per kind of refusal a minute, the rest at DEBUG (refusal_log.py says why).
_REFUSALS = RefusalLog()


def _refuse(
    refusal: grants.Refusal, *, basic: bool, headers: dict[str, str] | None = None
) -> aiohttp.web.Response:
    logger.log(*_REFUSALS.line(refusal.error.value, refusal.description, _now()))
    if refusal.error == grants.Error.INVALID_CLIENT and basic:
        challenge = {"WWW-Authenticate": REALM, **(headers or {})}
        return _error(refusal.error, refusal.description, 401, challenge)
    return _error(refusal.error, refusal.description, headers=headers)


def _error(
    code: grants.Error,
    description: str,
    status: int = 400,
    headers: dict[str, str] | None = None,
) -> aiohttp.web.Response:
    """An RFC 6749 §5.2 error answer; `description` is ours, never the request's words."""
    token_metrics.REFUSED.labels(code.value).inc()
    body = {"error": code.value, "error_description": description}
    return aiohttp.web.json_response(body, status=status, headers={**NO_STORE, **(headers or {})})


def _too_large(limit: int) -> aiohttp.web.Response:
    return aiohttp.web.Response(status=413, text=f"a token request is at most {limit} bytes")


def serving_certificate(settings: Settings) -> ServingCertificate:
    cert_dir = settings.tokens.cert_dir
    return ServingCertificate(
        cert_dir / "tls.crt",
        cert_dir / "tls.key",
        what="token server",
        expiry=token_metrics.CERT_EXPIRY,
        warning_lead=settings.tokens.cert_warning_lead,
        consequence="once it has, workloads refuse the token server and get no token. Renew "
        "it: cert-manager does by itself.",
    )


def tls_context(
    settings: Settings, certificate: ServingCertificate | None = None
) -> ssl.SSLContext:
    """A server TLS context holding the serving certificate (`certificate` loads it again
    when its files change)."""
    check_certificate(settings)
    context = ssl.create_default_context(purpose=ssl.Purpose.CLIENT_AUTH)
    (certificate or serving_certificate(settings)).load(context)
    return context


async def _trim_heap(every: float) -> None:
    """Hand what the heap freed back to the OS every `every` seconds (kube/memory.py), so a
    worker's RSS falls back after a burst of connections and requests."""
    while True:
        await asyncio.sleep(every)
        memory.trim()


async def _reload_certificate(certificate: ServingCertificate, context: ssl.SSLContext) -> None:
    """Load the certificate again whenever its files change (cert-manager renewed it)."""
    while True:
        await asyncio.sleep(tls.CHECK_SECONDS)
        certificate.load(context)


async def _until_orphaned(parent: int) -> None:
    """Return once the supervising parent is gone (its workers must not serve on alone)."""
    while os.getppid() == parent:  # noqa: ASYNC110  (no event tells a process its parent died)
        await asyncio.sleep(1)


async def _follow_keys(
    service: TokenService,
    namespace: str,
    load: Callable[[str], Awaitable[SigningKeys | None]],
    every: float,
    loaded: asyncio.Event,
) -> None:
    """Keep the newest signing keys: read their Secret every `every` seconds (waiting for the
    operator to make it at first); a failed read keeps the ring already held."""
    waited = False
    while True:
        try:
            found = await load(namespace)
        except Exception as error:  # the API server restarting: keep what we have, try again
            logger.warning("Cannot read the signing keys now (%s).", type(error).__name__)
            found = None
        if found is not None:
            if service.keys is None or found.ring != service.keys.ring:
                logger.info(
                    "Loaded the signing keys (active key %s; published %s).",
                    found.active_at(service.clock()).kid,
                    ", ".join(key.kid for key in found.ring),
                )
                service.keys = found
            loaded.set()
        elif service.keys is None and not waited:
            logger.info("Waiting for the operator to create the signing keys.")
            waited = True
        await asyncio.sleep(every if service.keys is not None else min(every, 2.0))


async def _forget_deleted_trusts(material: TrustMaterial, cache: Cache) -> None:
    """Now and then, drop the policies of deleted trusts and stop refreshing issuers no trust
    names any more (the cache's watch says which trusts remain)."""
    while True:
        await asyncio.sleep(FORGET_SECONDS)
        material.forget(cache.trust_uids())


async def serve(settings: Settings, holds: Holds, *, parent: int | None = None) -> None:
    """Run one worker until cancelled (or `parent` is gone): the watches and the keys, then
    HTTPS, bound (SO_REUSEPORT, beside the other workers) only once it can answer."""
    memory.limit_arenas(settings.memory.malloc_arena_max)  # before the API client's threads
    api.connect()
    cache = Cache()

    async def write_usage(key: usage.Key, status: dict[str, str | None]) -> None:
        await api.merge_patch_status(*key, status)

    writer = usage.Writer(
        settings.tokens.usage_interval,
        write_usage,
        _now,
        holds=holds,
        last_written=cache.last_used_at,
    )
    material = TrustMaterial(settings)
    service = TokenService(
        settings, cache, usage_writer=writer, holds=holds, trust_material=material
    )
    certificate = serving_certificate(settings)
    context = tls_context(settings, certificate)
    runner = aiohttp.web.AppRunner(service.app(), handle_signals=True, access_log=None)
    await runner.setup()
    cache.start(asyncio.get_running_loop())
    every = settings.tokens.key_refresh_interval.total_seconds()
    loaded = asyncio.Event()
    follow = _follow_keys(service, settings.operator_namespace, key_store.load, every, loaded)
    tasks = [
        asyncio.create_task(follow, name="signing-keys"),
        asyncio.create_task(writer.run(), name="usage-writer"),
        asyncio.create_task(_reload_certificate(certificate, context), name="certificate"),
        asyncio.create_task(token_metrics.report(cache, service.signing_key_age), name="metrics"),
        asyncio.create_task(material.store.run(), name="issuer-refresh"),
        asyncio.create_task(_forget_deleted_trusts(material, cache), name="forget"),
    ]
    if settings.memory.trim:
        tasks.append(asyncio.create_task(_trim_heap(TRIM_SECONDS), name="trim"))
    try:
        await loaded.wait()
        await cache.filled.wait()
        memory.settle()  # imports and the filled cache, out of every later full collection
        site = aiohttp.web.TCPSite(
            runner,
            settings.tokens.address,
            settings.tokens.port,
            ssl_context=context,
            reuse_port=True,
        )
        await site.start()
        logger.info(
            "Ready (the cache holds %s): serving tokens for issuer %s on https://%s:%s.",
            cache.sizes(),
            settings.tokens.issuer,
            settings.tokens.address,
            settings.tokens.port,
        )
        await (asyncio.Event().wait() if parent is None else _until_orphaned(parent))
        logger.warning("The token server's parent process is gone: this worker stops.")
    finally:
        for task in tasks:
            task.cancel()
        cache.stop()
        await runner.cleanup()
