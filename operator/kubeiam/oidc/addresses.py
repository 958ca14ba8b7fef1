"""Which addresses kube-iam may fetch issuers from, checked again at connect time (SSRF guard)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Final

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

__all__ = [
    "ALLOWED_NETWORKS_SETTING",
    "AddressRefused",
    "GuardedResolver",
    "IPAddress",
    "IPNetwork",
    "ip_literal",
    "refusal",
]

ALLOWED_NETWORKS_SETTING: Final = "KUBEIAM_ISSUER_ALLOWED_NETWORKS"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# NAT64's well-known prefix (RFC 6052): the gateway delivers to the IPv4 address in the last
# 32 bits. The local-use prefix 64:ff9b:1::/48 puts it where the site chose, so it is not read.
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
# Site-local (RFC 3879 deprecated it, but some sites still route it); Python calls it global.
_SITE_LOCAL: Final = ipaddress.IPv6Network("fec0::/10")


def refusal(address: IPAddress, allowed: tuple[IPNetwork, ...]) -> str | None:
    """Why an issuer may not be fetched from `address` (e.g. "a loopback address"), or None.

    An IPv6 address that delivers to an IPv4 one (IPv4-mapped, 6to4, NAT64's well-known prefix)
    is judged as that IPv4 address: 2002:a9fe:a9fe::1 reaches 169.254.169.254 through a 6to4
    relay. Teredo, local-use NAT64 and IPv4-compatible addresses are not public ranges and are
    refused as they are.
    """
    inside = _ipv4_inside(address)
    judged: IPAddress = inside[0] if inside else address
    if any(candidate in network for network in allowed for candidate in (address, judged)):
        return None
    kinds = (
        ("an unspecified address", judged.is_unspecified),
        ("a loopback address", judged.is_loopback),
        ("a link-local address", judged.is_link_local),
        ("a site-local address", judged in _SITE_LOCAL),
        ("a multicast address", judged.is_multicast),
        ("a reserved address", judged.is_reserved),
        ("a private address", judged.is_private),
        # What is left and still not global: shared (carrier-grade NAT) and similar ranges.
        ("a non-public address", not judged.is_global),
    )
    kind = next((kind for kind, applies in kinds if applies), None)
    if kind is not None and inside:
        return f"{kind} ({inside[0]}, {inside[1]})"
    return kind


def _ipv4_inside(address: IPAddress) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 one delivers to, and how, when it has a fixed place."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped, "IPv4-mapped"
    if address.sixtofour is not None:
        return address.sixtofour, "inside 6to4"
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "inside NAT64"
    return None


def ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


class AddressRefused(OSError):
    """Every address a name resolved to is one an issuer may not use."""


class GuardedResolver(AbstractResolver):
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
            address = ip_literal(result["host"])
            kind = "not an IP address" if address is None else refusal(address, self._allowed)
            if kind is None:
                kept.append(result)
            else:
                refused.append(f"{result['host']}, {kind}")
        if results and not kept:
            raise AddressRefused(
                f"{host} resolves only to addresses an issuer may not use "
                f"({'; '.join(dict.fromkeys(refused))}); {ALLOWED_NETWORKS_SETTING} lists the "
                "networks allowed beside public addresses"
            )
        return kept

    async def close(self) -> None:
        await self._inner.close()
