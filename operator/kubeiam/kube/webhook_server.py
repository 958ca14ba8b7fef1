"""The admission webhook's HTTPS server: bounded bodies, bounded concurrency, renewed certificates.

kopf's own server reads any body up to aiohttp's limit, answers every caller at once and
restarts itself (dropping connections) when its certificate files change. The API server is its
only legitimate caller, and the webhook fails closed, so an unbounded server is a lever: a few
large or slow requests would hold its memory and its event loop, and every write of kube-iam's
kinds cluster-wide would be refused. This one:

- refuses a body larger than `max_review_bytes` with 413 before reading it (Content-Length), or
  as soon as it grows past it;
- serves reviews from two pools: small ones (every review of a real object under
  `SMALL_REVIEW_BYTES`) and large ones, one at a time, so a flood of large bodies never delays the
  API server's ordinary calls; a request that finds its pool full for `QUEUE_SECONDS` gets 503;
- gives each body `READ_SECONDS` to arrive, so a slow sender cannot hold a slot;
- loads a renewed certificate into the same TLS context, so new connections get it while open
  ones carry on: no restart, no gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp.web
from kopf._cogs.structs import reviews as kopf_reviews
from kopf._core.engines import admission as kopf_admission
from kopf._kits import webhooks as kopf_webhooks
from prometheus_client import Gauge

from kubeiam.kube import metrics, tls
from kubeiam.kube.bodies import read_bounded
from kubeiam.kube.tls import ServingCertificate

logger = logging.getLogger(__name__)

# A review of an ordinary object is a few KiB; larger ones (thousands of CIDRs, a big
# last-applied annotation) are rare and are judged one at a time. Parsed JSON takes up to ~25
# times its size in memory, so the pools bound the webhook's memory: see the README, Security.
SMALL_REVIEW_BYTES = 32 * 1024
# Parsed, each JSON object or array is a Python dict or list (kopf copies some): a body of empty
# objects costs ~100 times its size. A real object has a few hundred; 100,000 allows one with
# 20,000 labels (and their managedFields entries) and bounds a review's cost to ~60 MiB.
MAX_CONTAINERS = 100_000
QUEUE_SECONDS = 1.0
READ_SECONDS = 2.0

CERT_EXPIRY = Gauge(
    "kubeiam_webhook_certificate_expiry_timestamp_seconds",
    "When the webhook's serving certificate (as loaded now) expires, in Unix seconds: alert "
    "well before it (cert-manager renews at two thirds of its life; `kube-iam webhook-cert "
    "--renew` by hand).",
    registry=metrics.REGISTRY,
)
REVIEWS_REFUSED = metrics.counter(
    "kubeiam_webhook_requests_refused",
    "Requests the webhook server refused before judging them, by reason: TooLarge and "
    "TooComplex (413), Busy (503, its pool stayed full), SlowBody (408).",
    ["reason"],
)

REVIEW_BYTES = metrics.histogram(
    "kubeiam_webhook_review_bytes",
    "Size of the AdmissionReview bodies the webhook read and judged.",
    tuple(float(1024 * 4**power) for power in range(8)),  # 1 KiB .. 16 MiB
)

Handler = Callable[..., Awaitable[Any]]


class ReviewServer(kopf_webhooks.WebhookServer):
    """kopf's webhook server with the bounds above; kopf hands it the admission function."""

    def __init__(
        self,
        *,
        addr: str,
        port: int,
        certfile: Path,
        pkeyfile: Path,
        max_review_bytes: int,
        concurrency: int,
        warning_lead: datetime.timedelta,
        client_ca: Path | None = None,
    ) -> None:
        super().__init__(addr=addr, port=port, certfile=str(certfile), pkeyfile=str(pkeyfile))
        self.certificate = ServingCertificate(
            certfile,
            pkeyfile,
            what="webhook",
            expiry=CERT_EXPIRY,
            warning_lead=warning_lead,
            consequence="once it has, every write of kube-iam's kinds is refused. Renew it: "
            "cert-manager does by itself; otherwise run `kube-iam webhook-cert --renew` (README, "
            "Install).",
        )
        self.max_review_bytes = max_review_bytes
        self.client_ca = client_ca
        self._small = asyncio.Semaphore(concurrency)
        self._large = asyncio.Semaphore(1)

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        context = ssl.create_default_context(purpose=ssl.Purpose.CLIENT_AUTH)
        if self.client_ca is not None:
            # Only a caller with a certificate from this CA (the API server, given one in its
            # --admission-control-config-file) completes the handshake.
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=str(self.client_ca))
        self.certificate.load(context)

        async def serve(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
            return await self.handle(fn, request)

        # aiohttp's own cap as a backstop; handle() refuses earlier and more cheaply.
        app = aiohttp.web.Application(client_max_size=self.max_review_bytes)
        app.add_routes([aiohttp.web.post("/{id:.*}", serve)])
        runner = aiohttp.web.AppRunner(
            app, handle_signals=False, access_log=None, lingering_time=READ_SECONDS
        )
        await runner.setup()
        try:
            site = aiohttp.web.TCPSite(
                runner,
                self.addr,
                self.port,
                ssl_context=context,
                reuse_port=True,
                reuse_address=True,
            )
            await site.start()
            logger.info("Serving admission webhooks at https://%s:%s", self.addr, self.port)
            yield kopf_reviews.WebhookClientConfig(url=f"https://{self.addr}:{self.port}")
            while True:
                await asyncio.sleep(tls.CHECK_SECONDS)
                self.certificate.load(context)
        finally:
            await runner.cleanup()

    async def handle(self, fn: Handler, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        declared = request.content_length
        if declared is not None and declared > self.max_review_bytes:
            return self._refuse(413, "TooLarge")
        if declared is not None and declared <= SMALL_REVIEW_BYTES:
            # A small body is read before it takes a slot, so a slow sender holds no slot; the
            # slot bounds what parsing and judging cost.
            body = await self._read_within(request, SMALL_REVIEW_BYTES)
            if isinstance(body, aiohttp.web.Response):
                return body
            async with self._slot(self._small) as free:
                return await self._answer(fn, request, body) if free else self._busy()
        # A large body (or one of undeclared length) takes the one large slot before it is read:
        # at most one costs memory at a time, and never at the small reviews' expense.
        async with self._slot(self._large) as free:
            if not free:
                return self._busy()
            body = await self._read_within(request, self.max_review_bytes)
            if isinstance(body, aiohttp.web.Response):
                return body
            return await self._answer(fn, request, body)

    @staticmethod
    @contextlib.asynccontextmanager
    async def _slot(pool: asyncio.Semaphore) -> AsyncIterator[bool]:
        """A slot of `pool` within QUEUE_SECONDS (yields True), or none (yields False)."""
        try:
            async with asyncio.timeout(QUEUE_SECONDS):
                await pool.acquire()
        except TimeoutError:
            yield False
            return
        try:
            yield True
        finally:
            pool.release()

    def _busy(self) -> aiohttp.web.Response:
        return self._refuse(503, "Busy")

    async def _read_within(
        self, request: aiohttp.web.Request, cap: int
    ) -> bytes | aiohttp.web.Response:
        try:
            async with asyncio.timeout(READ_SECONDS):
                body = await read_bounded(request, cap)
        except TimeoutError:
            return self._refuse(408, "SlowBody")
        return self._refuse(413, "TooLarge") if body is None else body

    @staticmethod
    async def _answer(
        fn: Handler, request: aiohttp.web.Request, body: bytes
    ) -> aiohttp.web.Response:
        # As kopf's own _serve, from bytes already read and bounded.
        REVIEW_BYTES.observe(len(body))
        if body.count(b"{") + body.count(b"[") > MAX_CONTAINERS:  # a fast scan, before parsing
            return _refusal(413, "TooComplex", f"at most {MAX_CONTAINERS} objects and arrays")
        sslpeer = request.transport.get_extra_info("peercert") if request.transport else None
        try:
            data = json.loads(body)
            response = await fn(
                data,
                webhook=request.match_info.get("id"),
                sslpeer=sslpeer,
                headers=dict(request.headers),
            )
        except kopf_admission.AmbiguousResourceError as error:
            raise aiohttp.web.HTTPConflict(reason=str(error) or None) from None
        except kopf_admission.UnknownResourceError as error:
            raise aiohttp.web.HTTPNotFound(reason=str(error) or None) from None
        except (kopf_admission.WebhookError, ValueError) as error:
            raise aiohttp.web.HTTPBadRequest(reason=str(error)[:200] or None) from None
        return aiohttp.web.json_response(response)

    def _refuse(self, status: int, reason: str) -> aiohttp.web.Response:
        text = {
            "TooLarge": f"an AdmissionReview is at most {self.max_review_bytes} bytes",
            "Busy": "too many reviews at once",
            "SlowBody": f"the body did not arrive within {READ_SECONDS:g} s",
        }[reason]
        return _refusal(status, reason, text)


def _refusal(status: int, reason: str, text: str) -> aiohttp.web.Response:
    REVIEWS_REFUSED.labels(reason).inc()
    headers = {"Retry-After": "1"} if status == 503 else {}
    # aiohttp reads and drops what is left of the body (for at most READ_SECONDS), so the caller
    # reads this answer rather than a reset connection.
    return aiohttp.web.Response(status=status, text=text, headers=headers)
