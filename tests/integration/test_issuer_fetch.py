"""Issuer discovery and JWKS fetching against a real local HTTPS issuer, over loopback only."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import ipaddress
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import ResolveResult

from kubeiam.domain.conditions import Reason
from kubeiam.oidc.fetch import IssuerDocuments, IssuerError, fetch_issuer
from kubeiam.oidc.http import FetchPolicy
from kubeiam.oidc.keystore import IssuerKey, KeyStore, Schedule
from kubeiam.settings import IssuerSettings

from .oidc_issuer import DISCOVERY_PATH, KEYS_PATH, PLAIN_DISCOVERY_PATH, LocalIssuer
from .support import wait_for

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
CAP = 256 * 1024


@pytest.fixture
def issuer(tmp_path: Path) -> Iterator[LocalIssuer]:
    with LocalIssuer(ca_dir=tmp_path) as running:
        yield running


def policy_for(issuer: LocalIssuer, **changes: Any) -> FetchPolicy:
    """What a platform team sets for a private issuer: its CA trusted, loopback allowed."""
    policy = FetchPolicy(
        ca_bundle=issuer.ca_bundle,
        allowed_networks=(LOOPBACK,),
        connect_timeout=2.0,
        read_timeout=2.0,
        max_response_bytes=CAP,
    )
    return dataclasses.replace(policy, **changes)


def fetch(
    issuer: LocalIssuer, url: str | None = None, *, jwks_uri: str | None = None, **changes: Any
) -> IssuerDocuments:
    return asyncio.run(
        fetch_issuer(url or issuer.url, jwks_uri=jwks_uri, policy=policy_for(issuer, **changes))
    )


def refused(issuer: LocalIssuer, url: str | None = None, **kwargs: Any) -> IssuerError:
    with pytest.raises(IssuerError) as caught:
        fetch(issuer, url, **kwargs)
    error = caught.value
    assert str(error) == error.message
    return error


def kids(documents: IssuerDocuments) -> list[str]:
    return sorted(key["kid"] for key in documents.jwks["keys"])


def test_discovery_then_keys(issuer: LocalIssuer) -> None:
    issuer.cache_control = "public, max-age=600"
    documents = fetch(issuer)
    assert documents.jwks_uri == issuer.url + KEYS_PATH
    assert kids(documents) == sorted(issuer.key_ids())
    assert documents.max_age == datetime.timedelta(minutes=10)
    assert issuer.requests == [DISCOVERY_PATH, KEYS_PATH]


def test_an_issuer_that_says_nothing_about_caching_has_no_max_age(issuer: LocalIssuer) -> None:
    assert fetch(issuer).max_age is None


def test_a_given_jwks_uri_skips_discovery(issuer: LocalIssuer) -> None:
    issuer.cache_control = "no-cache"
    documents = fetch(issuer, jwks_uri=issuer.jwks_uri)
    assert kids(documents) == sorted(issuer.key_ids())
    assert documents.max_age == datetime.timedelta(0)
    assert issuer.requests == [KEYS_PATH]


def test_rotated_keys_are_seen_on_the_next_fetch(issuer: LocalIssuer) -> None:
    before = kids(fetch(issuer))
    issuer.rotate()
    after = kids(fetch(issuer))
    assert after == sorted(issuer.key_ids())
    assert not set(before) & set(after)


def test_a_discovery_document_for_another_issuer_is_a_mismatch(issuer: LocalIssuer) -> None:
    issuer.issuer_override = "https://impostor.example.com"
    error = refused(issuer)
    assert error.reason == Reason.ISSUER_MISMATCH
    assert "https://impostor.example.com" in error.message
    assert issuer.url in error.message
    assert KEYS_PATH not in issuer.requests


def test_the_issuer_must_match_exactly_even_a_trailing_slash(issuer: LocalIssuer) -> None:
    # The discovery URL drops the slash, but the document's issuer must equal what was asked.
    error = refused(issuer, issuer.url + "/")
    assert error.reason == Reason.ISSUER_MISMATCH
    assert issuer.requests == [DISCOVERY_PATH]


@pytest.mark.parametrize("content_length", [True, False], ids=["declared", "streamed"])
def test_an_oversized_jwks_is_refused(issuer: LocalIssuer, content_length: bool) -> None:
    issuer.oversize_jwks = True
    issuer.send_content_length = content_length
    error = refused(issuer)
    assert error.reason == Reason.JWKS_INVALID
    assert f"is larger than the {CAP}-byte cap" in error.message
    assert issuer.jwks_uri in error.message


def test_an_oversized_discovery_document_is_refused(issuer: LocalIssuer) -> None:
    issuer.discovery_body = json.dumps({"issuer": issuer.url, "padding": "x" * CAP}).encode()
    error = refused(issuer)
    assert error.reason == Reason.ISSUER_UNREACHABLE
    assert "larger than the" in error.message


def test_a_redirect_to_another_host_is_refused(issuer: LocalIssuer) -> None:
    issuer.redirect_to = issuer.ip_url + DISCOVERY_PATH
    error = refused(issuer)
    assert error.reason == Reason.ISSUER_UNREACHABLE
    assert "redirect to another host refused" in error.message
    assert f"localhost:{issuer.port}" in error.message
    assert f"127.0.0.1:{issuer.port}" in error.message
    assert issuer.requests == [DISCOVERY_PATH]


def test_a_redirect_on_the_same_host_is_followed(issuer: LocalIssuer) -> None:
    issuer.redirect_to = issuer.url + PLAIN_DISCOVERY_PATH
    documents = fetch(issuer)
    assert kids(documents) == sorted(issuer.key_ids())
    assert issuer.requests == [DISCOVERY_PATH, PLAIN_DISCOVERY_PATH, KEYS_PATH]


def test_a_relative_redirect_is_followed(issuer: LocalIssuer) -> None:
    issuer.redirect_to = PLAIN_DISCOVERY_PATH
    assert kids(fetch(issuer)) == sorted(issuer.key_ids())


def test_redirects_end_after_three_hops(issuer: LocalIssuer) -> None:
    issuer.redirect_to = issuer.url + DISCOVERY_PATH
    error = refused(issuer)
    assert error.reason == Reason.ISSUER_UNREACHABLE
    assert "redirected more than 3 times" in error.message
    assert issuer.requests == [DISCOVERY_PATH] * 4


def test_a_redirect_to_http_is_refused(issuer: LocalIssuer) -> None:
    issuer.redirect_to = f"http://localhost:{issuer.port}{PLAIN_DISCOVERY_PATH}"
    error = refused(issuer)
    assert error.reason == Reason.ISSUER_UNREACHABLE
    assert "a redirect away from https refused" in error.message
    assert issuer.requests == [DISCOVERY_PATH]


def test_an_issuer_that_is_down_is_unreachable_until_it_is_up_again(issuer: LocalIssuer) -> None:
    issuer.down()
    error = refused(issuer)
    assert error.reason == Reason.ISSUER_UNREACHABLE
    assert issuer.url in error.message
    assert "connection refused" in error.message
    issuer.up()
    assert kids(fetch(issuer)) == sorted(issuer.key_ids())


def test_loopback_is_refused_unless_allowed(issuer: LocalIssuer) -> None:
    error = refused(issuer, allowed_networks=())
    assert error.reason == Reason.ISSUER_UNREACHABLE
    assert "127.0.0.1" in error.message
    assert "loopback" in error.message
    assert "KUBEIAM_ISSUER_ALLOWED_NETWORKS" in error.message
    # Refused while connecting: not one request reached the issuer.
    assert issuer.requests == []


def test_loopback_is_fetched_when_its_network_is_allowed(issuer: LocalIssuer) -> None:
    only_this = (ipaddress.ip_network("127.0.0.1/32"),)
    assert kids(fetch(issuer, allowed_networks=only_this)) == sorted(issuer.key_ids())
    other = (ipaddress.ip_network("10.0.0.0/8"),)
    assert refused(issuer, allowed_networks=other).reason == Reason.ISSUER_UNREACHABLE


def test_a_public_name_that_resolves_to_loopback_is_refused_when_connecting(
    issuer: LocalIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DNS rebinding: a name that looked public when the trust was written answers with an
    # internal address when the operator connects. The check is in the connection's resolver.
    real_resolve = aiohttp.ThreadedResolver.resolve

    async def rebound(
        self: aiohttp.ThreadedResolver, host: str, port: int = 0, family: int = socket.AF_INET
    ) -> list[ResolveResult]:
        return await real_resolve(self, "localhost" if host == "issuer.example.com" else host, port)

    monkeypatch.setattr(aiohttp.ThreadedResolver, "resolve", rebound)
    error = refused(issuer, f"https://issuer.example.com:{issuer.port}", allowed_networks=())
    assert error.reason == Reason.ISSUER_UNREACHABLE
    assert "issuer.example.com resolves only to" in error.message
    assert "127.0.0.1, a loopback address" in error.message
    assert issuer.requests == []


def test_an_ip_literal_that_is_not_allowed_is_refused_before_connecting(
    issuer: LocalIssuer,
) -> None:
    error = refused(issuer, issuer.ip_url, allowed_networks=())
    assert error.reason == Reason.ISSUER_UNREACHABLE
    assert "127.0.0.1, a loopback address" in error.message
    assert "KUBEIAM_ISSUER_ALLOWED_NETWORKS" in error.message
    assert issuer.requests == []


@pytest.mark.parametrize(
    ("host", "shown"),
    [
        ("169.254.169.254", "169.254.169.254, a link-local address"),
        ("10.1.2.3", "10.1.2.3, a private address"),
        ("[fd00::1]", "fd00::1, a private address"),
        ("[::ffff:10.0.0.1]", "::ffff:a00:1, a private address"),
        ("0.0.0.0", "0.0.0.0, an unspecified address"),  # noqa: S104 (a URL, not a bind)
        ("224.0.0.251", "224.0.0.251, a multicast address"),
        ("100.64.0.1", "100.64.0.1, a non-public address"),
        # The metadata address inside IPv6 (6to4, NAT64), and site-local.
        ("[2002:a9fe:a9fe::1]", "2002:a9fe:a9fe::1, a link-local address (169.254.169.254,"),
        ("[64:ff9b::a9fe:a9fe]", "64:ff9b::a9fe:a9fe, a link-local address (169.254.169.254,"),
        ("[fec0::1]", "fec0::1, a site-local address"),
    ],
)
def test_a_jwks_uri_on_a_refused_address_is_refused(
    issuer: LocalIssuer, host: str, shown: str
) -> None:
    document = {**issuer.discovery_document(), "jwks_uri": f"https://{host}/keys"}
    issuer.discovery_body = json.dumps(document).encode()
    error = refused(issuer)
    assert error.reason == Reason.ISSUER_UNREACHABLE
    assert shown in error.message
    assert issuer.requests == [DISCOVERY_PATH]


@pytest.mark.parametrize(
    "url", ["http://localhost:{port}", "ftp://localhost:{port}", "localhost:{port}"]
)
def test_only_https_is_fetched(issuer: LocalIssuer, url: str) -> None:
    error = refused(issuer, url.format(port=issuer.port))
    assert error.reason == Reason.ISSUER_UNREACHABLE
    assert issuer.requests == []


def test_a_jwks_uri_over_http_is_refused(issuer: LocalIssuer) -> None:
    document = {**issuer.discovery_document(), "jwks_uri": f"http://localhost:{issuer.port}/keys"}
    issuer.discovery_body = json.dumps(document).encode()
    error = refused(issuer)
    assert error.reason == Reason.ISSUER_UNREACHABLE
    assert "not an https URL" in error.message
    assert issuer.requests == [DISCOVERY_PATH]


def test_credentials_in_a_url_are_refused_and_not_repeated(issuer: LocalIssuer) -> None:
    error = refused(issuer, f"https://user:hunter2@localhost:{issuer.port}")
    assert error.reason == Reason.ISSUER_UNREACHABLE
    assert "hunter2" not in error.message
    assert issuer.requests == []


def test_a_ca_that_is_not_trusted_fails_verification(issuer: LocalIssuer) -> None:
    error = refused(issuer, ca_bundle=None)
    assert error.reason == Reason.ISSUER_UNREACHABLE
    assert "certificate" in error.message
    assert "KUBEIAM_ISSUER_CA_BUNDLE" in error.message
    assert issuer.requests == []


def test_a_missing_ca_bundle_is_named(issuer: LocalIssuer, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-bundle.pem"
    error = refused(issuer, ca_bundle=missing)
    assert error.reason == Reason.ISSUER_UNREACHABLE
    assert str(missing) in error.message


def test_a_slow_issuer_times_out_within_the_read_timeout(issuer: LocalIssuer) -> None:
    # The answer would take two minutes: giving up in well under one shows the read timeout
    # fired, with a margin no loaded machine comes near (this is no speed measurement).
    issuer.response_delay = 120.0
    started = time.monotonic()
    error = refused(issuer, read_timeout=0.3)
    elapsed = time.monotonic() - started
    assert error.reason == Reason.ISSUER_UNREACHABLE
    assert "0.3s" in error.message
    assert elapsed < 60


def test_a_status_other_than_200_is_named(issuer: LocalIssuer) -> None:
    error = refused(issuer, jwks_uri=issuer.url + "/missing")
    assert error.reason == Reason.ISSUER_UNREACHABLE
    assert "404 Not Found" in error.message


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"<html>session=s3cr3t-value</html>", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not"),
        (b'["a list"]', "not a JSON object"),
        (b"[" * 100_000, "not"),
    ],
    ids=["html", "binary", "list", "deep"],
)
def test_a_discovery_document_that_is_not_json_is_refused_without_repeating_it(
    issuer: LocalIssuer, body: bytes, words: str
) -> None:
    issuer.discovery_body = body
    error = refused(issuer)
    assert error.reason == Reason.ISSUER_UNREACHABLE
    assert words in error.message
    assert "s3cr3t" not in error.message
    assert len(error.message) < 400


def test_a_discovery_document_without_jwks_uri_is_refused(issuer: LocalIssuer) -> None:
    issuer.discovery_body = json.dumps({"issuer": issuer.url}).encode()
    error = refused(issuer)
    assert error.reason == Reason.ISSUER_UNREACHABLE
    assert "jwks_uri" in error.message


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{", "not valid JSON"),
        (b'[{"kty": "RSA"}]', "not a JSON object"),
        (b'{"keys": {"kid": "a"}}', '"keys" list'),
        (b"{}", '"keys" list'),
    ],
    ids=["truncated", "list", "keys-object", "empty"],
)
def test_a_jwks_that_is_not_a_key_set_is_invalid(
    issuer: LocalIssuer, body: bytes, words: str
) -> None:
    issuer.jwks_body = body
    error = refused(issuer)
    assert error.reason == Reason.JWKS_INVALID
    assert words in error.message
    assert issuer.jwks_uri in error.message


def test_the_policy_comes_from_the_settings(tmp_path: Path) -> None:
    settings = IssuerSettings(
        ca_bundle=tmp_path / "ca.pem",
        allowed_networks=["127.0.0.0/8", "::1/128"],
        connect_timeout=1.5,
        read_timeout=4.0,
        max_response_bytes=4096,
    )
    assert FetchPolicy.from_settings(settings) == FetchPolicy(
        ca_bundle=tmp_path / "ca.pem",
        allowed_networks=(LOOPBACK, ipaddress.ip_network("::1/128")),
        connect_timeout=1.5,
        read_timeout=4.0,
        max_response_bytes=4096,
    )
    with pytest.raises(ValueError, match="KUBEIAM_ISSUER_ALLOWED_NETWORKS"):
        FetchPolicy.from_settings(IssuerSettings(allowed_networks=["127.0.0.1/8"]))


def test_a_slow_issuer_does_not_hold_up_the_refresh_of_another(tmp_path: Path) -> None:
    # Issuers are refreshed by one task: a hostile issuer that holds each request open must not
    # delay every other issuer's refresh. The slow issuer's request is held open by its server
    # until the test ends; meanwhile the fast issuer rotates its keys and the store must see it.
    with LocalIssuer(ca_dir=tmp_path) as slow, LocalIssuer(ca_dir=tmp_path) as fast:
        asyncio.run(_refresh_beside_a_slow_issuer(slow, fast))


async def _refresh_beside_a_slow_issuer(slow: LocalIssuer, fast: LocalIssuer) -> None:
    often = datetime.timedelta(seconds=0.2)
    # Each refresh as the store reports it: the issuer, how many requests the slow issuer had
    # received by then, and the key ids the store then holds for that issuer.
    seen: list[tuple[str, int, tuple[str, ...]]] = []

    async def on_refreshed(key: IssuerKey) -> None:
        check, _ = await store.check(key, "probe")
        seen.append((key[0], len(slow.requests), tuple(sorted(check.key_ids or ()))))

    store = KeyStore(
        policy_for(slow, read_timeout=60.0),  # longer than the test: the request stays open
        Schedule(refresh_min=often, refresh_max=often, retry_min=often, retry_max=often),
        max_keys=20,
        on_refreshed=on_refreshed,
        concurrency=IssuerSettings().refresh_concurrency,
    )
    await store.check((slow.url, None), "trust-on-slow")
    await store.check((fast.url, None), "trust-on-fast")
    refresher = asyncio.create_task(store.run())
    try:
        held = len(slow.requests) + 1
        slow.response_delay = 120.0  # answered when the issuer stops, at the end of the test
        await asyncio.to_thread(
            wait_for,
            lambda: len(slow.requests) >= held,
            timeout=20,
            what="the slow issuer's next refresh to reach it",
        )
        fast.rotate()
        rotated = tuple(sorted(fast.key_ids()))
        await asyncio.to_thread(
            wait_for,
            lambda: [r for r in seen if r[0] == fast.url and r[2] == rotated],
            timeout=20,
            what="the fast issuer's rotated keys while the slow issuer's request is held open",
        )
        # The slow issuer's refresh has not finished: its request is still open.
        assert not [r for r in seen if r[0] == slow.url and r[1] >= held]
    finally:
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
