"""The scenarios of `make bench`, each with the floor it is compared to.

The floor is the API server doing the same writes for a bare client with no operator running:
create the credential, create its Secret, write the credential's status and the account's.
Whatever kube-iam adds on top of that is the operator's cost.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import statistics
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.client import (
    ACCOUNTS,
    CREDENTIALS,
    GROUP,
    TRUSTS,
    VERSION,
    WRITE_VERBS,
    Api,
    RequestCounts,
    bounded,
    custom_path,
    secret_path,
)
from bench.observe import Observer
from bench.processes import BenchCluster, Operator
from kubeiam.domain import credentials as rules
from kubeiam.domain.conditions import format_time
from kubeiam.domain.secret_format import credential_id
from kubeiam.kube.key_secret import KeyRing
from kubeiam.kube.secrets import SecretRequest, _manifest

BENCH_LABEL = "kubeiam.io/bench"
LIMIT = 5
# Not a client secret: the floor's Secrets hold this fixed text where the operator's hold one.
FLOOR_VALUE = "bench-floor-placeholder"


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is; `scale` 1 is the full run, 0.1 a quick one."""

    scale: float
    concurrency: int = 32

    def n(self, full: int, least: int = 10) -> int:
        return max(least, round(full * self.scale))

    @property
    def issuance(self) -> int:
        return self.n(200, 20)

    @property
    def burst(self) -> int:
        return self.n(1000, 50) // 10 * 10

    @property
    def expiry(self) -> int:
        return self.n(1000, 50)

    @property
    def expiry_spread(self) -> float:
        return max(15.0, 60.0 * min(1.0, self.scale * 2))

    @property
    def steady_accounts(self) -> int:
        return self.n(2000, 40)

    @property
    def rest_window(self) -> float:
        # A whole minute at least: at rest the Secret audit spends a budget a minute, and a
        # shorter window extrapolates a few requests.
        return max(60.0, 60.0 * self.scale)


def percentiles(values: Iterable[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}
    cuts = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else []

    def at(p: int) -> float:
        return ordered[0] if not cuts else cuts[p - 1]

    return {
        "p50": at(50),
        "p90": at(90),
        "p99": at(99),
        "max": ordered[-1],
        "n": float(len(ordered)),
    }


# -- manifests ----------------------------------------------------------------------------------


def account_body(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ServiceAccount",
        "metadata": {"name": name},
        "spec": {"displayName": name, "scope": "organization", "roles": ["compute.deployer"]},
    }


def credential_body(name: str, account: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ServiceAccountCredential",
        "metadata": {"name": name},
        "spec": {"serviceAccountName": account, "displayName": name, **spec},
    }


async def new_namespace(api: Api, prefix: str) -> str:
    name = f"{prefix}-{int(time.time()) % 100000}"
    await api.create(
        "/api/v1/namespaces",
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {BENCH_LABEL: "1"}},
        },
    )
    return name


async def create_accounts(
    api: Api, namespace: str, names: list[str], sizes: Sizes, *, wait_issued: bool
) -> None:
    path = custom_path(namespace, ACCOUNTS)
    await bounded(sizes.concurrency, names, lambda n: api.create(path, account_body(n)))
    if not wait_issued:
        return
    deadline = time.monotonic() + 60 + len(names) / 5
    while True:
        items = await api.list_items(path)
        if sum(1 for i in items if (i.get("status") or {}).get("clientId")) >= len(names):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"accounts in {namespace} did not all get a client id")
        await asyncio.sleep(0.25)


async def delete_namespaces(api: Api, names: list[str], *, within: float = 600) -> None:
    for name in names:
        await api.request("DELETE", f"/api/v1/namespaces/{name}", ok=(404,))
    deadline = time.monotonic() + within
    while True:
        left = [n for n in names if await api.request("GET", f"/api/v1/namespaces/{n}", ok=(404,))]
        if not left:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"namespaces {left} were not deleted")
        await asyncio.sleep(0.5)


# -- the floor: the same writes, by a bare client ---------------------------------------------


