"""The token figures of `make bench`: the token server beside its floor and beside Ory Hydra.

Each token scenario is measured on four servers in the same run, with the same load generator
(vegeta, keep-alive, HTTP/1.1, TLS to the same certificate): kube-iam's token server
(`kube-iam token-server`, started through its CLI with env settings), the floor (the same aiohttp
stack answering fixed JSON bodies of the same sizes, bench/token_floor.py), Hydra with its
defaults and Hydra with its cheapest secret hasher. Each server gets a warm-up, then every
concurrency level in LEVELS for `seconds`, then a fixed rate of half its best throughput.

The operator issues the bench's credential and signing keys and is then stopped: during the
attacks only the token server talks to the API server, so the API requests counted are its own.
The client secret is read from its Secret by the bench and handed to vegeta in a 0600 file; it
is never printed or written into the results.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import io
import json
import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import dpop_targets, exchange_rate, peers, scenarios
from bench.client import (
    ACCOUNTS,
    CREDENTIALS,
    GROUP,
    TRUSTS,
    VERSION,
    Api,
    RequestCounts,
    bounded,
    custom_path,
    secret_path,
)
from bench.processes import (
    BenchCluster,
    Operator,
    pss_mb,
    rss_mb,
    spawn,
    start_profile,
    stop_profile,
)
from kubeiam.devcluster import install
from kubeiam.devcluster.cluster import free_port, terminate
from kubeiam.domain import credentials as rules
from kubeiam.domain.secret_format import credential_id
from kubeiam.settings import TOKEN_PATH, Settings
from kubeiam.tokens.dpop import HEADER as DPOP_HEADER
from kubeiam.tokens.exchange import GRANT_TYPE as TOKEN_EXCHANGE
from kubeiam.tokens.exchange import JWT_TYPE
from kubeiam.tokens.server import INTROSPECT_PATH, JWKS_PATH
from kubeiam.tokens.workers import worker_count

LEVELS = (16, 64, 256)
FORM = "application/x-www-form-urlencoded"
EXCHANGE_AUDIENCE = "sts.bench.kube-iam"  # what the bench's subject tokens are issued for
SYSTEMS = ("kube-iam", "floor", "hydra", "hydra-cheapest")
# The scenarios measured on every system, by BENCH_ONLY name.
LOAD_SCENARIOS = ("tokens_cc_basic", "tokens_cc_body", "tokens_introspect", "tokens_jwks")
# Token exchange through a trust (RFC 8693) on the systems that have it: Hydra v2.3.0 has no
# token-exchange grant; the floor answers a body the size of kube-iam's exchange answer.
EXCHANGE_SCENARIO = "tokens_exchange"
EXCHANGE_SYSTEMS = ("kube-iam", "floor")
# client_credentials (secret in the form) with a DPoP proof (RFC 9449): a proof is single-use,
# so vegeta reads a stream of targets, each with a fresh one (bench.dpop_targets). Hydra v2.3.0
# (and its fosite v0.49.0) has no DPoP; the floor answers the size of kube-iam's DPoP answer.
DPOP_SCENARIO = "tokens_dpop"
DPOP_SYSTEMS = ("kube-iam", "floor")
DPOP_STREAM = [sys.executable, "-m", "bench.dpop_targets"]
CURVE_SCENARIOS = (*LOAD_SCENARIOS, EXCHANGE_SCENARIO, DPOP_SCENARIO)  # the table's rows
OTHER_SCENARIOS = ("tokens_usage_writes", "tokens_cache_rss")
ALL = (*CURVE_SCENARIOS, *OTHER_SCENARIOS)


def workers() -> int:
    """Token server workers (KUBEIAM_TOKEN_WORKERS), and as many floor processes:
    BENCH_TOKEN_WORKERS, else what the token server starts by default (one a usable CPU), so
    that the floor never runs on fewer processes than the server it is the floor of."""
    return int(os.environ.get("BENCH_TOKEN_WORKERS") or 0) or worker_count(Settings())


Step = Callable[[str, str, Coroutine[Any, Any, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class TokenSizes:
    scale: float

    @property
    def seconds(self) -> float:
        return max(2.0, 20.0 * self.scale)

    @property
    def warmup(self) -> float:
        return max(1.0, 5.0 * self.scale)

    @property
    def cached(self) -> int:
        return max(200, round(10_000 * self.scale)) // 5 * 5

    @property
    def usage_seconds(self) -> float:
        # Writes a minute need minutes: never shorter than one whatever the scale.
        return max(60.0, 120.0 * self.scale)


def wanted(only: set[str]) -> bool:
    return not only or any(key in ALL for key in only)


# -- pure helpers ----------------------------------------------------------------------------


def basic(client_id: str, secret: str) -> str:
    """RFC 6749 §2.3.1: both parts form-encoded, then joined and base64-encoded."""
    pair = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(secret)}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def best(levels: dict[str, dict[str, Any]]) -> str:
    """The concurrency level with the most successful answers a second."""
    return max(levels, key=lambda level: levels[level]["per_second"])


def ratio(ours: float, theirs: float) -> float | None:
    return ours / theirs if theirs else None


# -- the servers -----------------------------------------------------------------------------


@dataclass
class Served:
    """A server under test: where its endpoints are and how to measure its process."""

    name: str
    process: subprocess.Popen[bytes]
    token_url: str
    introspect_url: str
    jwks_url: str
    clients: dict[str, tuple[str, str]] = field(default_factory=dict, repr=False)
    token: str = field(default="", repr=False)  # one access token, for introspection
    # The account's client id and a subject token its trust accepts, for token exchange.
    exchange: tuple[str, str] = field(default=("", ""), repr=False)

    @property
    def pids(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        extra = [int(p) for p in children.read_text().split()] if children.exists() else []
        return [self.process.pid, *extra]

    def rss_mb(self) -> float:
        return sum(rss_mb(pid) for pid in self.pids)

    def memory(self) -> dict[str, Any]:
        """RSS and PSS of the whole server and each process (the parent first, then workers),
        each process read once."""
        pids = self.pids
        by_process = [rss_mb(pid) for pid in pids]
        return {
            "rss_mb": sum(by_process),
            "pss_mb": sum(pss_mb(pid) for pid in pids),
            "rss_mb_by_process": [round(mb, 1) for mb in by_process],
        }

    def stop(self) -> None:
        terminate(self.process, timeout=20)


def _wait_healthy(url: str, ca: Path, process: subprocess.Popen[bytes], what: str) -> None:
    try:
        _until_healthy(url, ca, process, what)
    except BaseException:
        terminate(process, timeout=20)
        raise


def _until_healthy(url: str, ca: Path, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            if peers.https_json(url, ca)[0] == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} was not healthy within 120s")
        time.sleep(0.2)


def start_token_server(cluster: BenchCluster, log_dir: Path) -> tuple[Served, int]:
    """`kube-iam token-server` as deploy/ runs it (its own ServiceAccount, the ConfigMap's
    settings), where the bench cluster's API server expects it; and its metrics port."""
    issuer = cluster.local.token_issuer
    if issuer is None:
        raise RuntimeError(f"{cluster.state_dir} records no token issuer")
    kubeconfig = install.operator_kubeconfig(
        cluster.local.kubectl,
        cluster.state_dir / "token-server.kubeconfig",
        install.TOKEN_SERVER_SERVICE_ACCOUNT,
    )
    metrics_port = free_port()
    env = {
        **os.environ,
        **cluster.operator_env,
        "KUBECONFIG": str(kubeconfig),
        "KUBEIAM_TOKEN_ISSUER": issuer.url,
        "KUBEIAM_TOKEN_PORT": str(issuer.port),
        "KUBEIAM_TOKEN_ADDRESS": "127.0.0.1",
        "KUBEIAM_TOKEN_CERT_DIR": issuer.cert_dir,
        "KUBEIAM_METRICS_PORT": str(metrics_port),
    }
    env["KUBEIAM_TOKEN_WORKERS"] = str(workers())
    command = [sys.executable, "-m", "kubeiam.cli", "token-server"]
    process = spawn(command, env, log_dir / "token-server.log")
    served = Served(
        "kube-iam",
        process,
        issuer.url + TOKEN_PATH,
        issuer.url + INTROSPECT_PATH,
        issuer.url + JWKS_PATH,
    )
    _wait_healthy(issuer.url + "/healthz", Path(issuer.ca_file), process, "the token server")
    return served, metrics_port


