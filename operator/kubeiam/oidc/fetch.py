"""Fetching an issuer's discovery document and JWKS, written as code that faces the internet.

An issuer URL comes from a user's spec and a jwks_uri from a stranger's server, so every request
is https with verified TLS, bounded in time and size, never redirected to another host, and never
sent to a loopback, link-local or private address unless the operator's settings allow it. The
address check runs inside the connection (a resolver that drops refused addresses), so a name
that resolves to a public address when checked and a private one when connected cannot slip by.

Which reason a failure carries:
- IssuerUnreachable: no usable answer could be had: a refused URL or address, DNS, connection,
  TLS, timeouts, a status other than 200, a redirect, or a discovery document that is too large,
  not a JSON object, or gives no https jwks_uri.
- IssuerMismatch: the discovery document names another issuer than the one asked for.
- JwksInvalid: the JWKS is too large, not JSON, not an object or has no "keys" list.
"""

from __future__ import annotations

import asyncio
import datetime
import http
import ipaddress
import json
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from kubeiam.domain.conditions import Reason
from kubeiam.oidc.addresses import IPAddress, IPNetwork, refusal
from kubeiam.oidc.refresh import parse_cache_control
from kubeiam.settings import IssuerSettings

__all__ = ["FetchPolicy", "IssuerDocuments", "IssuerError", "fetch_issuer"]


DISCOVERY_PATH = "/.well-known/openid-configuration"
MAX_REDIRECTS = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Text that came from an issuer (a URL it names, its issuer value) is cut to this length before
# it reaches a message: a condition message is for a person, not a channel for a stranger's data.
_SHOWN_CHARS = 200
_HEADERS = {"Accept": "application/json", "User-Agent": "kube-iam"}

_ALLOWED_NETWORKS_SETTING = "KUBEIAM_ISSUER_ALLOWED_NETWORKS"
_CA_BUNDLE_SETTING = "KUBEIAM_ISSUER_CA_BUNDLE"
_CONNECT_TIMEOUT_SETTING = "KUBEIAM_ISSUER_CONNECT_TIMEOUT"
_READ_TIMEOUT_SETTING = "KUBEIAM_ISSUER_READ_TIMEOUT"
_MAX_BYTES_SETTING = "KUBEIAM_ISSUER_MAX_RESPONSE_BYTES"


@dataclass(frozen=True)
class FetchPolicy:
    """How far kube-iam goes to reach an issuer: trusted CAs, allowed networks, time, size."""

    ca_bundle: Path | None
    allowed_networks: tuple[IPNetwork, ...]
    connect_timeout: float
    read_timeout: float
    max_response_bytes: int

    @classmethod
    def from_settings(cls, settings: IssuerSettings) -> FetchPolicy:
        networks: list[IPNetwork] = []
        for text in settings.allowed_networks:
            try:
                networks.append(ipaddress.ip_network(text))
            except ValueError as error:
                raise ValueError(f"{_ALLOWED_NETWORKS_SETTING}: {error}") from None
        return cls(
            ca_bundle=settings.ca_bundle,
            allowed_networks=tuple(networks),
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            max_response_bytes=settings.max_response_bytes,
        )

    @property
    def request_timeout(self) -> float:
        """The longest one request may take, connecting and reading included."""
        return self.connect_timeout + self.read_timeout