# The floor signs its Secret's proof of authorship as the operator does (kube/secrets.py), with
# a key of its own: what the signature costs matters, not whose key it is.
FLOOR_PROOF_KEY = KeyRing(active="floor", keys={"floor": hashlib.sha256(b"floor").digest()})


async def floor_issue(api: Api, namespace: str, name: str, account: str, account_uid: str) -> None:
    """The four writes an issuance amounts to, in order, as a bare client does them."""
    created = await api.create(custom_path(namespace, CREDENTIALS), credential_body(name, account))
    uid = created["metadata"]["uid"]
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=90)
    request = SecretRequest(
        namespace=namespace,
        name=name,
        credential=name,
        credential_uid=uid,
        credential_id=credential_id(uid),
        account=account,
        client_id=f"{account}@{namespace}.example.iam",
        token_url="https://iam.example.invalid/oauth2/token",  # noqa: S106 - a URL
        expires_at=expires,
        keys={
            "clientId": "client-id",
            "clientSecret": "client-secret",
            "tokenUrl": "token-url",
            "expiresAt": "expires-at",
        },
        labels={},
        annotations={},
    )
    digest = "sha256:" + hashlib.sha256(FLOOR_VALUE.encode()).hexdigest()
    # The operator's Secret body, with a placeholder where the client secret goes.
    secret = await api.create(
        secret_path(namespace), _manifest(request, FLOOR_VALUE, digest, FLOOR_PROOF_KEY)
    )
    status = rules.active_status(
        {},
        generation=1,
        created_at=created["metadata"]["creationTimestamp"],
        issuance=rules.Issuance(
            credential_id=request.credential_id,
            client_id=request.client_id,
            secret_name=name,
            secret_hash=digest,
            expires_at=expires,
            effective_roles=["compute.deployer"],
            deletion_policy="Delete",
            secret_uid=secret["metadata"]["uid"],
            account_uid=account_uid,
        ),
        now=datetime.datetime.now(datetime.UTC),
    )
    await api.patch_status(namespace, CREDENTIALS, name, status)
    await api.patch_status(
        namespace,
        ACCOUNTS,
        account,
        {"activeCredentials": [{"name": name, "uid": uid}], "activeCredentialCount": 1},
    )


async def _account_uids(api: Api, namespace: str) -> dict[str, str]:
    items = await api.list_items(custom_path(namespace, ACCOUNTS))
    return {i["metadata"]["name"]: i["metadata"]["uid"] for i in items}