def start_floor(cluster: BenchCluster, sizes: dict[str, int], log_dir: Path) -> Served:
    issuer = cluster.local.token_issuer
    assert issuer is not None
    port = free_port()
    env = {**os.environ, **cluster.operator_env, "KUBEIAM_TOKEN_CERT_DIR": issuer.cert_dir}
    command = [sys.executable, "-m", "bench.token_floor", "--port", str(port)]
    command += ["--workers", str(workers())]
    for key in ("token", "introspect", "jwks", "exchange", "dpop"):
        if key in sizes:
            command += [f"--{key}-bytes", str(sizes[key])]
    process = spawn(command, env, log_dir / "token-floor.log")
    base = f"https://127.0.0.1:{port}"
    served = Served("floor", process, base + TOKEN_PATH, base + INTROSPECT_PATH, base + JWKS_PATH)
    _wait_healthy(base + "/healthz", Path(issuer.ca_file), process, "the floor")
    return served


def start_hydra(
    binary: Path, name: str, hasher: dict[str, str], cluster: BenchCluster, log_dir: Path
) -> Served:
    issuer = cluster.local.token_issuer
    assert issuer is not None
    ca = Path(issuer.ca_file)
    hydra = peers.Hydra(binary, name, hasher, Path(issuer.cert_dir), ca, log_dir).start()
    assert hydra.process is not None
    served = Served(name, hydra.process, hydra.token_url, hydra.introspect_url, hydra.jwks_url)
    served.clients = {
        "basic": hydra.client("client_secret_basic"),
        "body": hydra.client("client_secret_post"),
    }
    served.token = _a_token(served, ca)
    return served


