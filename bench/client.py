"""The bench's own API client: aiohttp on one pooled TLS connection set, as the cluster's admin.

The kubernetes client runs each call in a thread; the bench must not be the bottleneck of what
it measures, so it speaks HTTP itself: many requests in flight from one event loop, watches as
streams. Secrets are only ever read as PartialObjectMetadata, so no Secret data reaches it.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

GROUP = "iam.kubeiam.io"
VERSION = "v1alpha1"
ACCOUNTS = "serviceaccounts"
CREDENTIALS = "serviceaccountcredentials"
TRUSTS = "federationtrusts"
PARTIAL_METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
MERGE_PATCH = "application/merge-patch+json"
RETRIES = 3
WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"})


class ApiError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:300]}")
        self.status = status


def custom_path(namespace: str, plural: str, name: str = "", subresource: str = "") -> str:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


def secret_path(namespace: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/secrets" + (f"/{name}" if name else "")


@dataclass
class Api:
    """Requests to one API server with the admin client certificate of a local control plane."""

    server: str
    ssl_context: ssl.SSLContext
    concurrency: int = 64
    session: aiohttp.ClientSession | None = None
    requests: int = 0
    webhook_retries: int = 0

    @classmethod
    def for_state_dir(cls, state_dir: Path, *, concurrency: int = 64) -> Api:
        kubeconfig = yaml.safe_load((state_dir / "kubeconfig").read_text())
        server = kubeconfig["clusters"][0]["cluster"]["server"]
        pki = state_dir / "pki"
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        return cls(server=server, ssl_context=context, concurrency=concurrency)

    async def __aenter__(self) -> Api:
        connector = aiohttp.TCPConnector(ssl=self.ssl_context, limit=self.concurrency)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        self.session = aiohttp.ClientSession(self.server, connector=connector, timeout=timeout)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self.session is not None:
            await self.session.close()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        accept: str = "application/json",
        ok: Iterable[int] = (),
    ) -> Any:
        """One request; the parsed answer, or None for a status in `ok` that is not 2xx."""
        assert self.session is not None
        headers = {"Accept": accept}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        self.requests += 1
        timeout = aiohttp.ClientTimeout(total=60)
        async with self.session.request(
            method, path, data=data, headers=headers, timeout=timeout
        ) as response:
            if response.status >= 300:
                text = await response.text()
                if response.status in set(ok):
                    return None
                # Never a Secret's answer: the bench sends no real secret, and reads none.
                raise ApiError(response.status, text)
            return await response.json(content_type=None)

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST; a webhook call that timed out is tried again (and counted), as a user would."""
        for attempt in range(RETRIES + 1):
            try:
                created: dict[str, Any] = await self.request("POST", path, body)
                return created
            except ApiError as error:
                if attempt == RETRIES or error.status != 500 or "webhook" not in str(error):
                    raise
                self.webhook_retries += 1
                await asyncio.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    async def patch_status(self, namespace: str, plural: str, name: str, status: Any) -> None:
        await self.request(
            "PATCH",
            custom_path(namespace, plural, name, "status"),
            {"status": status},
            content_type=MERGE_PATCH,
        )

    async def list_items(self, path: str, *, accept: str = "application/json") -> list[Any]:
        items: list[Any] = []
        token = ""
        while True:
            query = f"?limit=500&continue={token}" if token else "?limit=500"
            page = await self.request("GET", path + query, accept=accept)
            items += page.get("items") or []
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return items

    async def watch(
        self, path: str, *, accept: str = "application/json", resource_version: str = ""
    ) -> AsyncIterator[dict[str, Any]]:
        """Every event of a watch, reconnecting from the last resourceVersion until cancelled."""
        assert self.session is not None
        version = resource_version
        while True:
            query = "?watch=1&timeoutSeconds=600&allowWatchBookmarks=true"
            if version:
                query += f"&resourceVersion={version}"
            timeout = aiohttp.ClientTimeout(total=None, sock_read=700)
            async with self.session.get(
                path + query, headers={"Accept": accept}, timeout=timeout
            ) as response:
                if response.status >= 300:
                    raise ApiError(response.status, await response.text())
                async for line in response.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        version = ""  # too old: start again from now
                        break
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if event.get("type") != "BOOKMARK":
                        yield event

    async def apiserver_requests(self) -> RequestCounts:
        assert self.session is not None
        async with self.session.get("/metrics") as response:
            text = await response.text()
        return RequestCounts.parse(text)


@dataclass(frozen=True)
class RequestCounts:
    """The API server's apiserver_request_total, by (verb, group, resource)."""

    counts: dict[tuple[str, str, str], float]
    at: float = field(default_factory=time.monotonic)

    @classmethod
    def parse(cls, text: str) -> RequestCounts:
        counts: dict[tuple[str, str, str], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "apiserver_request_total":
                    labels = sample.labels
                    key = (labels["verb"], labels["group"], labels["resource"])
                    counts[key] = counts.get(key, 0.0) + sample.value
        return cls(counts)

    def __sub__(self, earlier: RequestCounts) -> RequestCounts:
        keys = set(self.counts) | set(earlier.counts)
        return RequestCounts(
            {k: self.counts.get(k, 0) - earlier.counts.get(k, 0) for k in keys}, self.at
        )

    def by_resource(self, verbs: frozenset[str] | None = None) -> dict[str, int]:
        found: Counter[str] = Counter()
        for (verb, group, resource), value in self.counts.items():
            if value and (verbs is None or verb in verbs):
                found[f"{verb} {resource}.{group or 'core'}"] += int(value)
        return dict(sorted(found.items()))

    def total(self, verbs: frozenset[str] | None = None) -> int:
        return sum(self.by_resource(verbs).values())

    def kube_iam_reads(self) -> int:
        """GETs and LISTs of kube-iam's own kinds: an operator catching up reads them; one at
        rest does not (its steady reads are the Secret audit's)."""
        return sum(
            int(value)
            for (verb, group, _resource), value in self.counts.items()
            if verb in ("GET", "LIST") and group == GROUP
        )

    def kube_iam_writes(self) -> int:
        """Writes of kube-iam's kinds, Secrets and Events: what kube-iam (or the floor) writes."""
        return sum(
            int(value)
            for (verb, group, resource), value in self.counts.items()
            if verb in WRITE_VERBS
            and (
                group in (GROUP, "events.k8s.io")
                or (group == "" and resource in ("secrets", "events"))
            )
        )


async def bounded(
    concurrency: int, items: Iterable[Any], work: Callable[[Any], Awaitable[Any]]
) -> list[Any]:
    """`work(item)` for every item, at most `concurrency` at once, results in order."""
    gate = asyncio.Semaphore(concurrency)

    async def one(item: Any) -> Any:
        async with gate:
            return await work(item)

    return list(await asyncio.gather(*(one(item) for item in items)))
