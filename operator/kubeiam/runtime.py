"""Wires kube-iam into kopf: operator-wide kopf settings, and the controllers it registers."""

from __future__ import annotations

import logging
import socket
from typing import Any

import kopf

# Importing a controller module registers its handlers with kopf's default registry.
from kubeiam.controllers import accounts, credentials, trusts  # noqa: F401
from kubeiam.kube import metrics, peering
from kubeiam.settings import get_settings

ANNOTATION_PREFIX = "kubeiam.io"
PEERING_NAME = "kube-iam"


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Apply kube-iam's choices to kopf before any watch starts."""
    ours = get_settings()
    # Replicas meet in kube-iam's own peering object, not kopf's "default", which another kopf
    # operator in the cluster may use. Unless `--peering` named one, it is optional: without
    # it (a local run with no deploy/), kopf runs standalone.
    if not settings.peering.mandatory:
        settings.peering.name = PEERING_NAME
    # kopf's own bookkeeping lives in annotations under our prefix: status fields would be
    # pruned by the structural schema, and the prefix tells a person who wrote them.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/finalizer"
    # A dead watch must be noticed: the server closes it, and the client gives up a bit later.
    settings.watching.server_timeout = ours.watch_server_timeout
    settings.watching.client_timeout = ours.watch_client_timeout
    settings.watching.connect_timeout = 10
    # An API error is retried soon: most are a restart or a brief overload of the API server.
    settings.execution.default_backoff = 5
    # No worker limit: with indices, kopf holds a worker per object until every object is
    # indexed, so a limit below the object count would hang the start (nolar/kopf#1243).
    # API concurrency is bounded by the executor our client calls run in instead.
    # Only explicit events are posted; log lines stay in the log.
    settings.posting.loggers = False
    settings.posting.reporting_component = "kube-iam"
    settings.posting.reporting_instance = socket.gethostname()
    settings.posting.event_name_prefix = "kube-iam-"
    # How long a dead replica's heartbeat counts: the paused replica takes over after this.
    settings.peering.lifetime = ours.peering_lifetime
    peering.follow()
    logging.getLogger("kubeiam").setLevel(logging.INFO)


@kopf.on.startup()
async def serve_metrics(**_: Any) -> None:
    """Serve /metrics from the start, so a scrape sees the operator as soon as it runs."""
    try:
        await metrics.serve(get_settings().metrics_port)
    except RuntimeError as error:
        # A port in use will not free itself: stop with the reason instead of retrying.
        raise kopf.PermanentError(str(error)) from None


@kopf.on.cleanup()
async def stop_metrics(**_: Any) -> None:
    await metrics.stop()