def _grant(served: Served, ca: Path) -> bytes:
    """One client_credentials answer from `served`, as its raw bytes (never logged)."""
    client_id, secret = served.clients["body"]
    form = urllib.parse.urlencode(
        {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    )
    status, answer = peers.https_json(served.token_url, ca, form=form.encode())
    if status != 200:
        raise RuntimeError(f"{served.name} refused a client_credentials grant: HTTP {status}")
    return answer


def _a_token(served: Served, ca: Path) -> str:
    return str(json.loads(_grant(served, ca))["access_token"])


def target(served: Served, scenario: str) -> peers.Target:
    """What vegeta sends to `served` for `scenario`."""
    if scenario == "tokens_jwks":
        return peers.Target("GET", served.jwks_url)
    client_id, secret = served.clients["basic" if scenario == "tokens_cc_basic" else "body"]
    if scenario == DPOP_SCENARIO:
        # The proof is each request's own: bench.dpop_targets adds it to every copy.
        return target(served, "tokens_cc_body")
    grant = {"grant_type": "client_credentials"}
    if scenario == "tokens_cc_basic":
        body = urllib.parse.urlencode(grant).encode()
        headers = {"Content-Type": FORM, "Authorization": basic(client_id, secret)}
        return peers.Target("POST", served.token_url, headers, body)
    if scenario == "tokens_cc_body":
        form = {**grant, "client_id": client_id, "client_secret": secret}
        return peers.Target(
            "POST", served.token_url, {"Content-Type": FORM}, urllib.parse.urlencode(form).encode()
        )
    if scenario == "tokens_introspect":
        body = urllib.parse.urlencode({"token": served.token}).encode()
        headers = {"Content-Type": FORM}
        if served.name == "kube-iam" or served.name == "floor":
            # RFC 7662 §2.1: kube-iam's caller authenticates as a client. Hydra's introspection
            # is on its admin port, which asks for none.
            headers["Authorization"] = basic(client_id, secret)
        return peers.Target("POST", served.introspect_url, headers, body)
    if scenario == EXCHANGE_SCENARIO:
        # RFC 8693 §2.1: a public client names itself; the subject token is all it presents,
        # and the same one may be presented again until it expires.
        client_id, subject = served.exchange
        form = {
            "grant_type": TOKEN_EXCHANGE,
            "client_id": client_id,
            "subject_token": subject,
            "subject_token_type": JWT_TYPE,
        }
        return peers.Target(
            "POST", served.token_url, {"Content-Type": FORM}, urllib.parse.urlencode(form).encode()
        )
    raise ValueError(f"no target for {scenario}")


def settle(sent: peers.Target, ca: Path, *, within: float = 60, proved: bool = False) -> float:
    """Send `sent` once until it is answered 2xx, for at most `within` seconds; how long.
    `proved`: each try with a fresh DPoP proof, as a proof is good once."""
    started = time.monotonic()
    prover = dpop_targets.Prover(sent.method, sent.url) if proved else None
    while time.monotonic() - started < within:
        if prover is not None:
            sent = with_proof(sent, prover)
        try:
            status, _ = peers.https_json(sent.url, ca, form=sent.body or None, headers=sent.headers)
        except OSError:
            status = 0
        if 200 <= status < 300:
            break
        time.sleep(0.5)
    return time.monotonic() - started


def with_proof(sent: peers.Target, prover: dpop_targets.Prover) -> peers.Target:
    """`sent` with a fresh DPoP proof of `prover`'s key."""
    proof = prover.proof(time.time())
    return peers.Target(sent.method, sent.url, {**sent.headers, DPOP_HEADER: proof}, sent.body)


def generator_rate(sent: peers.Target, count: int = 5000) -> dict[str, Any]:
    """How many targets with a fresh proof bench.dpop_targets writes a CPU second, alone."""
    sink = io.StringIO()
    started = time.process_time()
    written = dpop_targets.write(json.loads(sent.json_line()), sink, count)
    cpu = time.process_time() - started
    return {"targets": written, "cpu_s": cpu, "per_cpu_second": written / cpu if cpu else 0.0}


# -- the measurements ------------------------------------------------------------------------


@dataclass
class Bench:
    api: Api
    cluster: BenchCluster
    sizes: TokenSizes
    vegeta: peers.Vegeta
    ca: Path
    servers: dict[str, Served]
    metrics_port: int
    profile_dir: Path | None = None
    rss_at_start: float = 0.0

    async def attack(self, served: Served, scenario: str, load: peers.Load) -> dict[str, Any]:
        """Once the server answers this request again (a server still working off the last
        attack's queue would be measured on that), one attack."""
        sent = target(served, scenario)
        proved = scenario == DPOP_SCENARIO
        settled = await asyncio.to_thread(settle, sent, self.ca, proved=proved)
        summary = await asyncio.to_thread(
            self.vegeta.attack,
            sent,
            load,
            server_pids=served.pids,
            stream=DPOP_STREAM if proved else None,
        )
        return {**summary, "settle_s": settled}

    async def curve(self, served: Served, scenario: str) -> dict[str, Any]:
        """Warm-up, every level, then half the best level's throughput at that level."""
        await self.attack(served, scenario, peers.Load(LEVELS[1], self.sizes.warmup))
        levels: dict[str, dict[str, Any]] = {}
        for level in LEVELS:
            levels[str(level)] = await self.attack(
                served, scenario, peers.Load(level, self.sizes.seconds)
            )
        top = best(levels)
        rate = levels[top]["per_second"] / 2
        half = (
            await self.attack(served, scenario, peers.Load(int(top), self.sizes.seconds, rate))
            if rate >= 1
            else {}
        )
        return {"levels": levels, "best_level": int(top), "best": levels[top], "half": half}

    async def scenario(self, scenario: str, systems: tuple[str, ...] = SYSTEMS) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for name in systems:
            served = self.servers[name]
            profiler = None
            if name == "kube-iam":
                before = await self.api.apiserver_requests()
                if self.profile_dir is not None:
                    output = self.profile_dir / f"profile-{scenario}.txt"
                    profiler = start_profile(served.process.pid, output)
            result[name] = await self.curve(served, scenario)
            if name == "kube-iam":
                stop_profile(profiler)
                delta = (await self.api.apiserver_requests()) - before
                result["kube-iam"]["api"] = _token_server_requests(delta, result["kube-iam"])
        result["processes"] = workers()  # of the token server, and of the floor
        for name in systems[1:]:
            result[f"vs_{name}"] = ratio(
                result["kube-iam"]["best"]["per_second"], result[name]["best"]["per_second"]
            )
        return result

    async def exchanges(self) -> dict[str, Any]:
        """Token exchange over HTTPS on kube-iam and the floor; before it, the decision and
        signing alone in this process (bench.exchange_rate), the ceiling the HTTP figure
        is read against."""
        decision = await asyncio.to_thread(exchange_rate.decision_rate, self.sizes.seconds)
        result = await self.scenario(EXCHANGE_SCENARIO, EXCHANGE_SYSTEMS)
        return {**result, "decision": decision}

    async def dpop(self) -> dict[str, Any]:
        """client_credentials with a fresh DPoP proof a request on kube-iam and the floor;
        before it, how fast the proof generator is alone (one core), so that its share of the
        load generator's work can be judged."""
        generator = await asyncio.to_thread(
            generator_rate, target(self.servers["kube-iam"], DPOP_SCENARIO)
        )
        result = await self.scenario(DPOP_SCENARIO, DPOP_SYSTEMS)
        return {**result, "generator": generator}

    async def usage_writes(self) -> dict[str, Any]:
        """One credential at ~1,000 tokens/s: how often its status (lastUsedAt) is written."""
        served = self.servers["kube-iam"]
        load = peers.Load(64, self.sizes.usage_seconds, rate=1000)
        before = await self.api.apiserver_requests()
        summary = await self.attack(served, "tokens_cc_body", load)
        delta = (await self.api.apiserver_requests()) - before
        writes = _status_writes(delta)
        minutes = summary["seconds"] / 60 if summary["seconds"] else 1
        return {
            "attack": summary,
            "status_writes": writes,
            "writes_per_minute": writes / minutes,
            "tokens": summary["requests"] * summary["success"],
        }

    async def cache_rss(self) -> dict[str, Any]:
        """The token server's RSS with `cached` issued credentials in its cache, written the
        way the floor writes them (no operator runs)."""
        served = self.servers["kube-iam"]
        rss_before = served.rss_mb()
        n = self.sizes.cached
        namespace = await scenarios.new_namespace(self.api, "bench-token-cache")
        accounts = [f"acct-{i:04d}" for i in range(n // 5)]
        writes = scenarios.Sizes(scale=1.0)
        await scenarios.create_accounts(self.api, namespace, accounts, writes, wait_issued=False)
        names = [(f"cred-{i:05d}", accounts[i % len(accounts)]) for i in range(n)]
        await bounded(
            writes.concurrency,
            names,
            lambda item: _cached_credential(self.api, namespace, item[0], item[1]),
        )
        deadline = time.monotonic() + 120 + n / 50
        while (cached := await _cached_credentials(self.metrics_port)) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the token server's cache held {cached} of {n} credentials")
            await asyncio.sleep(1)
        await asyncio.sleep(2)
        return {
            "namespace": namespace,
            "credentials_cached": cached,
            **served.memory(),
            "rss_mb_before": rss_before,
            "rss_mb_at_start": self.rss_at_start,
        }


async def _cached_credential(api: Api, namespace: str, name: str, account: str) -> None:
    """A credential as the token server's cache keeps it: created, then given an issued status
    (an id and a secret hash; no Secret, no operator). Not a client secret: a fixed text's hash."""
    created = await api.create(
        custom_path(namespace, CREDENTIALS), scenarios.credential_body(name, account)
    )
    uid = created["metadata"]["uid"]
    now = datetime.datetime.now(datetime.UTC)
    digest = "sha256:" + hashlib.sha256(scenarios.FLOOR_VALUE.encode()).hexdigest()
    status = rules.active_status(
        {},
        generation=1,
        created_at=created["metadata"]["creationTimestamp"],
        issuance=rules.Issuance(
            credential_id=credential_id(uid),
            client_id=f"{account}@{namespace}.example.iam",
            secret_name=name,
            secret_hash=digest,
            expires_at=now + datetime.timedelta(days=90),
            effective_roles=["compute.deployer"],
            deletion_policy="Delete",
            secret_uid="",
            account_uid="",
        ),
        now=now,
    )
    await api.patch_status(namespace, CREDENTIALS, name, status)


def _token_server_requests(delta: RequestCounts, curve: dict[str, Any]) -> dict[str, Any]:
    """API requests to kube-iam's kinds, Secrets and Events while the token server was under
    load (no operator runs then), per token answered."""
    answered = sum(level["requests"] * level["success"] for level in curve["levels"].values()) + (
        curve["half"].get("requests", 0) * curve["half"].get("success", 0)
    )
    made = delta.kube_iam_reads() + delta.kube_iam_writes()
    return {"requests": made, "answers": answered, "per_answer": made / answered if answered else 0}


def _status_writes(delta: RequestCounts) -> int:
    return sum(
        int(value)
        for (verb, group, resource), value in delta.counts.items()
        if verb in ("PATCH", "PUT", "APPLY") and group == GROUP and resource == CREDENTIALS
    )


async def _cached_credentials(metrics_port: int) -> int:
    status, text = await asyncio.to_thread(_get_metrics, metrics_port)
    if status != 200:
        return 0
    for line in text.splitlines():
        if line.startswith("kubeiam_token_cache_objects") and f'"{CREDENTIALS}"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def _get_metrics(port: int) -> tuple[int, str]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return int(answer.status), answer.read().decode()


# -- set-up and the run ----------------------------------------------------------------------


async def _issued_client(api: Api, namespace: str) -> tuple[str, str]:
    """A credential the operator issues, and its values read from its Secret as a pod would."""
    await scenarios.create_accounts(
        api, namespace, ["bench-client"], scenarios.Sizes(1.0), wait_issued=True
    )
    path = custom_path(namespace, CREDENTIALS)
    await api.create(path, scenarios.credential_body("bench-client", "bench-client"))
    deadline = time.monotonic() + 120
    while True:
        got = await api.request("GET", f"{path}/bench-client")
        status = got.get("status") or {}
        if status.get("state") == "Active" and status.get("secretName"):
            break
        if time.monotonic() > deadline:
            raise TimeoutError("the bench's credential was not issued within 120s")
        await asyncio.sleep(0.25)
    secret = await api.request("GET", secret_path(namespace, status["secretName"]))
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    return data["client-id"], data["client-secret"]


async def _exchange_subject(api: Api, namespace: str, account: str) -> tuple[str, str]:
    """What a workload with a projected ServiceAccount token of the bench cluster holds: a
    FederationTrust of `account` on the API server's own ServiceAccount issuer (its JWKS inline,
    as README "Secretless federation" sets it up), Ready; and a TokenRequest's token for it.
    The account's client id and the subject token (valid an hour: longer than the scenario)."""
    discovery = await api.request("GET", "/.well-known/openid-configuration")
    jwks = await api.request("GET", "/openid/v1/jwks", accept="application/jwk-set+json")
    runner = "bench-exchange"
    await api.create(
        f"/api/v1/namespaces/{namespace}/serviceaccounts",
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": runner}},
    )
    path = custom_path(namespace, TRUSTS)
    subject = f"system:serviceaccount:{namespace}:{runner}"
    await api.create(path, _trust_body(runner, account, discovery["issuer"], subject, jwks))
    await _until(lambda: _ready(api, f"{path}/{runner}"), f"the bench's trust {runner} to be Ready")
    requested = await api.create(
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{runner}/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"audiences": [EXCHANGE_AUDIENCE], "expirationSeconds": 3600},
        },
    )
    account_body = await api.request("GET", f"{custom_path(namespace, ACCOUNTS)}/{account}")
    return str(account_body["status"]["clientId"]), str(requested["status"]["token"])


def _trust_body(
    name: str, account: str, issuer: str, subject: str, jwks: dict[str, Any]
) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FederationTrust",
        "metadata": {"name": name},
        "spec": {
            "serviceAccountName": account,
            "issuer": issuer,
            "audiences": [EXCHANGE_AUDIENCE],
            "subject": subject,
            "condition": f"claims.sub == '{subject}'",
            "jwks": jwks,
        },
    }


