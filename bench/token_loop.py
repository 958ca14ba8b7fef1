"""Does uvloop make the token endpoint cheaper? One token server worker, on asyncio's event loop
or uvloop's, answers the same grants over HTTPS; the figure is its CPU time a request.

No cluster: the worker's cache is filled from one account and one credential, as its watches
would fill it, and the signing key is made in memory. The client is the same in both runs
(aiohttp on asyncio, keep-alive, `--concurrency` requests in flight) and runs in this process;
the server runs in a child whose CPU time (user + system, from /proc) is read before and after
the load, so a loaded machine slows both runs but hardly changes the CPU a request costs.

uvloop is not one of kube-iam's dependencies (measured, it did not pay: docs/tokens.md); install
it beside them to compare (`uv pip install uvloop`).

    python -m bench.token_loop --loop uvloop --requests 3000
    farm-bench -n 5 -- python -m bench.token_loop --loop uvloop \\
        --vs 'python -m bench.token_loop --loop asyncio'
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib
import multiprocessing
import os
import ssl
import tempfile
import time
from pathlib import Path

import aiohttp
import aiohttp.web

from kubeiam.devcluster.certs import KeyPair, create_ca, issue_certificate
from kubeiam.devcluster.cluster import free_port
from kubeiam.domain.secret_format import credential_id, generate, secret_hash
from kubeiam.kube.key_secret import KeyRing
from kubeiam.kube.resources import CREDENTIALS, SERVICE_ACCOUNTS, TRUSTS
from kubeiam.settings import Settings, TokenSettings
from kubeiam.tokens import keys
from kubeiam.tokens.cache import Cache
from kubeiam.tokens.server import TokenService

CLIENT_ID = "pipeline@team-a.acme.iam"


def _service(issuer: str, secret: str, credential: str) -> TokenService:
    cache = Cache()
    account = {"metadata": {"namespace": "team-a", "name": "pipeline"}, "spec": {}}
    cache.replace(SERVICE_ACCOUNTS, [{**account, "status": {"clientId": CLIENT_ID}}])
    status = {
        "state": "Active",
        "credentialId": credential,
        "secretHash": secret_hash(secret),
        "clientId": CLIENT_ID,
        "expiresAt": "2099-01-01T00:00:00Z",
        "effectiveRoles": ["storage.reader"],
    }
    body = {
        "metadata": {"namespace": "team-a", "name": "key"},
        "spec": {"serviceAccountName": "pipeline"},
        "status": status,
    }
    cache.replace(CREDENTIALS, [body])
    cache.replace(TRUSTS, [])
    service = TokenService(Settings(tokens=TokenSettings(issuer=issuer)), cache)
    service.keys = keys.from_ring(KeyRing("k", {"k": keys.new_private_key_pem()}))
    return service


def _serve(loop: str, port: int, certs: Path, secret: str, credential: str) -> None:
    async def main() -> None:
        service = _service(f"https://127.0.0.1:{port}", secret, credential)
        context = ssl.create_default_context(purpose=ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(certs / "tls.crt"), str(certs / "tls.key"))
        runner = aiohttp.web.AppRunner(service.app(), access_log=None)
        await runner.setup()
        await aiohttp.web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
        await asyncio.Event().wait()

    if loop == "uvloop":
        # Not a dependency: installed beside them for the comparison only.
        importlib.import_module("uvloop").run(main())
    else:
        asyncio.run(main())


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _load(url: str, ca: Path, secret: str, requests: int, concurrency: int) -> float:
    context = ssl.create_default_context(cafile=str(ca))
    form = {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": secret}
    left = requests
    connector = aiohttp.TCPConnector(ssl=context, limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one_by_one() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with session.post(url, data=form) as answer:
                    assert answer.status == 200, answer.status
                    await answer.read()

        while True:  # until the server answers
            try:
                async with session.get(url.replace("/oauth2/token", "/healthz")) as answer:
                    if answer.status == 200:
                        break
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
        started = time.monotonic()
        await asyncio.gather(*(one_by_one() for _ in range(concurrency)))
        return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), required=True)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    credential = credential_id("bench")
    secret = generate(credential, os.urandom)
    with tempfile.TemporaryDirectory() as directory:
        certs = Path(directory)
        ca = create_ca(KeyPair(certs / "ca.crt", certs / "ca.key"), "bench CA")
        issue_certificate(
            ca,
            KeyPair(certs / "tls.crt", certs / "tls.key"),
            "127.0.0.1",
            server_ips=("127.0.0.1",),
        )
        port = free_port()
        spawn = multiprocessing.get_context("spawn")
        server = spawn.Process(target=_serve, args=(args.loop, port, certs, secret, credential))
        server.start()
        assert server.pid is not None
        try:
            url = f"https://127.0.0.1:{port}/oauth2/token"
            asyncio.run(_load(url, ca.cert, secret, 200, 8))  # warm up: connections, caches
            before = _cpu_seconds(server.pid)
            took = asyncio.run(_load(url, ca.cert, secret, args.requests, args.concurrency))
            cpu = _cpu_seconds(server.pid) - before
        finally:
            server.terminate()
            server.join()
    stamp = datetime.datetime.now(datetime.UTC).strftime("%H:%M:%S")
    print(
        f"{stamp} loop={args.loop} requests={args.requests} concurrency={args.concurrency} "
        f"wall={took:.2f}s rate={args.requests / took:.0f}/s "
        f"server_cpu_per_request={1000 * cpu / args.requests:.3f}ms"
    )


if __name__ == "__main__":
    main()
