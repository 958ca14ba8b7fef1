"""The Kubernetes API calls kopf does not make for us, as awaitables over the official client.

Every write that must not race another writer carries a resourceVersion precondition, so the API
server, not this process, decides who wins; `Conflict` tells the caller to read again. Every call
is counted in `kubeiam_api_requests_total` by verb, resource and the status code it got.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.metadata
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kubeiam.kube import metrics
from kubeiam.kube.resources import CREDENTIALS, GROUP, SERVICE_ACCOUNTS, TRUSTS, VERSION

MERGE_PATCH = "application/merge-patch+json"
PARTIAL_METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
_TIMEOUT = 30
# Calls run in threads (the client is synchronous): this many at once, each with a pooled
# connection of its own. asyncio's default (CPU count + 4) queued a burst's calls behind 6.
CONCURRENCY = 32


class Conflict(Exception):
    """Someone else wrote the object first: read it again and decide again."""

    status = 409


class Gone(Exception):
    """The object was deleted meanwhile; there is nothing left to write."""

    status = 404


class AlreadyExists(Exception):
    """An object of that name exists already."""

    status = 409


class Refused(Exception):
    """The API server refused a request; only its status is kept (the body may quote data)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


_api_client: client.ApiClient | None = None
_executor = concurrent.futures.ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="kube-api")


def connect() -> None:
    """Load credentials the way kopf does: in-cluster in a pod, else the kubeconfig."""
    global _api_client  # one client for the process, created at startup
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    else:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = CONCURRENCY
    _api_client = client.ApiClient(configuration)
    # The API server names the field manager of a write after the user agent's first word:
    # managedFields and audit logs then say "kube-iam", not the client library's default.
    _api_client.user_agent = f"kube-iam/{importlib.metadata.version('kube-iam')}"


def _client() -> client.ApiClient:
    if _api_client is None:
        connect()
    assert _api_client is not None
    return _api_client


def api_client() -> client.ApiClient:
    """The process's client, for what runs its own calls on it (the token server's watches)."""
    return _client()


def _custom() -> client.CustomObjectsApi:
    return client.CustomObjectsApi(_client())


def _raw(
    method: str,
    path: str,
    *,
    body: Any = None,
    accept: str = "application/json",
    request_timeout: float = _TIMEOUT,
) -> tuple[Any, int, None]:
    """One request of the core API, its answer parsed as JSON.

    The generated CoreV1Api is not used: importing it costs about 70 MB and 4 seconds, and each
    call is validated and (de)serialised through models. A refusal raises ApiException with the
    status and reason only, never the body (which may quote a Secret).
    """
    api_client = _client()
    headers = {"Accept": accept, "Content-Type": "application/json"}
    method, url, headers, body, _post = api_client.param_serialize(
        method, path, header_params=headers, body=body, auth_settings=["BearerToken"]
    )
    response = api_client.call_api(method, url, headers, body, _request_timeout=request_timeout)
    data = response.read()  # type: ignore[no-untyped-call]
    if not 200 <= response.status <= 299:
        raise ApiException(status=response.status, reason=response.reason)
    return (json.loads(data) if data else None), response.status, None


async def _call(verb: str, resource: str, request: Callable[[], Any]) -> Any:
    """Run one `*_with_http_info` call off the event loop, count it, and return its data."""
    try:
        data, status, _headers = await asyncio.get_running_loop().run_in_executor(
            _executor, request
        )
    except ApiException as error:
        metrics.count_api_request(verb, resource, error.status)
        raise
    except Exception:
        metrics.count_api_request(verb, resource, None)
        raise
    metrics.count_api_request(verb, resource, status)
    return data


def _translate(error: ApiException) -> Exception:
    if error.status == 409:
        return Conflict(str(error.reason))
    if error.status == 404:
        return Gone(str(error.reason))
    return error


