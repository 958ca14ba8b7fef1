"""Fetching an issuer's discovery document and JWKS, on the hardened client of http.py.

An issuer URL comes from a user's spec and a jwks_uri from a stranger's server, so every request
goes through http.py: https only, bounded, same-origin redirects, addresses checked at connect.

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
import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from kubeiam.domain.conditions import Reason
from kubeiam.oidc.http import (
    CONNECT_TIMEOUT_SETTING,
    READ_TIMEOUT_SETTING,
    FetchError,
    FetchPolicy,
    get,
    https_url,
    open_session,
    shown,
)
from kubeiam.oidc.refresh import parse_cache_control

__all__ = ["IssuerDocuments", "IssuerError", "fetch_issuer"]


DISCOVERY_PATH = "/.well-known/openid-configuration"


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
    # Each document may take a request and its redirects; the whole check is bounded too, so a
    # slow issuer holds up the checks queued behind it for a known time at most.
    deadline = 2 * policy.request_timeout
    try:
        https_url(issuer, "issuer", policy)
        if jwks_uri is not None:
            https_url(jwks_uri, "JWKS URL", policy)
        async with open_session(policy) as session, asyncio.timeout(deadline):
            return await _fetch_documents(session, issuer, jwks_uri, policy)
    except TimeoutError:
        raise IssuerError(
            Reason.ISSUER_UNREACHABLE,
            f"Checking the issuer {shown(issuer)} took longer than {deadline:g}s in all (two "
            f"documents, each allowed {CONNECT_TIMEOUT_SETTING} plus {READ_TIMEOUT_SETTING}).",
        ) from None
    except FetchError as error:  # a refused URL, or the CA bundle: nothing could be fetched
        raise IssuerError(Reason.ISSUER_UNREACHABLE, error.message) from None


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
            Reason.JWKS_INVALID, f"The JWKS at {shown(jwks_uri)} is not a JSON object."
        )
    if not isinstance(jwks.get("keys"), list):
        raise IssuerError(Reason.JWKS_INVALID, f'The JWKS at {shown(jwks_uri)} has no "keys" list.')
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
            f"The discovery document at {shown(discovery_url)} is not a JSON object.",
        )
    named = document.get("issuer")
    if named != issuer:
        said = "names no issuer" if named is None else f"names the issuer {shown(str(named))}"
        raise IssuerError(
            Reason.ISSUER_MISMATCH,
            f"The discovery document at {shown(discovery_url)} {said}, but the trust names "
            f"{shown(issuer)}; the two must be equal exactly.",
        )
    jwks_uri = document.get("jwks_uri")
    if not isinstance(jwks_uri, str) or not jwks_uri:
        raise IssuerError(
            Reason.ISSUER_UNREACHABLE,
            f"The discovery document at {shown(discovery_url)} gives no jwks_uri.",
        )
    https_url(jwks_uri, "jwks_uri", policy, source=discovery_url)
    return jwks_uri


async def _get(
    session: aiohttp.ClientSession,
    url: str,
    what: str,
    content_reason: Reason,
    policy: FetchPolicy,
) -> tuple[bytes, str | None]:
    """The body and Cache-Control of a 200 answer; a body beyond the cap is `content_reason`."""
    try:
        return await get(session, url, what, policy)
    except FetchError as error:
        reason = content_reason if error.too_large else Reason.ISSUER_UNREACHABLE
        raise IssuerError(reason, error.message) from None


def _json(body: bytes, url: str, what: str, reason: Reason) -> object:
    """The parsed body, whatever Content-Type claimed; the error never repeats the body."""
    try:
        parsed: object = json.loads(body)
    except UnicodeDecodeError:
        raise IssuerError(reason, f"The {what} at {shown(url)} is not UTF-8 text.") from None
    except json.JSONDecodeError as error:
        raise IssuerError(
            reason,
            f"The {what} at {shown(url)} is not valid JSON ({error.msg} at line "
            f"{error.lineno}, column {error.colno}).",
        ) from None
    except (ValueError, RecursionError):
        raise IssuerError(
            reason, f"The {what} at {shown(url)} is not JSON kube-iam can read."
        ) from None
    return parsed
