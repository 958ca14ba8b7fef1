"""Token exchanges a second of the decision alone: exchange.candidates + decide + tokens.issue
in this process, one core, a trust with an inline JWKS and an RS256 subject token, no HTTP.

    python -m bench.exchange_rate --seconds 10

Prints one JSON line: exchanges, seconds, rate, latency percentiles (ms), refusals. `make bench`
runs it before its `tokens_exchange` scenario (bench/tokens.py), which measures the token server
over HTTPS with vegeta: this figure is the ceiling that one is read against. Figures depend on
the machine and its load: say both when quoting one.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import statistics
import time
from typing import Any

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
            signer = signing.active_at(at)
            tokens.issue(decided, signer, issuer=ISSUER, lifetime=settings.tokens.lifetime,
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


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.exchange_rate", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    print(json.dumps(decision_rate(args.seconds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