async def _get_custom(
    plural: str, namespace: str, name: str, request_timeout: float = _TIMEOUT
) -> dict[str, Any] | None:
    def call() -> Any:
        return _custom().get_namespaced_custom_object_with_http_info(
            GROUP, VERSION, namespace, plural, name, _request_timeout=request_timeout
        )

    try:
        result: dict[str, Any] = await _call("get", plural, call)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return result


async def get_account(
    namespace: str, name: str, *, request_timeout: float = _TIMEOUT
) -> dict[str, Any] | None:
    return await _get_custom(SERVICE_ACCOUNTS, namespace, name, request_timeout)


async def review_access(
    user: Mapping[str, Any], attributes: Mapping[str, str], *, request_timeout: float = _TIMEOUT
) -> bool:
    """Ask the API server whether `user` (username, uid, groups, extra) may do what
    `attributes` (a SubjectAccessReview's resourceAttributes) say."""
    body: Any = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {**user, "resourceAttributes": dict(attributes)},
    }

    def call() -> Any:
        response: Any = client.AuthorizationV1Api(_client()).create_subject_access_review(
            body, _request_timeout=request_timeout, _preload_content=False
        )
        try:
            return json.loads(response.data), response.status, None
        finally:
            response.release_conn()

    review: dict[str, Any] = await _call("create", "subjectaccessreviews", call)
    status = review.get("status") or {}
    return bool(status.get("allowed")) and not status.get("denied")


async def get_credential(namespace: str, name: str) -> dict[str, Any] | None:
    return await _get_custom(CREDENTIALS, namespace, name)


async def get_trust(namespace: str, name: str) -> dict[str, Any] | None:
    return await _get_custom(TRUSTS, namespace, name)


async def _patch_if_unchanged(
    plural: str, namespace: str, name: str, body: dict[str, Any], *, status: bool
) -> dict[str, Any]:
    api = _custom()
    patch = (
        api.patch_namespaced_custom_object_status_with_http_info
        if status
        else api.patch_namespaced_custom_object_with_http_info
    )

    def call() -> Any:
        return patch(
            GROUP,
            VERSION,
            namespace,
            plural,
            name,
            body,
            _content_type=MERGE_PATCH,
            _request_timeout=_TIMEOUT,
        )

    try:
        result: dict[str, Any] = await _call(
            "patch", f"{plural}/status" if status else plural, call
        )
    except ApiException as error:
        raise _translate(error) from None
    return result


async def patch_status(
    plural: str, namespace: str, name: str, resource_version: str, status: dict[str, Any]
) -> dict[str, Any]:
    """Merge-patch the status subresource if the object is still at `resource_version`."""
    body = {"metadata": {"resourceVersion": resource_version}, "status": status}
    return await _patch_if_unchanged(plural, namespace, name, body, status=True)


async def merge_patch_status(
    plural: str, namespace: str, name: str, status: dict[str, str | None]
) -> dict[str, Any]:
    """Merge-patch status fields without a precondition: only for fields one writer alone owns
    (the token server's lastUsedAt and lastUsedIp), so no other write can be overwritten."""
    return await _patch_if_unchanged(plural, namespace, name, {"status": status}, status=True)


async def patch_metadata(
    plural: str, namespace: str, name: str, resource_version: str, metadata: dict[str, Any]
) -> dict[str, Any]:
    """Merge-patch metadata (owner references) if the object is still at `resource_version`."""
    body = {"metadata": {**metadata, "resourceVersion": resource_version}}
    return await _patch_if_unchanged(plural, namespace, name, body, status=False)


