"""The token server's metrics: tokens issued and refused, request latency, the cache's sizes.

The token server's workers write them to files (prometheus_client's multiprocess mode) and its
parent serves them all on one page (tokens/workers.py). Labels come from fixed sets (the grant,
the error codes of grants.Error, the three kinds): never a client id, a credential or anything a
request carries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import Gauge

from kubeiam.kube import metrics
from kubeiam.tokens.cache import Cache

ISSUED = metrics.counter("kubeiam_tokens_issued", "Access tokens issued, by grant type.", ["grant"])
REFUSED = metrics.counter(
    "kubeiam_token_requests_refused",
    "Token requests refused, by RFC 6749, RFC 8707 or RFC 9449 error code (invalid_client, "
    "invalid_scope, invalid_dpop_proof, ...), or "
    "by HTTP status for a request refused before it was read (413, 408, 503).",
    ["error"],
)
SECONDS = metrics.histogram(
    "kubeiam_token_request_seconds",
    "Time the token endpoint took to answer, granted or refused.",
    (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)


# Gauges are written by each worker and summed up by the parent (prometheus multiprocess mode):
# "livemax" reports the largest value among the live workers, and none of a dead one.
CACHE_OBJECTS = Gauge(
    "kubeiam_token_cache_objects",
    "Objects in the token server's cache, by kind (plural); the largest of its workers.",
    ["kind"],
    registry=metrics.REGISTRY,
    multiprocess_mode="livemax",
)
CERT_EXPIRY = Gauge(
    "kubeiam_token_certificate_expiry_timestamp_seconds",
    "When the token server's serving certificate (as loaded now) expires, in Unix seconds.",
    registry=metrics.REGISTRY,
    multiprocess_mode="livemax",
)
# It falls back to zero at each rotation, so one that keeps growing past the rotation period
# says the operator is not rotating.
SIGNING_KEY_AGE = Gauge(
    "kubeiam_token_signing_key_age_seconds",
    "Seconds since the signing key in use started signing; the largest of the workers.",
    registry=metrics.REGISTRY,
    multiprocess_mode="livemax",
)
REPORT_SECONDS = 1.0  # a few gauge writes a second: nothing, and a rotation shows at once


async def report(cache: Cache, key_age: Callable[[], float | None]) -> None:
    """Report the cache's sizes by kind and the signing key's age every few seconds (the parent
    serves the page, so a worker cannot compute them at scrape time)."""
    while True:
        for kind, size in cache.sizes().items():
            CACHE_OBJECTS.labels(kind).set(size)
        age = key_age()
        if age is not None:
            SIGNING_KEY_AGE.set(age)
        await asyncio.sleep(REPORT_SECONDS)


INTROSPECTED = metrics.counter(
    "kubeiam_tokens_introspected",
    "Introspection answers, by whether the token was active (true, false).",
    ["active"],
)
USAGE_NOTED = metrics.counter(
    "kubeiam_token_usage_noted",
    "Uses of a credential noted for status.lastUsedAt/lastUsedIp (one a token issued).",
)
USAGE_WRITES = metrics.counter(
    "kubeiam_token_usage_writes",
    "Status writes of lastUsedAt/lastUsedIp, coalesced to one a credential an interval, by "
    "result (written, failed, skipped: another worker or replica wrote it within the interval).",
    ["result"],
)
