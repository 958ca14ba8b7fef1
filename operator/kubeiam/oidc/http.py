"""A hardened HTTPS client for documents a stranger's server serves; it knows nothing of OIDC.

Every request is https with verified TLS, bounded in time and size, never redirected to another
origin, and never sent to a loopback, link-local or private address unless the policy allows it.
The address check runs inside the connection (a resolver that drops refused addresses, from
addresses.py), so a name that resolves to a public address when checked and a private one when
connected cannot slip by.
"""

from __future__ import annotations

import contextlib
import http
import ipaddress
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from kubeiam.oidc.addresses import (
    ALLOWED_NETWORKS_SETTING,
    AddressRefused,
    GuardedResolver,
    IPNetwork,
    ip_literal,
    refusal,
)
from kubeiam.settings import IssuerSettings

__all__ = [
    "CONNECT_TIMEOUT_SETTING",
    "READ_TIMEOUT_SETTING",
    "FetchError",
    "FetchPolicy",
    "get",
    "https_url",
    "open_session",
    "shown",
]

MAX_REDIRECTS = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Text that came from a server (a URL it names, a value it gives) is cut to this length before
# it reaches a message: a condition message is for a person, not a channel for a stranger's data.
_SHOWN_CHARS = 200
_HEADERS = {"Accept": "application/json", "User-Agent": "kube-iam"}

_CA_BUNDLE_SETTING = "KUBEIAM_ISSUER_CA_BUNDLE"
CONNECT_TIMEOUT_SETTING = "KUBEIAM_ISSUER_CONNECT_TIMEOUT"
READ_TIMEOUT_SETTING = "KUBEIAM_ISSUER_READ_TIMEOUT"
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
                raise ValueError(f"{ALLOWED_NETWORKS_SETTING}: {error}") from None
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


class FetchError(Exception):
    """No usable answer: `message` says which URL and why, for a person. `too_large` when an
    answer came but its body was beyond the cap, which the caller may judge as bad content."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.too_large = too_large


@contextlib.asynccontextmanager
async def open_session(policy: FetchPolicy) -> AsyncIterator[aiohttp.ClientSession]:
    """A session whose connections go only where the policy allows, with its TLS and timeouts:
    nothing carried over from another session's answers."""
    context = _tls_context(policy)
    resolver = GuardedResolver(policy.allowed_networks)
    try:
        async with _session(policy, context, resolver) as session:
            yield session
    finally:
        await resolver.close()


async def get(
    session: aiohttp.ClientSession, url: str, what: str, policy: FetchPolicy
) -> tuple[bytes, str | None]:
    """The body and Cache-Control of a 200 answer from `url`, after same-host redirects."""
    current = https_url(url, what, policy)
    for _ in range(MAX_REDIRECTS + 1):
        try:
            async with session.get(current, allow_redirects=False) as response:
                if response.status in _REDIRECTS:
                    current = _redirect_target(current, response, what, policy)
                    continue
                if response.status != 200:
                    raise FetchError(
                        f"The {what} at {shown(str(current))} answered HTTP "
                        f"{_status_text(response.status)}, not 200 OK.",
                    )
                body = await _read_capped(response, current, what, policy)
                return body, response.headers.get("Cache-Control")
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise _unreachable(error, current, what, policy) from None
    raise FetchError(
        f"The {what} at {shown(url)} redirected more than {MAX_REDIRECTS} times.",
    )


def _redirect_target(
    current: URL, response: aiohttp.ClientResponse, what: str, policy: FetchPolicy
) -> URL:
    """Where a redirect leads, if it stays on the same scheme, host and port."""
    location = response.headers.get("Location")
    if not location:
        raise FetchError(
            f"The {what} at {shown(str(current))} answered HTTP "
            f"{_status_text(response.status)} without a Location.",
        )
    try:
        target = current.join(URL(location))
    except ValueError:
        raise FetchError(
            f"The {what} at {shown(str(current))} redirected to something that is not a URL.",
        ) from None
    if target.scheme != "https":
        raise FetchError(
            f"The {what} at {shown(str(current))} redirected to {_origin(target)}, which is "
            "not https: a redirect away from https refused.",
        )
    if target.origin() != current.origin():
        raise FetchError(
            f"The {what} at {shown(str(current))} redirected from {_origin(current)} to "
            f"{_origin(target)}: a redirect to another host refused.",
        )
    return https_url(str(target), what, policy)


