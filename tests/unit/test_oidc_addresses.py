"""The guard against server-side request forgery: which addresses an issuer may be fetched from,
including IPv6 addresses that carry an IPv4 address inside them."""

from __future__ import annotations

import ipaddress

import pytest

from kubeiam.oidc.addresses import refusal


def judged(address: str, *allowed: str) -> str | None:
    return refusal(ipaddress.ip_address(address), tuple(ipaddress.ip_network(n) for n in allowed))


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("169.254.169.254", "a link-local address"),
        ("127.0.0.1", "a loopback address"),
        ("10.1.2.3", "a private address"),
        ("100.64.0.1", "a non-public address"),
        ("::1", "a loopback address"),
        ("fe80::1", "a link-local address"),
        ("fd00::1", "a private address"),
        # IPv4-mapped: what the guard already judged as the IPv4 inside.
        ("::ffff:169.254.169.254", "a link-local address (169.254.169.254, IPv4-mapped)"),
        # 6to4 (2002::/16): a relay delivers to the IPv4 address in bits 16 to 48.
        ("2002:a9fe:a9fe::1", "a link-local address (169.254.169.254, inside 6to4)"),
        ("2002:7f00:1::1", "a loopback address (127.0.0.1, inside 6to4)"),
        ("2002:a00:1::", "a private address (10.0.0.1, inside 6to4)"),
        # NAT64's well-known prefix (64:ff9b::/96): the gateway delivers to the last 32 bits.
        ("64:ff9b::a9fe:a9fe", "a link-local address (169.254.169.254, inside NAT64)"),
        ("64:ff9b::a00:1", "a private address (10.0.0.1, inside NAT64)"),
        # Site-local (fec0::/10): deprecated, still routed inside some sites.
        ("fec0::1", "a site-local address"),
        ("feff::1", "a site-local address"),
        # Teredo (2001::/32), local-use NAT64 (64:ff9b:1::/48) and IPv4-compatible (::/96):
        # where the IPv4 sits is not fixed or the range is not for the public, so none is used.
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "a private address"),
        ("64:ff9b:1::a9fe:a9fe", "a reserved address"),
        ("::a9fe:a9fe", "a reserved address"),
    ],
)
def test_addresses_an_issuer_may_not_use(address: str, kind: str) -> None:
    assert judged(address) == kind


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "2606:4700::1111",
        "2002:808:808::1",  # 6to4 of a public address
        "64:ff9b::808:808",  # NAT64 of a public address: how an IPv6-only cluster reaches IPv4
        "::ffff:8.8.8.8",
    ],
)
def test_public_addresses_and_public_ipv4_inside_ipv6_are_fetched(address: str) -> None:
    assert judged(address) is None


def test_an_allowed_network_admits_the_ipv4_inside_as_well_as_the_address() -> None:
    assert judged("2002:a00:1::", "10.0.0.0/8") is None
    assert judged("64:ff9b::a00:1", "10.0.0.0/8") is None
    assert judged("fec0::1", "fec0::/10") is None
    assert judged("2002:a00:1::", "192.168.0.0/16") == "a private address (10.0.0.1, inside 6to4)"
