"""kube-iam's webhook server reads large AdmissionReviews through a private method of kopf's.

runtime.WebhookServer overrides kopf.WebhookServer._serve to raise aiohttp's 1 MiB body limit;
kopf offers no setting for it. If a kopf release renames or reshapes that method, the override
is silently never called and large objects come back as 413 (an internal error in kubectl)
instead of the schema's refusal naming the field. These checks fail first.
"""

from __future__ import annotations

import inspect

import kopf


def test_kopf_still_serves_each_review_through_a_static_serve_of_fn_and_request() -> None:
    method = inspect.getattr_static(kopf.WebhookServer, "_serve")
    assert isinstance(method, staticmethod), "kopf.WebhookServer._serve is gone or not static"
    assert list(inspect.signature(kopf.WebhookServer._serve).parameters) == ["fn", "request"]


def test_kopf_calls_serve_through_self_so_that_the_override_is_used() -> None:
    source = inspect.getsource(kopf.WebhookServer.__call__)
    assert "self._serve(fn, request)" in source, "kopf no longer calls self._serve per request"