async def floor_issuance(api: Api, sizes: Sizes) -> dict[str, Any]:
    n = sizes.issuance
    namespace = await new_namespace(api, "bench-floor-issue")
    accounts = [f"acct-{i:04d}" for i in range((n + 3) // 4)]
    await create_accounts(api, namespace, accounts, sizes, wait_issued=False)
    uids = await _account_uids(api, namespace)
    latencies = []
    async with Observer(api, namespace) as seen:
        for i in range(n):
            name, account = f"cred-{i:04d}", accounts[i % len(accounts)]
            start = time.monotonic()
            await floor_issue(api, namespace, name, account, uids[account])
            latencies.append(await seen.wait_issued(name, within=30) - start)
    return {"namespace": namespace, "latency_s": percentiles(latencies), "raw": latencies}


async def floor_burst(api: Api, sizes: Sizes) -> dict[str, Any]:
    n = sizes.burst
    namespace = await new_namespace(api, "bench-floor-burst")
    accounts = [f"acct-{i:04d}" for i in range(n // 5)]
    await create_accounts(api, namespace, accounts, sizes, wait_issued=False)
    uids = await _account_uids(api, namespace)
    names = [(f"cred-{i:05d}", accounts[i % len(accounts)]) for i in range(n)]
    before = await api.apiserver_requests()
    cpu, start = time.process_time(), time.monotonic()
    await bounded(
        sizes.concurrency,
        names,
        lambda item: floor_issue(api, namespace, item[0], item[1], uids[item[1]]),
    )
    elapsed = time.monotonic() - start
    client_cpu = time.process_time() - cpu
    writes = (await api.apiserver_requests()) - before
    return {
        "namespace": namespace,
        "n": n,
        "seconds": elapsed,
        "per_second": n / elapsed,
        "bench_client_cpu_s": client_cpu,
        "writes": writes.by_resource(WRITE_VERBS),
    }


# -- kube-iam --------------------------------------------------------------------------------


def _writes_per_issuance(delta: RequestCounts, issued: int) -> dict[str, Any]:
    """The writes of kube-iam's kinds and Secrets besides the user's create, per credential."""
    writes = delta.by_resource(WRITE_VERBS)
    user = writes.get(f"POST {CREDENTIALS}.{GROUP}", 0)
    objects = sum(
        v for k, v in writes.items() if k.endswith(f".{GROUP}") or k.endswith(" secrets.core")
    )
    events = sum(v for k, v in writes.items() if " events." in k)
    return {
        "writes": writes,
        "object_writes_per_issuance": (objects - user) / issued,
        "event_writes_per_issuance": events / issued,
    }


async def _wind_down(
    api: Api, operator: Operator, cpu_before: float, before: RequestCounts
) -> tuple[float, RequestCounts]:
    """End a measured scenario: the profile stops, then the operator's CPU and, once the API
    is quiet, the requests it took since `before`."""
    operator.stop_profile()
    operator_cpu = operator.cpu_seconds() - cpu_before
    await quiet(api, seconds=3)
    return operator_cpu, (await api.apiserver_requests()) - before


async def issuance(
    api: Api, sizes: Sizes, operator: Operator, *, profile: Path | None = None
) -> dict[str, Any]:
    """One credential at a time: create, then wait for its Secret and Ready."""
    n = sizes.issuance
    namespace = await new_namespace(api, "bench-issue")
    accounts = [f"acct-{i:04d}" for i in range((n + 3) // 4)]
    await create_accounts(api, namespace, accounts, sizes, wait_issued=True)
    path = custom_path(namespace, CREDENTIALS)
    latencies = []
    async with Observer(api, namespace) as seen:
        before = await api.apiserver_requests()
        cpu_before = operator.cpu_seconds()
        if profile:
            operator.profile(profile)
        for i in range(n):
            name, account = f"cred-{i:04d}", accounts[i % len(accounts)]
            start = time.monotonic()
            await api.create(path, credential_body(name, account))
            latencies.append(await seen.wait_issued(name, within=60) - start)
        operator_cpu, delta = await _wind_down(api, operator, cpu_before, before)
    return {
        "namespace": namespace,
        "latency_s": percentiles(latencies),
        "raw": latencies,
        "operator_cpu_s": operator_cpu,
        **_writes_per_issuance(delta, n),
    }


def _uneven(n: int, accounts: int) -> list[int]:
    """Credentials per account: 3 and 7 in turn (average 5), so some wait for a slot."""
    counts = [3 if i % 2 == 0 else 7 for i in range(accounts)]
    while sum(counts) > n:
        counts[counts.index(max(counts))] -= 1
    return counts


def _expected(names: list[tuple[str, str]]) -> Counter[str]:
    per_account = Counter(account for _, account in names)
    return Counter(
        {
            "Active": sum(min(c, LIMIT) for c in per_account.values()),
            "Pending": sum(max(0, c - LIMIT) for c in per_account.values()),
        }
    )


def _settled(seen: Observer, names: list[tuple[str, str]]) -> bool:
    """Every account has min(n, limit) Active (Ready, with a Secret) and the rest Pending."""
    per_account: dict[str, Counter[str]] = {}
    for name, account in names:
        cred = seen.credentials.get(name)
        if cred is None:
            return False
        state = cred.state
        if state == "Active" and seen.issued_at(name) is None:
            return False
        per_account.setdefault(account, Counter())[state] += 1
    wanted = Counter(account for _, account in names)
    for account, count in wanted.items():
        states = per_account.get(account, Counter())
        if states["Active"] != min(count, LIMIT) or states["Pending"] != max(0, count - LIMIT):
            return False
    return True


async def burst(
    api: Api, sizes: Sizes, operator: Operator, *, profile: Path | None = None
) -> dict[str, Any]:
    """All credentials at once over many accounts; until each has its right state."""
    n = sizes.burst
    namespace = await new_namespace(api, "bench-burst")
    accounts = [f"acct-{i:04d}" for i in range(n // 5)]
    await create_accounts(api, namespace, accounts, sizes, wait_issued=True)
    names = []
    for account, count in zip(accounts, _uneven(n, len(accounts)), strict=True):
        names += [(f"{account}-{k}", account) for k in range(count)]
    path = custom_path(namespace, CREDENTIALS)
    async with Observer(api, namespace) as seen:
        before = await api.apiserver_requests()
        cpu_before = operator.cpu_seconds()
        if profile:
            operator.profile(profile)
        client_cpu, start = time.process_time(), time.monotonic()
        await bounded(
            sizes.concurrency, names, lambda item: api.create(path, credential_body(*item))
        )
        created = time.monotonic() - start
        client_cpu = time.process_time() - client_cpu
        await seen.wait(lambda: _settled(seen, names), within=120 + n, what="the burst", poll=0.1)
        elapsed = time.monotonic() - start
        operator_cpu, delta = await _wind_down(api, operator, cpu_before, before)
    return {
        "namespace": namespace,
        "n": n,
        "expected": dict(_expected(names)),
        "seconds": elapsed,
        "per_second": n / elapsed,
        "creates_seconds": created,
        "bench_client_cpu_s": client_cpu,
        "operator_cpu_s": operator_cpu,
        "operator_rss_mb": operator.rss_mb(),
        **_writes_per_issuance(delta, _expected(names)["Active"]),
    }


async def expiry(api: Api, sizes: Sizes, *, issue_rate: float) -> dict[str, Any]:
    """Credentials expiring within a minute: how late each turns Expired."""
    n = sizes.expiry
    namespace = await new_namespace(api, "bench-expiry")
    accounts = [f"acct-{i:04d}" for i in range((n + LIMIT - 1) // LIMIT)]
    await create_accounts(api, namespace, accounts, sizes, wait_issued=True)
    # They must be issued before they expire: leave twice the time the burst took.
    margin = max(20.0, 2 * n / max(issue_rate, 1.0))
    first = time.time() + margin
    spread = sizes.expiry_spread
    names = [(f"cred-{i:05d}", accounts[i % len(accounts)]) for i in range(n)]
    expires = {
        name: format_time(datetime.datetime.fromtimestamp(first + spread * i / n, datetime.UTC))
        for i, (name, _) in enumerate(names)
    }
    path = custom_path(namespace, CREDENTIALS)
    async with Observer(api, namespace) as seen:
        await bounded(
            sizes.concurrency,
            names,
            lambda item: api.create(path, credential_body(*item, expiresAt=expires[item[0]])),
        )
        issued_in_time = 0

        def all_active() -> bool:
            return all(seen.issued_at(name) is not None for name, _ in names)

        try:
            await seen.wait(all_active, within=margin, what="every credential to be issued")
            issued_in_time = n
        except TimeoutError:
            issued_in_time = sum(1 for name, _ in names if seen.issued_at(name) is not None)

        def all_expired() -> bool:
            return all(
                "Expired" in seen.credentials.get(name, _EMPTY).first_state for name, _ in names
            )

        await seen.wait(all_expired, within=margin + spread + 120, what="every expiry")
        lateness = []
        for name, _ in names:
            cred = seen.credentials[name]
            due = cred.expires_at
            assert due is not None
            lateness.append(cred.first_state_wall["Expired"] - due)
    return {
        "namespace": namespace,
        "n": n,
        "spread_s": spread,
        "issued_before_expiry": issued_in_time,
        "lateness_s": percentiles(lateness),
        "raw": lateness,
    }


class _Empty:
    first_state: dict[str, float] = {}  # noqa: RUF012


_EMPTY: Any = _Empty()


async def quiet(api: Api, *, seconds: float, within: float = 120, reads: bool = False) -> float:
    """Until no write of kube-iam's kinds or Secrets for `seconds` (the operator is done);
    with `reads`, no read of kube-iam's kinds either (it has also worked through the events
    still queued for it). Returns how long that took."""
    start = time.monotonic()
    deadline = start + within
    last = await api.apiserver_requests()
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < seconds:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
        now = await api.apiserver_requests()
        delta = now - last
        if delta.kube_iam_writes() or (reads and delta.kube_iam_reads()):
            quiet_since = time.monotonic()
        last = now
    return time.monotonic() - start


async def settle_many(api: Api, sizes: Sizes) -> dict[str, Any]:
    """The steady scenario's objects: accounts with 5 credentials each, all Active."""
    accounts_n = sizes.steady_accounts
    namespace = await new_namespace(api, "bench-steady")
    accounts = [f"acct-{i:05d}" for i in range(accounts_n)]
    await create_accounts(api, namespace, accounts, sizes, wait_issued=True)
    names = [(f"{a}-{k}", a) for a in accounts for k in range(LIMIT)]
    path = custom_path(namespace, CREDENTIALS)
    start = time.monotonic()
    async with Observer(api, namespace) as seen:
        await bounded(
            sizes.concurrency, names, lambda item: api.create(path, credential_body(*item))
        )
        await seen.wait(
            lambda: _settled(seen, names),
            within=300 + len(names) / 2,
            what="every credential to settle",
            poll=1.0,
        )
    settle_seconds = time.monotonic() - start
    # "At rest" is measured next: the operator may still be working through the watch events
    # of the burst of creates (reads, no writes) for a while after the last one settled.
    caught_up = await quiet(api, seconds=10, within=600, reads=True)
    return {
        "namespace": namespace,
        "n": len(names),
        "settle_seconds": settle_seconds,
        "caught_up_seconds": caught_up,
    }


async def rest_rate(api: Api, seconds: float) -> dict[str, Any]:
    """API requests a minute while nothing changes (every client, the control plane's too)."""
    before = await api.apiserver_requests()
    await asyncio.sleep(seconds)  # a measurement window, not a wait for something
    delta = (await api.apiserver_requests()) - before
    minutes = seconds / 60
    return {
        "window_s": seconds,
        "requests_per_min": delta.total() / minutes,
        "writes_per_min": delta.total(WRITE_VERBS) / minutes,
        "by_resource_per_min": {k: v / minutes for k, v in delta.by_resource().items()},
    }


async def count_objects(api: Api) -> int:
    total = 0
    for plural in (ACCOUNTS, CREDENTIALS, TRUSTS):
        page = await api.request("GET", f"/apis/{GROUP}/{VERSION}/{plural}?limit=1")
        metadata = page.get("metadata") or {}
        total += len(page.get("items") or []) + int(metadata.get("remainingItemCount") or 0)
    return total


def _resumed(operator: Operator) -> int:
    count = 0
    for line in operator.log_lines():
        if "Resuming is processed" not in line:
            continue
        try:
            json.loads(line)
        except json.JSONDecodeError:
            continue
        count += 1
    return count


async def restart(
    api: Api, cluster: BenchCluster, *, quiet_seconds: float = 10, profile: Path | None = None
) -> tuple[Operator, dict[str, Any]]:
    """Start a new operator over everything settled: time to resumed, writes meanwhile."""
    expected = await count_objects(api)
    before = await api.apiserver_requests()
    operator = Operator(cluster, name="bench-restart")
    spawned = time.monotonic()
    operator.start()
    healthy = time.monotonic() - spawned
    if profile:
        operator.profile(profile)
    deadline = time.monotonic() + 300 + expected / 20
    while _resumed(operator) < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{_resumed(operator)} of {expected} objects resumed")
        await asyncio.sleep(0.1)
    resumed = time.monotonic() - spawned
    operator.stop_profile()
    rss = operator.rss_mb()
    await quiet(api, seconds=quiet_seconds)
    delta = (await api.apiserver_requests()) - before
    writes = delta.by_resource(WRITE_VERBS)
    ours = {
        k: v for k, v in writes.items() if k.endswith(f".{GROUP}") or k.endswith(" secrets.core")
    }
    return operator, {
        "objects": expected,
        "healthy_s": healthy,
        "resumed_s": resumed,
        "rss_mb_after_resume": rss,
        "writes": writes,
        "kube_iam_writes": sum(ours.values()),
        "reads": delta.by_resource(frozenset({"GET", "LIST", "WATCH"})),
    }
