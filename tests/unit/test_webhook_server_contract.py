"""kube-iam's webhook server (kube/webhook_server.py) replaces kopf's serving loop, and relies on
what kopf does around it: it iterates `settings.admission.server(fn)` as an async generator and
calls `fn(review, webhook=, sslpeer=, headers=)`, and it raises these errors. If a kopf release
changes that, these checks fail before a cluster does."""

from __future__ import annotations

import inspect

from kopf._cogs.structs import reviews
from kopf._core.engines import admission

from kubeiam.kube.webhook_server import ReviewServer


def test_kopf_iterates_the_configured_server_with_its_webhook_function() -> None:
    source = inspect.getsource(admission.admission_webhook_server)
    assert "async for client_config in settings.admission.server(webhookfn)" in source


def test_kopfs_webhook_function_takes_what_the_server_passes() -> None:
    source = inspect.getsource(admission.serve_admission_request)
    parameters = inspect.signature(admission.serve_admission_request).parameters
    assert {"request", "webhook", "sslpeer", "headers"} <= set(parameters), source[:200]


def test_the_errors_and_the_client_config_kube_iam_names_exist() -> None:
    for name in ("AmbiguousResourceError", "UnknownResourceError", "WebhookError"):
        assert issubclass(getattr(admission, name), Exception)
    assert "url" in reviews.WebhookClientConfig.__annotations__
    assert inspect.isasyncgenfunction(ReviewServer.__call__)
