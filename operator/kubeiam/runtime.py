"""Wires kube-iam into kopf: operator-wide kopf settings, and the controllers it registers."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import kopf

# Importing a controller module registers its handlers with kopf's default registry.
from kubeiam.controllers import (  # noqa: F401
    accounts,
    admission,
    credentials,
    signing_keys,
    trusts,
)
from kubeiam.kube import bookkeeping, memory, metrics, peering, tls
from kubeiam.kube import webhook_server as webhook_server_module
from kubeiam.settings import Settings, get_settings

ANNOTATION_PREFIX = "kubeiam.io"
PEERING_NAME = "kube-iam"


admission.register(kopf.get_default_registry())


class WebhookOff:
    """The admission server when KUBEIAM_WEBHOOK_PORT is 0: it serves nothing, ever."""

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        await asyncio.Event().wait()
        yield {}  # pragma: no cover  (never reached)


def webhook_server(ours: Settings) -> Any:
    """The admission server (kube/webhook_server.py: bounded bodies and concurrency), with our
    certificate, on every replica.

    A renewed certificate (cert-manager rotates the Secret) is loaded into the running server
    without a restart (kube/webhook_server.py). The webhook configuration is not managed by the
    operator: deploy/ (or the local control plane) registers it, so the operator needs no right
    to change webhook configurations.
    """
    if ours.webhook.port == 0:
        return WebhookOff()
    cert, key = ours.webhook.cert_dir / "tls.crt", ours.webhook.cert_dir / "tls.key"
    missing = tls.missing_files(ours.webhook.cert_dir)
    if missing:
        raise kopf.PermanentError(
            f"KUBEIAM_WEBHOOK_CERT_DIR: no serving certificate at {', '.join(missing)}; mount "
            "the kube-iam-webhook-tls Secret there (docs/install.md), or set "
            "KUBEIAM_WEBHOOK_PORT=0 where the webhook is not registered"
        )
    return webhook_server_module.ReviewServer(
        addr=ours.webhook.address,
        port=ours.webhook.port,
        certfile=cert,
        pkeyfile=key,
        max_review_bytes=ours.webhook.max_review_bytes,
        concurrency=ours.webhook.concurrency,
        warning_lead=ours.webhook.cert_warning_lead,
        client_ca=ours.webhook.client_ca,
    )


def configure_admission(settings: kopf.OperatorSettings, ours: Settings) -> None:
    settings.admission.server = webhook_server(ours)
    settings.admission.managed = None


def admission_only_registry() -> kopf.OperatorRegistry:
    """A registry with the webhook alone: `kube-iam run --admission-only` serves admission and
    watches nothing (a webhook-only Deployment, or the tests' session-wide webhook)."""
    registry = kopf.OperatorRegistry()
    admission.register(registry)
    # The default registry logs in by itself; a registry of our own needs to be told how.
    kopf.on.login(registry=registry)(kopf.login_via_client)

    @kopf.on.startup(registry=registry)
    def configure_webhook_only(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_admission(settings, get_settings())
        # kube-iam's kinds are found once at start (API discovery, open to everyone), not by
        # watching CRDs, so the webhook's ServiceAccount needs no right to them; an upgrade that
        # serves a new version rolls the webhook's pods anyway.
        settings.scanning.disabled = True
        logging.getLogger("kubeiam").setLevel(logging.INFO)

    @kopf.on.startup(registry=registry)
    async def serve_metrics_webhook_only(**_: Any) -> None:
        await _serve_metrics()

    return registry


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Apply kube-iam's choices to kopf before any watch starts."""
    ours = get_settings()
    # Before the API client starts its threads: each would otherwise get a C heap of its own.
    memory.limit_arenas(ours.memory.malloc_arena_max)
    configure_admission(settings, ours)
    # Replicas meet in kube-iam's own peering object, not kopf's "default", which another kopf
    # operator in the cluster may use. Unless `--peering` named one, it is optional: without
    # it (a local run with no deploy/), kopf runs standalone.
    if not settings.peering.mandatory:
        settings.peering.name = PEERING_NAME
    # kopf tells a create from an update by status.observedGeneration, which every handler
    # writes anyway, instead of an annotation of its own written after each (kube/bookkeeping.py
    # says why). Retry counts, while a handler fails, live in annotations under our prefix.
    progress = bookkeeping.UnmarkedProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.progress_storage = progress
    settings.persistence.diffbase_storage = bookkeeping.ObservedGenerationDiffBase(progress)
    settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/finalizer"
    # A dead watch must be noticed: the server closes it, and the client gives up a bit later.
    settings.watching.server_timeout = ours.watching.server_timeout
    settings.watching.client_timeout = ours.watching.client_timeout
    settings.watching.connect_timeout = 10
    # Listings come a page at a time, each dropped once its objects are handed on.
    settings.watching.chunk_size = ours.watching.list_page
    # An API error is retried soon: most are a restart or a brief overload of the API server.
    settings.execution.default_backoff = 5
    # At most this many objects handled at once, each kind: the others wait as their bodies
    # alone, not as a worker holding a patch, loggers and a handler's frames. kube-iam's indices
    # are not kopf's (kube/indices.py), so no worker waits for the others at start and a limit
    # cannot hang it (nolar/kopf#1243). A worker with nothing left to do gives its place up
    # after the idle time, not kopf's 5 s.
    settings.queueing.worker_limit = ours.watching.worker_limit
    settings.queueing.idle_timeout = ours.watching.worker_idle
    # Only explicit events are posted; log lines stay in the log.
    settings.posting.loggers = False
    settings.posting.reporting_component = "kube-iam"
    settings.posting.reporting_instance = socket.gethostname()
    settings.posting.event_name_prefix = "kube-iam-"
    # How long a dead replica's heartbeat counts: the paused replica takes over after this.
    settings.peering.lifetime = ours.watching.peering_lifetime
    peering.follow()
    logging.getLogger("kubeiam").setLevel(logging.INFO)


@kopf.on.startup()
async def serve_metrics(**_: Any) -> None:
    """Serve /metrics from the start, so a scrape sees the operator as soon as it runs."""
    await _serve_metrics()


async def _serve_metrics() -> None:
    try:
        await metrics.serve(get_settings().observability.metrics_port)
    except RuntimeError as error:
        # A port in use will not free itself: stop with the reason instead of retrying.
        raise kopf.PermanentError(str(error)) from None


@kopf.on.cleanup()
async def stop_metrics(**_: Any) -> None:
    await metrics.stop()