class IssuerError(Exception):
    """An issuer could not be checked; `message` says which URL and why, for a person."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class IssuerDocuments:
    """What an issuer check brings back: the key set as JSON, where it came from, how fresh."""

    jwks_uri: str
    jwks: dict[str, Any]
    max_age: datetime.timedelta | None


async def fetch_issuer(
    issuer: str, *, jwks_uri: str | None, policy: FetchPolicy
) -> IssuerDocuments:
    """Fetch the issuer's JWKS, through its discovery document unless `jwks_uri` is given.

    The discovery document is `<issuer>/.well-known/openid-configuration` (a trailing slash of
    the issuer dropped first, as OpenID Connect Discovery says) and its `issuer` must equal
    `issuer` exactly. Raises IssuerError with the reason a trust's Ready condition shows.
    """
    _https_url(issuer, "issuer", policy)
    if jwks_uri is not None:
        _https_url(jwks_uri, "JWKS URL", policy)
    context = _tls_context(policy)
    resolver = _GuardedResolver(policy.allowed_networks)
    # Each document may take a request and its redirects; the whole check is bounded too, so a
    # slow issuer holds up the checks queued behind it for a known time at most.
    deadline = 2 * policy.request_timeout
    try:
        async with (
            _session(policy, context, resolver) as session,
            asyncio.timeout(deadline),
        ):
            return await _fetch_documents(session, issuer, jwks_uri, policy)
    except TimeoutError:
        raise IssuerError(
            Reason.ISSUER_UNREACHABLE,
            f"Checking the issuer {_shown(issuer)} took longer than {deadline:g}s in all (two "
            f"documents, each allowed {_CONNECT_TIMEOUT_SETTING} plus {_READ_TIMEOUT_SETTING}).",
        ) from None
    finally:
        await resolver.close()


async def _fetch_documents(
    session: aiohttp.ClientSession, issuer: str, jwks_uri: str | None, policy: FetchPolicy
) -> IssuerDocuments:
    max_ages: list[datetime.timedelta | None] = []
    if jwks_uri is None:
        discovery_url = issuer.rstrip("/") + DISCOVERY_PATH
        body, cache_control = await _get(
            session, discovery_url, "discovery document", Reason.ISSUER_UNREACHABLE, policy
        )
        max_ages.append(parse_cache_control(cache_control))
        jwks_uri = _jwks_uri_of(body, issuer, discovery_url, policy)
    body, cache_control = await _get(session, jwks_uri, "JWKS", Reason.JWKS_INVALID, policy)
    max_ages.append(parse_cache_control(cache_control))
    jwks = _json(body, jwks_uri, "JWKS", Reason.JWKS_INVALID)
    if not isinstance(jwks, dict):
        raise IssuerError(
            Reason.JWKS_INVALID, f"The JWKS at {_shown(jwks_uri)} is not a JSON object."
        )
    if not isinstance(jwks.get("keys"), list):
        raise IssuerError(
            Reason.JWKS_INVALID, f'The JWKS at {_shown(jwks_uri)} has no "keys" list.'
        )
    return IssuerDocuments(
        jwks_uri=jwks_uri,
        jwks=jwks,
        max_age=min((age for age in max_ages if age is not None), default=None),
    )


def _jwks_uri_of(body: bytes, issuer: str, discovery_url: str, policy: FetchPolicy) -> str:
    """The jwks_uri of a discovery document that describes `issuer`, or IssuerError."""
    document = _json(body, discovery_url, "discovery document", Reason.ISSUER_UNREACHABLE)
    if not isinstance(document, dict):
        raise IssuerError(
            Reason.ISSUER_UNREACHABLE,
            f"The discovery document at {_shown(discovery_url)} is not a JSON object.",
        )
    named = document.get("issuer")
    if named != issuer:
        said = "names no issuer" if named is None else f"names the issuer {_shown(str(named))}"
        raise IssuerError(
            Reason.ISSUER_MISMATCH,
            f"The discovery document at {_shown(discovery_url)} {said}, but the trust names "
            f"{_shown(issuer)}; the two must be equal exactly.",
        )
    jwks_uri = document.get("jwks_uri")
    if not isinstance(jwks_uri, str) or not jwks_uri:
        raise IssuerError(
            Reason.ISSUER_UNREACHABLE,
            f"The discovery document at {_shown(discovery_url)} gives no jwks_uri.",
        )
    _https_url(jwks_uri, "jwks_uri", policy, source=discovery_url)
    return jwks_uri


async def _get(
    session: aiohttp.ClientSession,
    url: str,
    what: str,
    content_reason: Reason,
    policy: FetchPolicy,
) -> tuple[bytes, str | None]:
    """The body and Cache-Control of a 200 answer from `url`, after same-host redirects."""
    current = _https_url(url, what, policy)
    for _ in range(MAX_REDIRECTS + 1):
        try:
            async with session.get(current, allow_redirects=False) as response:
                if response.status in _REDIRECTS:
                    current = _redirect_target(current, response, what, policy)
                    continue
                if response.status != 200:
                    raise IssuerError(
                        Reason.ISSUER_UNREACHABLE,
                        f"The {what} at {_shown(str(current))} answered HTTP "
                        f"{_status_text(response.status)}, not 200 OK.",
                    )
                body = await _read_capped(response, current, what, content_reason, policy)
                return body, response.headers.get("Cache-Control")
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise _unreachable(error, current, what, policy) from None
    raise IssuerError(
        Reason.ISSUER_UNREACHABLE,
        f"The {what} at {_shown(url)} redirected more than {MAX_REDIRECTS} times.",
    )


def _redirect_target(
    current: URL, response: aiohttp.ClientResponse, what: str, policy: FetchPolicy
) -> URL:
    """Where a redirect leads, if it stays on the same scheme, host and port."""
    location = response.headers.get("Location")
    if not location:
        raise IssuerError(
            Reason.ISSUER_UNREACHABLE,
            f"The {what} at {_shown(str(current))} answered HTTP "
            f"{_status_text(response.status)} without a Location.",
        )
    try:
        target = current.join(URL(location))
    except ValueError:
        raise IssuerError(
            Reason.ISSUER_UNREACHABLE,
            f"The {what} at {_shown(str(current))} redirected to something that is not a URL.",
        ) from None
    if target.scheme != "https":
        raise IssuerError(
            Reason.ISSUER_UNREACHABLE,
            f"The {what} at {_shown(str(current))} redirected to {_origin(target)}, which is "
            "not https: a redirect away from https refused.",
        )
    if target.origin() != current.origin():
        raise IssuerError(
            Reason.ISSUER_UNREACHABLE,
            f"The {what} at {_shown(str(current))} redirected from {_origin(current)} to "
            f"{_origin(target)}: a redirect to another host refused.",
        )
    return _https_url(str(target), what, policy)


async def _read_capped(
    response: aiohttp.ClientResponse,
    url: URL,
    what: str,
    reason: Reason,
    policy: FetchPolicy,
) -> bytes:
    """The body, read no further than the cap: a declared length is checked before reading,
    and the bytes are counted as they come, since the length may be absent or a lie."""
    cap = policy.max_response_bytes
    too_large = IssuerError(
        reason,
        f"The {what} at {_shown(str(url))} is larger than the {cap}-byte cap "
        f"({_MAX_BYTES_SETTING}).",
    )
    if response.content_length is not None and response.content_length > cap:
        raise too_large
    body = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > cap:
            raise too_large
    return bytes(body)


def _json(body: bytes, url: str, what: str, reason: Reason) -> object:
    """The parsed body, whatever Content-Type claimed; the error never repeats the body."""
    try:
        parsed: object = json.loads(body)
    except UnicodeDecodeError:
        raise IssuerError(reason, f"The {what} at {_shown(url)} is not UTF-8 text.") from None
    except json.JSONDecodeError as error:
        raise IssuerError(
            reason,
            f"The {what} at {_shown(url)} is not valid JSON ({error.msg} at line "
            f"{error.lineno}, column {error.colno}).",
        ) from None
    except (ValueError, RecursionError):
        raise IssuerError(
            reason, f"The {what} at {_shown(url)} is not JSON kube-iam can read."
        ) from None
    return parsed


def _https_url(raw: str, what: str, policy: FetchPolicy, *, source: str | None = None) -> URL:
    """`raw` parsed, if it is an https URL to a host kube-iam may fetch from."""
    where = "" if source is None else f" named by {_shown(source)}"
    try:
        url = URL(raw)
    except (TypeError, ValueError):
        url = None
    if url is None or not url.absolute or not url.host:
        raise IssuerError(
            Reason.ISSUER_UNREACHABLE, f"The {what}{where} ({_shown(raw)}) is not a URL."
        )
    if url.user is not None or url.password is not None:
        # Shown without its user info: that may be a password.
        raise IssuerError(
            Reason.ISSUER_UNREACHABLE,
            f"The {what} {_shown(str(url.with_user(None)))}{where} carries a user name or "
            "password, which kube-iam does not send to issuers.",
        )
    if url.scheme != "https":
        raise IssuerError(
            Reason.ISSUER_UNREACHABLE,
            f"The {what} {_shown(raw)}{where} is not an https URL; issuers are fetched over "
            "https only.",
        )
    # aiohttp connects to an IP literal without asking the resolver, so it is checked here.
    literal = _ip_literal(url.host)
    if literal is not None:
        kind = refusal(literal, policy.allowed_networks)
        if kind is not None:
            raise IssuerError(
                Reason.ISSUER_UNREACHABLE,
                f"The {what} {_shown(raw)}{where} points at {literal}, {kind}, which issuers "
                f"may not use unless {_ALLOWED_NETWORKS_SETTING} includes it.",
            )
    return url.with_fragment(None)


# -- addresses ---------------------------------------------------------------------------------


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


class _AddressRefused(OSError):
    """Every address a name resolved to is one an issuer may not use."""


class _GuardedResolver(AbstractResolver):
    """aiohttp's resolver, minus the addresses issuers may not use.

    aiohttp connects to exactly the addresses its resolver returns, so filtering here checks
    the address of the very connection, not of an earlier lookup a DNS answer could change.
    """

    def __init__(self, allowed: tuple[IPNetwork, ...]) -> None:
        self._inner = aiohttp.ThreadedResolver()
        self._allowed = allowed

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        kept: list[ResolveResult] = []
        refused: list[str] = []
        for result in results:
            address = _ip_literal(result["host"])
            kind = "not an IP address" if address is None else refusal(address, self._allowed)
            if kind is None:
                kept.append(result)
            else:
                refused.append(f"{result['host']}, {kind}")
        if results and not kept:
            raise _AddressRefused(
                f"{host} resolves only to addresses an issuer may not use "
                f"({'; '.join(dict.fromkeys(refused))}); {_ALLOWED_NETWORKS_SETTING} lists the "
                "networks allowed beside public addresses"
            )
        return kept

    async def close(self) -> None:
        await self._inner.close()


# -- the HTTP client ---------------------------------------------------------------------------


def _tls_context(policy: FetchPolicy) -> ssl.SSLContext:
    """The system's CAs, plus the configured bundle; verification stays on either way."""
    context = ssl.create_default_context()
    if policy.ca_bundle is not None:
        try:
            context.load_verify_locations(cafile=policy.ca_bundle)
        except (OSError, ssl.SSLError) as error:
            cause = error.strerror or type(error).__name__
            raise IssuerError(
                Reason.ISSUER_UNREACHABLE,
                f"The CA bundle {policy.ca_bundle} ({_CA_BUNDLE_SETTING}) could not be loaded "
                f"({cause}), so no issuer can be checked.",
            ) from None
    return context