async def _read_capped(
    response: aiohttp.ClientResponse,
    url: URL,
    what: str,
    policy: FetchPolicy,
) -> bytes:
    """The body, read no further than the cap: a declared length is checked before reading,
    and the bytes are counted as they come, since the length may be absent or a lie."""
    cap = policy.max_response_bytes
    too_large = FetchError(
        f"The {what} at {shown(str(url))} is larger than the {cap}-byte cap "
        f"({_MAX_BYTES_SETTING}).",
        too_large=True,
    )
    if response.content_length is not None and response.content_length > cap:
        raise too_large
    body = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > cap:
            raise too_large
    return bytes(body)


def https_url(raw: str, what: str, policy: FetchPolicy, *, source: str | None = None) -> URL:
    """`raw` parsed, if it is an https URL to a host kube-iam may fetch from."""
    where = "" if source is None else f" named by {shown(source)}"
    try:
        url = URL(raw)
    except (TypeError, ValueError):
        url = None
    if url is None or not url.absolute or not url.host:
        raise FetchError(f"The {what}{where} ({shown(raw)}) is not a URL.")
    if url.user is not None or url.password is not None:
        # Shown without its user info: that may be a password.
        raise FetchError(
            f"The {what} {shown(str(url.with_user(None)))}{where} carries a user name or "
            "password, which kube-iam does not send to issuers.",
        )
    if url.scheme != "https":
        raise FetchError(
            f"The {what} {shown(raw)}{where} is not an https URL; issuers are fetched over "
            "https only.",
        )
    # aiohttp connects to an IP literal without asking the resolver, so it is checked here.
    literal = ip_literal(url.host)
    if literal is not None:
        kind = refusal(literal, policy.allowed_networks)
        if kind is not None:
            raise FetchError(
                f"The {what} {shown(raw)}{where} points at {literal}, {kind}, which issuers "
                f"may not use unless {ALLOWED_NETWORKS_SETTING} includes it.",
            )
    return url.with_fragment(None)


# -- the HTTP client ---------------------------------------------------------------------------


def _tls_context(policy: FetchPolicy) -> ssl.SSLContext:
    """The system's CAs, plus the configured bundle; verification stays on either way."""
    context = ssl.create_default_context()
    if policy.ca_bundle is not None:
        try:
            context.load_verify_locations(cafile=policy.ca_bundle)
        except (OSError, ssl.SSLError) as error:
            cause = error.strerror or type(error).__name__
            raise FetchError(
                f"The CA bundle {policy.ca_bundle} ({_CA_BUNDLE_SETTING}) could not be loaded "
                f"({cause}), so no issuer can be checked.",
            ) from None
    return context


def _session(
    policy: FetchPolicy, context: ssl.SSLContext, resolver: AbstractResolver
) -> aiohttp.ClientSession:
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


def _unreachable(error: BaseException, url: URL, what: str, policy: FetchPolicy) -> FetchError:
    """A transport failure as a sentence: what was fetched and what went wrong."""
    cause: str
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        cause = f"no connection within {policy.connect_timeout:g}s ({CONNECT_TIMEOUT_SETTING})"
    elif isinstance(error, aiohttp.SocketTimeoutError):
        cause = f"no answer within {policy.read_timeout:g}s ({READ_TIMEOUT_SETTING})"
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
        error.os_error, AddressRefused
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
    return FetchError(f"Fetching the {what} at {shown(str(url))} failed: {cause}.")


# -- messages ----------------------------------------------------------------------------------


def _os_cause(error: BaseException) -> str:
    if isinstance(error, OSError) and error.errno is not None and error.errno > 0:
        return os.strerror(error.errno).lower()
    if isinstance(error, OSError) and error.strerror:  # getaddrinfo's errors have errno < 0
        return error.strerror.lower()
    if isinstance(error, ssl.SSLError) and error.reason:
        return str(error.reason)
    return shown(str(error)) or type(error).__name__


def _origin(url: URL) -> str:
    return shown(f"{url.scheme}://{url.host}:{url.port}")


def _status_text(status: int) -> str:
    # The standard phrase, not the server's: that is text from a stranger.
    try:
        return f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def shown(text: str) -> str:
    """Text from outside, safe to repeat in a message: one line, and short."""
    printable = "".join(c if c.isprintable() else "?" for c in text[: _SHOWN_CHARS + 1])
    return printable if len(printable) <= _SHOWN_CHARS else printable[:_SHOWN_CHARS] + "…"
