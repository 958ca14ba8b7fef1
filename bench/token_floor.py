"""The token figures' floor: the token server's HTTP stack answering fixed JSON bodies.

The same aiohttp application runner (access log off), the same TLS context (the token server's
own `tls_context`, from the same KUBEIAM_TOKEN_CERT_DIR), the same paths; no token logic. Each
answer is a fixed JSON body of the size the real endpoint answered in the same run, and a POST's
body is read first, as the token server reads its form; at the token path, a token-exchange form
gets the size of an exchange's answer, a request with a DPoP header (not checked) the size of a
DPoP-bound answer, any other the size of a client_credentials one.
`--workers N` runs N processes on one port with SO_REUSEPORT, as the token server's worker
setting does.

    python -m bench.token_floor --port P --token-bytes N --introspect-bytes N --jwks-bytes N \
        [--exchange-bytes N] [--dpop-bytes N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import sys
import urllib.parse

import aiohttp.web

from kubeiam.settings import TOKEN_PATH, get_settings
from kubeiam.tokens.dpop import HEADER as DPOP_HEADER
from kubeiam.tokens.exchange import GRANT_TYPE as TOKEN_EXCHANGE
from kubeiam.tokens.server import INTROSPECT_PATH, JWKS_PATH, NO_STORE, tls_context


def fixed_body(size: int) -> bytes:
    """A JSON object of exactly `size` bytes (at least the smallest such object, 2 bytes)."""
    empty = json.dumps({"pad": ""}, separators=(",", ":")).encode()
    if size <= len(empty):
        return b"{}" if size < len(empty) else empty
    return json.dumps({"pad": "x" * (size - len(empty))}, separators=(",", ":")).encode()


# How a token-exchange form names its grant (a form-encoded field, as every client sends it).
EXCHANGE_FIELD = urllib.parse.urlencode({"grant_type": TOKEN_EXCHANGE}).encode()


def app(
    token_bytes: int,
    introspect_bytes: int,
    jwks_bytes: int,
    exchange_bytes: int | None = None,
    dpop_bytes: int | None = None,
) -> aiohttp.web.Application:
    token, introspected, jwks = (
        fixed_body(token_bytes),
        fixed_body(introspect_bytes),
        fixed_body(jwks_bytes),
    )
    exchanged = fixed_body(exchange_bytes) if exchange_bytes is not None else token
    bound = fixed_body(dpop_bytes) if dpop_bytes is not None else token

    async def post(request: aiohttp.web.Request, body: bytes) -> aiohttp.web.Response:
        await request.read()
        return aiohttp.web.Response(body=body, content_type="application/json", headers=NO_STORE)

    async def token_endpoint(request: aiohttp.web.Request) -> aiohttp.web.Response:
        form = await request.read()
        if EXCHANGE_FIELD in form:
            return await post(request, exchanged)
        return await post(request, bound if DPOP_HEADER in request.headers else token)

    async def introspect(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return await post(request, introspected)

    async def keys(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(body=jwks, content_type="application/json")

    async def health(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(text="ok")

    application = aiohttp.web.Application()
    application.add_routes(
        [
            aiohttp.web.post(TOKEN_PATH, token_endpoint),
            aiohttp.web.post(INTROSPECT_PATH, introspect),
            aiohttp.web.get(JWKS_PATH, keys),
            aiohttp.web.get("/healthz", health),
        ]
    )
    return application


async def serve(args: argparse.Namespace) -> None:
    runner = aiohttp.web.AppRunner(
        app(
            args.token_bytes,
            args.introspect_bytes,
            args.jwks_bytes,
            args.exchange_bytes,
            args.dpop_bytes,
        ),
        handle_signals=True,
        access_log=None,
    )
    await runner.setup()
    site = aiohttp.web.TCPSite(
        runner,
        "127.0.0.1",
        args.port,
        ssl_context=tls_context(get_settings()),
        reuse_port=args.workers > 1 or None,
    )
    await site.start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def _run(args: argparse.Namespace) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.token_floor")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token-bytes", type=int, required=True)
    parser.add_argument("--introspect-bytes", type=int, required=True)
    parser.add_argument("--jwks-bytes", type=int, required=True)
    parser.add_argument("--exchange-bytes", type=int, default=None)
    parser.add_argument("--dpop-bytes", type=int, default=None)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    others = [
        multiprocessing.get_context("fork").Process(target=_run, args=(args,), daemon=True)
        for _ in range(args.workers - 1)
    ]
    for process in others:
        process.start()
    _run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