def _session(
    policy: FetchPolicy, context: ssl.SSLContext, resolver: AbstractResolver
) -> aiohttp.ClientSession:
    """A session for one issuer check: nothing carried over from another issuer's answers."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(resolver=resolver, ssl=context),
        timeout=aiohttp.ClientTimeout(
            total=policy.request_timeout,
            connect=policy.connect_timeout,
            sock_connect=policy.connect_timeout,
            sock_read=policy.read_timeout,
        ),
        headers=_HEADERS,
        cookie_jar=aiohttp.DummyCookieJar(),
        # A proxy from the environment would take the connection past the address checks.
        trust_env=False,
    )


def _unreachable(error: BaseException, url: URL, what: str, policy: FetchPolicy) -> IssuerError:
    """A transport failure as a sentence: what was fetched and what went wrong."""
    cause: str
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        cause = f"no connection within {policy.connect_timeout:g}s ({_CONNECT_TIMEOUT_SETTING})"
    elif isinstance(error, aiohttp.SocketTimeoutError):
        cause = f"no answer within {policy.read_timeout:g}s ({_READ_TIMEOUT_SETTING})"
    elif isinstance(error, TimeoutError):
        cause = f"the answer took longer than {policy.request_timeout:g}s in all"
    elif isinstance(error, aiohttp.ClientConnectorCertificateError):
        verify = getattr(error.certificate_error, "verify_message", None) or "not trusted"
        cause = (
            f"its TLS certificate failed verification ({verify}); a private CA is trusted "
            f"through {_CA_BUNDLE_SETTING}"
        )
    elif isinstance(error, aiohttp.ClientSSLError | ssl.SSLError):
        cause = f"the TLS handshake failed ({_os_cause(error)})"
    elif isinstance(error, aiohttp.ClientConnectorError) and isinstance(
        error.os_error, _AddressRefused
    ):
        cause = str(error.os_error)
    elif isinstance(error, aiohttp.ClientConnectorDNSError):
        cause = f"{error.host} could not be resolved ({_os_cause(error.os_error)})"
    elif isinstance(error, aiohttp.ClientConnectorError):
        cause = f"the connection to {error.host}:{error.port} failed ({_os_cause(error.os_error)})"
    elif isinstance(error, aiohttp.ServerDisconnectedError):
        cause = "the server closed the connection before answering"
    elif isinstance(error, aiohttp.ClientPayloadError):
        cause = "the response was cut short or malformed"
    elif isinstance(error, aiohttp.ClientResponseError):
        cause = "the response was malformed"
    else:
        cause = f"{type(error).__name__}"
    return IssuerError(
        Reason.ISSUER_UNREACHABLE, f"Fetching the {what} at {_shown(str(url))} failed: {cause}."
    )


# -- messages ----------------------------------------------------------------------------------


def _os_cause(error: BaseException) -> str:
    if isinstance(error, OSError) and error.errno is not None and error.errno > 0:
        return os.strerror(error.errno).lower()
    if isinstance(error, OSError) and error.strerror:  # getaddrinfo's errors have errno < 0
        return error.strerror.lower()
    if isinstance(error, ssl.SSLError) and error.reason:
        return str(error.reason)
    return _shown(str(error)) or type(error).__name__


def _origin(url: URL) -> str:
    return _shown(f"{url.scheme}://{url.host}:{url.port}")


def _status_text(status: int) -> str:
    # The standard phrase, not the server's: that is text from a stranger.
    try:
        return f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def _shown(text: str) -> str:
    """Text from outside, safe to repeat in a message: one line, and short."""
    printable = "".join(c if c.isprintable() else "?" for c in text[: _SHOWN_CHARS + 1])
    return printable if len(printable) <= _SHOWN_CHARS else printable[:_SHOWN_CHARS] + "…"
