"""Token exchanges a second: the decision alone in this process, or the token server over HTTPS.

    # The decision and the signing (exchange.candidates + decide + tokens.issue), one core,
    # a trust with an inline JWKS and an RS256 subject token, as the token server runs them:
    python -m bench.exchange_rate decision --seconds 10

    # A running token server (`make run`), with a subject token it accepts (for example a
    # projected ServiceAccount token, see README "Secretless federation"):
    python -m bench.exchange_rate http --token-url "$TOKEN_URL" --ca .local/pki/ca.crt \
        --client-id "$CLIENT_ID" --subject-token-file sa.token --seconds 10 --concurrency 16

Each prints one JSON line: exchanges, seconds, rate, latency percentiles (ms), refusals. Figures
depend on the machine and its load: say both when quoting one. Not yet a `make bench` scenario:
bench/scenarios.py is being changed by the token figures work; to hook this in, call
`decision_rate` and `http_rate` from a scenario there and report their dictionaries.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import ssl
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from kubeiam.kube.key_secret import KeyRing
from kubeiam.settings import Settings, TokenSettings
from kubeiam.tokens import exchange, keys, tokens
from kubeiam.tokens.cache import trust_view
from kubeiam.tokens.grants import Account
from kubeiam.tokens.trust_material import TrustMaterial

GRANT = exchange.GRANT_TYPE
ISSUER = "https://iam.bench.invalid"
EXTERNAL = "https://ci.bench.invalid"
AUDIENCE = "sts.bench.invalid"


def _percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    ordered = sorted(seconds)
    cuts = statistics.quantiles(ordered, n=100) if len(ordered) > 1 else ordered * 99
    return {
        "p50_ms": round(cuts[49] * 1000, 3),
        "p99_ms": round(cuts[98] * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
    }


def decision_rate(seconds: float) -> dict[str, Any]:
    """Exchanges a second of the pure decision plus signing, on one core, no I/O."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = {"keys": [{**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k1"}]}
    body = {
        "metadata": {"namespace": "bench", "name": "ci", "uid": "uid-ci", "generation": 1},
        "spec": {
            "serviceAccountName": "pipeline",
            "issuer": EXTERNAL,
            "audiences": [AUDIENCE],
            "condition": "claims.repository == 'acme/api' && claims.ref == 'refs/heads/main'",
            "jwks": jwks,
        },
        "status": {
            "effectiveRoles": ["compute.deployer", "storage.reader"],
            "conditions": [{"type": "Ready", "status": "True", "observedGeneration": 1}],
        },
    }
    trust = trust_view(body)
    account = Account("bench", "pipeline", "pipeline@bench.acme.iam", disabled=False)
    settings = Settings(tokens=TokenSettings(issuer=ISSUER))
    signing = keys.from_ring(KeyRing(active="k1", keys={"k1": keys.new_private_key_pem()}))
    now = int(time.time())
    subject = jwt.encode(
        {"iss": EXTERNAL, "sub": "repo:acme/api:ref:refs/heads/main", "aud": AUDIENCE,
         "iat": now, "exp": now + 3600, "repository": "acme/api", "ref": "refs/heads/main"},
        key, algorithm="RS256", headers={"kid": "k1"},
    )  # fmt: skip
    material = TrustMaterial(settings)
    prepared = {trust.uid: asyncio.run(material.prepare(trust))}
    asked = exchange.ExchangeRequest(account.client_id, subject, exchange.JWT_TYPE)
    latencies: list[float] = []
    refused = 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    while (begin := time.perf_counter()) < deadline:
        at = datetime.datetime.now(datetime.UTC)
        tried = exchange.candidates(
            asked,
            account_by_client_id=lambda _: account,
            trusts_of=lambda _: [trust],
            own_issuer=ISSUER,
        )
        decided = (
            tried
            if isinstance(tried, exchange.Denied)
            else exchange.decide(asked, tried, prepared=prepared, settings=settings, now=at)
        )
        if isinstance(decided, exchange.Denied):
            refused += 1
        else:
            tokens.issue(decided, signing.active, issuer=ISSUER, lifetime=settings.tokens.lifetime,
                         now=at)  # fmt: skip
        latencies.append(time.perf_counter() - begin)
    elapsed = time.perf_counter() - started
    return {
        "mode": "decision",
        "exchanges": len(latencies) - refused,
        "refused": refused,
        "seconds": round(elapsed, 3),
        "rate": round((len(latencies) - refused) / elapsed, 1),
        "compiled_policies": material.compiled,
        **_percentiles(latencies),
    }


async def http_rate(
    token_url: str, ca: Path, client_id: str, subject_token: str, seconds: float, concurrency: int
) -> dict[str, Any]:
    """Exchanges a second against a running token server, `concurrency` requests in flight."""
    context = ssl.create_default_context(cafile=str(ca))
    form = {
        "grant_type": GRANT,
        "client_id": client_id,
        "subject_token": subject_token,
        "subject_token_type": exchange.JWT_TYPE,
    }
    latencies: list[float] = []
    errors: dict[str, int] = {}
    deadline = time.perf_counter() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline:
            begin = time.perf_counter()
            async with session.post(token_url, data=form, ssl=context) as answer:
                body = await answer.json(content_type=None)
            if answer.status == 200:
                latencies.append(time.perf_counter() - begin)
            else:
                code = str(body.get("error") if isinstance(body, dict) else answer.status)
                errors[code] = errors.get(code, 0) + 1

    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "mode": "http",
        "exchanges": len(latencies),
        "refused": errors,
        "seconds": round(elapsed, 3),
        "rate": round(len(latencies) / elapsed, 1),
        "concurrency": concurrency,
        **_percentiles(latencies),
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.exchange_rate", description=__doc__)
    modes = parser.add_subparsers(dest="mode", required=True)
    alone = modes.add_parser("decision", help="the decision and signing in this process")
    alone.add_argument("--seconds", type=float, default=10)
    served = modes.add_parser("http", help="a running token server")
    served.add_argument("--token-url", required=True)
    served.add_argument("--ca", type=Path, required=True)
    served.add_argument("--client-id", required=True)
    served.add_argument("--subject-token-file", type=Path, required=True)
    served.add_argument("--seconds", type=float, default=10)
    served.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    if args.mode == "decision":
        result = decision_rate(args.seconds)
    else:
        result = asyncio.run(
            http_rate(
                args.token_url,
                args.ca,
                args.client_id,
                args.subject_token_file.read_text().strip(),
                args.seconds,
                args.concurrency,
            )
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