async def create_secret(namespace: str, secret: dict[str, Any]) -> dict[str, Any]:
    """Create a Secret and return its metadata; `AlreadyExists` if the name is taken. The
    body is never logged."""

    def call() -> Any:
        # Asked for as PartialObjectMetadata: the created object's data never comes back.
        partial, status, headers = _raw(
            "POST",
            f"/api/v1/namespaces/{namespace}/secrets",
            body=secret,
            accept=PARTIAL_METADATA,
        )
        return (partial or {}).get("metadata") or {}, status, headers

    try:
        created: dict[str, Any] = await _call("create", "secrets", call)
    except ApiException as error:
        if error.status == 409:
            raise AlreadyExists() from None
        # The response body of a refused create may quote the request: keep only the status.
        raise Refused(
            f"creating a Secret failed: HTTP {error.status} {error.reason}", error.status
        ) from None
    return created


async def get_secret_metadata(namespace: str, name: str) -> dict[str, Any] | None:
    """A Secret's metadata only, or None if there is none.

    The API server is asked for PartialObjectMetadata, so the Secret's data never reaches this
    process on a read.
    """

    def call() -> Any:
        return _raw(
            "GET", f"/api/v1/namespaces/{namespace}/secrets/{name}", accept=PARTIAL_METADATA
        )

    try:
        partial: dict[str, Any] = await _call("get", "secrets", call)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    metadata: dict[str, Any] = partial.get("metadata") or {}
    return metadata


async def _get_whole_secret(
    namespace: str, name: str, keep: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[str, Any] | None:
    """A whole Secret, of which only what `keep` returns leaves the call; None if none."""

    def call() -> Any:
        whole, status, headers = _raw("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
        return keep(whole), status, headers

    try:
        kept: dict[str, Any] = await _call("get", "secrets", call)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return kept


async def get_secret_shape(namespace: str, name: str) -> dict[str, Any] | None:
    """A Secret's metadata, `immutable` and `type`, or None if there is none.

    The whole object is read (PartialObjectMetadata lacks `immutable` and `type`), and its
    data is dropped inside the call, before it reaches anything that could log or keep it.
    """
    return await _get_whole_secret(
        namespace, name, lambda whole: {k: whole.get(k) for k in ("metadata", "immutable", "type")}
    )


async def get_secret_data(namespace: str, name: str) -> dict[str, str] | None:
    """The data of a Secret that is kube-iam's own (its keys), base64 as stored; None if there
    is none. Only for the operator's own key Secrets: never for a credential's Secret."""
    return await _get_whole_secret(namespace, name, lambda whole: dict(whole.get("data") or {}))


async def get_own_secret(namespace: str, name: str) -> dict[str, Any] | None:
    """A Secret that is kube-iam's own (its keys): metadata, `immutable` and data (base64 as
    stored); None if there is none. Never for a credential's Secret."""
    return await _get_whole_secret(
        namespace, name, lambda whole: {k: whole.get(k) for k in ("metadata", "immutable", "data")}
    )


async def _write_secret(
    method: str, verb: str, namespace: str, name: str, body: dict[str, Any]
) -> None:
    """One write of a named Secret; the answer is asked for as metadata, so no data returns."""

    def call() -> Any:
        return _raw(
            method,
            f"/api/v1/namespaces/{namespace}/secrets/{name}",
            body=body,
            accept=PARTIAL_METADATA,
        )

    await _call(verb, "secrets", call)


async def replace_secret(namespace: str, name: str, secret: dict[str, Any]) -> None:
    """Replace a Secret of kube-iam's own if it is still at the body's resourceVersion:
    `Conflict` when another writer came first, `Gone` when it was deleted. The body is never
    logged."""
    try:
        await _write_secret("PUT", "update", namespace, name, secret)
    except ApiException as error:
        if error.status in (404, 409):
            raise _translate(error) from None
        raise Refused(
            f"replacing a Secret failed: HTTP {error.status} {error.reason}", error.status
        ) from None


async def delete_secret(namespace: str, name: str, uid: str) -> None:
    """Delete the Secret if it is still the one with `uid`; gone already is fine."""
    options = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": uid}}
    try:
        await _write_secret("DELETE", "delete", namespace, name, options)
    except ApiException as error:
        if error.status not in (404, 409):
            raise