async def _ready(api: Api, path: str) -> bool:
    conditions = ((await api.request("GET", path)).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


async def _until(probe: Callable[[], Awaitable[bool]], what: str, within: float = 120) -> None:
    deadline = time.monotonic() + within
    while not await probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {within:.0f}s for {what}")
        await asyncio.sleep(0.25)


def _body_sizes(served: Served, ca: Path) -> dict[str, int]:
    """The sizes of kube-iam's answers, for the floor to answer as many bytes."""
    granted = _grant(served, ca)
    served.token = str(json.loads(granted)["access_token"])
    client_id, secret = served.clients["basic"]
    status, introspected = peers.https_json(
        served.introspect_url,
        ca,
        form=urllib.parse.urlencode({"token": served.token}).encode(),
        headers={"Authorization": basic(client_id, secret)},
    )
    if status != 200:
        raise RuntimeError(f"kube-iam's introspection answered HTTP {status}")
    _, jwks = peers.https_json(served.jwks_url, ca)
    sizes = {"token": len(granted), "introspect": len(introspected), "jwks": len(jwks)}
    sent = target(served, DPOP_SCENARIO)
    sizes["dpop"] = len(_answer(with_proof(sent, dpop_targets.Prover(sent.method, sent.url)), ca))
    if served.exchange[0]:
        sizes["exchange"] = len(_answer(target(served, EXCHANGE_SCENARIO), ca))
    return sizes


def _answer(sent: peers.Target, ca: Path) -> bytes:
    """kube-iam's answer to `sent`, which must be a 200 (its bytes are never logged)."""
    status, answer = peers.https_json(sent.url, ca, form=sent.body, headers=sent.headers)
    if status != 200:
        raise RuntimeError(f"kube-iam refused the bench's request to {sent.url}: HTTP {status}")
    return answer


async def run(
    api: Api,
    cluster: BenchCluster,
    scale: float,
    step: Step,
    *,
    only: set[str],
    log_dir: Path,
    out_dir: Path,
    profile_dir: Path | None,
) -> None:
    """Every token scenario through `step` (BENCH_ONLY names in ALL)."""
    if not wanted(only):
        return
    sizes = TokenSizes(scale)
    vegeta_bin, hydra_bin = await asyncio.to_thread(peers.tools, log_dir)
    issuer = cluster.local.token_issuer
    if issuer is None:
        raise RuntimeError(f"{cluster.state_dir} records no token issuer")
    ca = Path(issuer.ca_file)
    servers: dict[str, Served] = {}
    operator = Operator(cluster, name="bench-token-operator").start()
    namespace = await scenarios.new_namespace(api, "bench-tokens")
    cleanup = [namespace]
    try:
        client = await _issued_client(api, namespace)
        token_server, metrics_port = await asyncio.to_thread(start_token_server, cluster, log_dir)
        servers["kube-iam"] = token_server
        rss_at_start = token_server.rss_mb()
        token_server.clients = {"basic": client, "body": client}
        if not only or EXCHANGE_SCENARIO in only:
            # The trust must be Ready before the operator stops; the token server reads it.
            token_server.exchange = await _exchange_subject(api, namespace, "bench-client")
        operator.stop()  # from here on only the token server talks to the API server
        body_sizes = await asyncio.to_thread(_body_sizes, token_server, ca)
        floor = await asyncio.to_thread(start_floor, cluster, body_sizes, log_dir)
        floor.clients, floor.token = token_server.clients, token_server.token
        floor.exchange = token_server.exchange
        servers["floor"] = floor
        servers["hydra"] = await asyncio.to_thread(
            start_hydra, hydra_bin, "hydra", peers.HYDRA_DEFAULT, cluster, log_dir
        )
        servers["hydra-cheapest"] = await asyncio.to_thread(
            start_hydra, hydra_bin, "hydra-cheapest", peers.HYDRA_CHEAPEST, cluster, log_dir
        )
        bench = Bench(
            api,
            cluster,
            sizes,
            peers.Vegeta(vegeta_bin, ca, out_dir / "vegeta"),
            ca,
            servers,
            metrics_port,
            profile_dir,
            rss_at_start,
        )
        # The cache is filled first: the load then meets a full cache, as in a cluster.
        cached = await step(
            "tokens_cache_rss", f"tokens: RSS with {sizes.cached} credentials", bench.cache_rss()
        )
        if isinstance(cached, dict) and cached.get("namespace"):
            cleanup.append(cached["namespace"])
        for scenario in LOAD_SCENARIOS:
            await step(
                scenario, f"tokens: {scenario} on {', '.join(SYSTEMS)}", bench.scenario(scenario)
            )
        await step(
            EXCHANGE_SCENARIO,
            f"tokens: {EXCHANGE_SCENARIO} on {', '.join(EXCHANGE_SYSTEMS)}",
            bench.exchanges(),
        )
        await step(
            DPOP_SCENARIO, f"tokens: {DPOP_SCENARIO} on {', '.join(DPOP_SYSTEMS)}", bench.dpop()
        )
        await step(
            "tokens_usage_writes", "tokens: lastUsed writes at ~1,000/s", bench.usage_writes()
        )
        if isinstance(cached, dict) and "rss_mb" in cached:
            cached["after_load"] = token_server.memory()
            cached["rss_mb_after_load"] = cached["after_load"]["rss_mb"]
            # And once a worker's periodic heap trim (30 s, kube/memory.py) has had its turn.
            await asyncio.sleep(35)
            cached["after_load_settled"] = token_server.memory()
    finally:
        for served in servers.values():
            served.stop()
        operator.stop()
        await scenarios.delete_namespaces(api, cleanup)


# -- the table -------------------------------------------------------------------------------

GOALS = {
    "tokens_cc_basic": ">= 3,000/s, >= 0.4x floor, >= 10x hydra; p99 at half <= 10 ms",
    "tokens_cc_body": ">= 3,000/s, >= 0.4x floor, >= 10x hydra; p99 at half <= 10 ms",
    "tokens_introspect": ">= 1x hydra",
    "tokens_jwks": "",
    EXCHANGE_SCENARIO: ">= 1,000/s",
    DPOP_SCENARIO: "",
}


def _x(value: Any) -> str:
    return f"{value:.2f}x" if isinstance(value, (int, float)) else "-"


def _cell(curve: dict[str, Any]) -> str:
    top = curve["best"]
    failed = "" if top["success"] >= 0.999 else f", {100 * top['success']:.0f}% ok"
    return f"{top['per_second']:.0f}/s @{curve['best_level']}{failed}"


def _latency(summary: dict[str, Any]) -> str:
    return f"{summary['p50_ms']:.1f}/{summary['p99_ms']:.1f} ms" if summary else "-"


def _row(key: str, r: dict[str, Any]) -> tuple[str, ...]:
    """One scenario's row; a system the scenario has no grant on (Hydra and token exchange)
    gets a dash."""
    ours = r["kube-iam"]
    ran = [name for name in SYSTEMS if name in r]
    cores = max(level["loadgen_cores"] for name in ran for level in r[name]["levels"].values())
    return (
        key,
        _cell(ours),
        *(_cell(r[name]) if name in r else "-" for name in SYSTEMS[1:]),
        *(_x(r.get(f"vs_{name}")) for name in SYSTEMS[1:]),
        _latency(ours["best"]),
        _latency(ours["half"]),
        f"<= {cores:.2f}",
        GOALS.get(key, ""),
    )


def table(results: dict[str, Any]) -> str:
    header = (
        "Token scenario",
        "kube-iam",
        "Floor",
        "Hydra (default)",
        "Hydra (cheapest)",
        "vs floor",
        "vs Hydra",
        "vs cheapest",
        "p50/p99 best",
        "p50/p99 half",
        "vegeta cores",
        "Goal",
    )
    rows: list[tuple[str, ...]] = []
    for key in CURVE_SCENARIOS:
        r = results.get(key)
        if not isinstance(r, dict) or "error" in r or not r:
            why = "not run" if not isinstance(r, dict) else str(r.get("error", "not run"))
            rows.append((key, f"({why[:90]})", *[""] * 10))
            continue
        try:
            rows.append(_row(key, r))
        except (KeyError, TypeError, ValueError) as error:  # a partial result: say so, go on
            rows.append((key, f"(incomplete: {type(error).__name__} {error})", *[""] * 10))
    lines = _render(header, rows)
    decision = (results.get(EXCHANGE_SCENARIO) or {}).get("decision") or {}
    if "rate" in decision:
        lines.append(
            "Token exchange, the decision and signing alone (one core, no HTTP): "
            f"{decision['rate']:.0f}/s, p50/p99 "
            f"{decision['p50_ms']:.1f}/{decision['p99_ms']:.1f} ms"
        )
    proved = results.get(DPOP_SCENARIO) or {}
    if "generator" in proved:
        lines.append(_generator_line(proved))
    usage = results.get("tokens_usage_writes") or {}
    if "writes_per_minute" in usage:
        attack = usage["attack"]
        lines.append(
            f"lastUsed status writes: {usage['writes_per_minute']:.1f}/min while one credential "
            f"got {attack['per_second']:.0f} tokens/s for {attack['seconds']:.0f} s (goal: 1/min)"
        )
    cached = results.get("tokens_cache_rss") or {}
    if "rss_mb" in cached:
        lines.append(
            f"Token server RSS: {cached['rss_mb']:.0f} MB with {cached['credentials_cached']} "
            f"credentials cached (goal <= 150 MB); {cached['rss_mb_at_start']:.0f} MB at start, "
            f"{cached.get('rss_mb_after_load', 0):.0f} MB after the load scenarios"
            + (
                f", {cached['after_load_settled']['rss_mb']:.0f} MB 35 s later"
                if "after_load_settled" in cached
                else ""
            )
        )
    if "pss_mb" in cached:
        processes = ", ".join(f"{mb:.0f}" for mb in cached["rss_mb_by_process"][1:])
        lines.append(
            f"  by process with the cache filled: parent {cached['rss_mb_by_process'][0]:.0f} MB, "
            f"workers {processes} MB; PSS of them all {cached['pss_mb']:.0f} MB"
        )
    body = results.get("tokens_cc_body") or {}
    api = (body.get("kube-iam") or {}).get("api")
    if api:
        lines.append(
            f"API requests by the token server per token: {api['per_answer']:.4f} "
            f"({api['requests']} over {api['answers']:.0f} answers; goal 0)"
        )
    return "\n".join(lines)


def _generator_line(proved: dict[str, Any]) -> str:
    """How fast DPoP proofs are made alone, and the most CPU making them took during the curve
    beside the top throughput it fed: the generator is not the bottleneck when that is small."""
    alone = proved["generator"]["per_cpu_second"]
    levels = [
        level for name in DPOP_SYSTEMS for level in proved.get(name, {}).get("levels", {}).values()
    ]
    busiest = max((level.get("generator_cores", 0.0) for level in levels), default=0.0)
    fastest = max((level["per_second"] for level in levels), default=0.0)
    return (
        f"DPoP proof generator: {alone:.0f} targets a CPU second alone; at most {busiest:.2f} "
        f"cores during the attacks, which peaked at {fastest:.0f}/s"
    )


def _render(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in (*rows, header)) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [
        line(row) for row in rows
    ]
