"""The token server's metrics: tokens issued and refused, request latency, the cache's sizes.

Labels come from fixed sets (the grant, RFC 6749's error codes, the three kinds): never a
client id, a credential or anything a request carries.
"""

from __future__ import annotations

from collections.abc import Iterable

from kubeiam.kube import metrics
from kubeiam.tokens.cache import Cache

ISSUED = metrics.counter("kubeiam_tokens_issued", "Access tokens issued, by grant type.", ["grant"])
REFUSED = metrics.counter(
    "kubeiam_token_requests_refused",
    "Token requests refused, by RFC 6749 error code (invalid_client, invalid_scope, ...), or "
    "by HTTP status for a request refused before it was read (413, 408, 503).",
    ["error"],
)
SECONDS = metrics.histogram(
    "kubeiam_token_request_seconds",
    "Time the token endpoint took to answer, granted or refused.",
    (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)


def watch_cache(cache: Cache) -> None:
    """Report the cache's sizes by kind at scrape time."""

    def samples() -> Iterable[metrics.Sample]:
        return [((kind,), float(size)) for kind, size in cache.sizes().items()]

    metrics.gauge_from_memory(
        "kubeiam_token_cache_objects",
        "Objects in the token server's cache, by kind (plural).",
        ["kind"],
        samples,
    )


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
