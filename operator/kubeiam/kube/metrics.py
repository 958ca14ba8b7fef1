"""Prometheus metrics: one registry, the metrics every controller shares, and the page serving it.

A controller declares its own metrics with `counter`, `histogram` and `gauge_from_memory`, wraps
its handlers in `counts_errors(kind)`, and gets API request counts for free from `kube.api`.
Gauges of how many objects are in which state are computed from the in-memory indices at
scrape time (`gauge_from_memory`), never incremented and decremented, so they cannot drift.

Label values must come from a small fixed set (states, verbs, reasons, kinds), so that the
number of series stays bounded however many objects there are. The one exception is a gauge
with a series per object (a credential's expiry), which exists so an alert can name the object;
it is documented as such in docs/observability.md.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ParamSpec, TypeVar, cast

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from kubeiam.kube import peering

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
Sample = tuple[Sequence[str], float]

# Ours alone, not prometheus_client's global one: only what is registered here is served.
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

# The words of the Kubernetes API (metav1.StatusReason) for the HTTP codes it answers with.
_STATUS_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def counter(name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
    """A counter in kube-iam's registry; Prometheus shows it as `<name>_total`."""
    return Counter(name, documentation, labels, registry=REGISTRY)


def histogram(
    name: str, documentation: str, buckets: Sequence[float], labels: Sequence[str] = ()
) -> Histogram:
    """A histogram in kube-iam's registry, with buckets chosen for what it measures."""
    return Histogram(name, documentation, labels, buckets=buckets, registry=REGISTRY)


class _MemoryGauge:
    """A gauge computed when it is scraped, from what the process holds in memory."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str],
        samples: Callable[[], Iterable[Sample]],
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labels = list(labels)
        self._samples = samples

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self._name, self._documentation, labels=self._labels)

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        # A paused replica's indices stopped following the cluster: it reports no values
        # rather than stale ones, so a sum over replicas counts each object once.
        if not peering.paused():
            try:
                for labels, value in self._samples():
                    family.add_metric(list(labels), value)
            except Exception:
                logger.exception("Computing metric %s failed; it is left empty.", self._name)
                family = self._family()
        return [family]


def gauge_from_memory(
    name: str,
    documentation: str,
    labels: Sequence[str],
    samples: Callable[[], Iterable[Sample]],
) -> None:
    """Register a gauge whose samples (label values, value) `samples()` computes at scrape time.

    `samples` runs in the event loop (the page is served there), so it may read kopf indices.
    """
    REGISTRY.register(_MemoryGauge(name, documentation, labels, samples))


# -- the metrics every controller shares ---------------------------------------------------------

RECONCILE_ERRORS = counter(
    "kubeiam_reconcile_errors",
    "Reconciles that ended in an error (and are retried), by kind and reason: the Kubernetes "
    "status reason of a refused API call (Conflict, Forbidden, Invalid, ...), Timeout, or the "
    "error's class.",
    ["kind", "reason"],
)
API_REQUESTS = counter(
    "kubeiam_api_requests",
    "Kubernetes API requests kube-iam makes itself (not kopf's watches and bookkeeping), by "
    "verb, resource and HTTP status code; code is 'error' when no response came.",
    ["verb", "resource", "code"],
)
ADMISSION_SECONDS = histogram(
    "kubeiam_admission_seconds",
    "Time the admission webhook took to answer, by kind, operation and verdict (allowed, "
    "refused or error): the API server waits this long on every write of kube-iam's kinds.",
    (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    ["kind", "operation", "verdict"],
)
ACCESS_REVIEWS = counter(
    "kubeiam_access_reviews",
    "SubjectAccessReviews the webhook needed, by verb and whether the answer came from the "
    "short-lived cache (hit) or the API server (miss).",
    ["verb", "cache"],
)
PAUSED = Gauge(
    "kubeiam_peering_paused",
    "1 while kopf peering has paused this replica (another one is active), else 0.",
    registry=REGISTRY,
    multiprocess_mode="livemax",  # a dead process's value is dropped (the token server's workers)
)
PAUSED.set_function(lambda: float(peering.paused()))


def error_reason(error: BaseException) -> str:
    """A reason label of bounded cardinality: never the error's message."""
    status = getattr(error, "status", None)
    if isinstance(status, int) and not isinstance(status, bool):
        return _STATUS_REASONS.get(status, f"HTTP{status}")
    if isinstance(error, TimeoutError):
        return "Timeout"
    return type(error).__name__


def count_error(kind: str, error: BaseException) -> None:
    RECONCILE_ERRORS.labels(kind, error_reason(error)).inc()


def counts_errors(kind: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Count every exception `fn` raises in `kubeiam_reconcile_errors_total`, and re-raise it.

    Works on sync and async functions alike, keeping the name and signature kopf reads.
    """

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def wrapped_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                try:
                    return await fn(*args, **kwargs)
                except Exception as error:
                    count_error(kind, error)
                    raise

            return cast(Callable[P, R], wrapped_async)

        @functools.wraps(fn)
        def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except Exception as error:
                count_error(kind, error)
                raise

        return wrapped

    return decorate


def count_api_request(verb: str, resource: str, code: int | None) -> None:
    API_REQUESTS.labels(verb, resource, "error" if code is None else str(code)).inc()


# -- the page --------------------------------------------------------------------------------------

_runner: web.AppRunner | None = None


async def serve(
    port: int,
    host: str = "0.0.0.0",  # noqa: S104  (Prometheus scrapes the pod IP)
    registry: CollectorRegistry = REGISTRY,
) -> None:
    """Serve `registry` at http://host:port/metrics from the event loop; port 0 serves nothing.

    In the event loop, so that gauges computed from memory read the indices from the thread
    that writes them.
    """
    global _runner  # one page per process, started and stopped by the operator's lifecycle
    if port == 0 or _runner is not None:
        return
    app = web.Application()
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as error:
        await runner.cleanup()
        raise RuntimeError(
            f"cannot serve metrics on port {port} (KUBEIAM_METRICS_PORT): {error.strerror}"
        ) from None
    _runner = runner
    logger.info("Serving metrics at http://%s:%d/metrics", host, port)


async def stop() -> None:
    global _runner  # see serve()
    if _runner is not None:
        await _runner.cleanup()
        _runner = None
