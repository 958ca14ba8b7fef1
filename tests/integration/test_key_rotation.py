"""Signing-key rotation against the real control plane, the real token server over HTTPS and a
relying party that caches the JWKS exactly as long as the token server's Cache-Control says.

Short settings make two rotations fit in a minute: a key signs 20 s, a next key must be in the
Secret 4 + 2 + 3 = 9 s before it signs (JWKS max-age, refresh interval, margin), tokens live
10 s.

Two operator replicas run side by side, both working (--standalone), so every rotation is
decided twice at once: a kubectl watch records every version of the Secret (its ring of kids
and times only; no key ever reaches the test) to show they wrote one ring. They seldom decide
in the same instant, so a third test makes that race certain in this process. Each test starts
from no signing keys Secret and leaves a fresh one, as the session's operator would make it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import itertools
import json
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import kubernetes
import pytest
import requests

from kubeiam.devcluster import install
from kubeiam.devcluster.cluster import free_port
from kubeiam.domain.conditions import parse_time
from kubeiam.kube import api, key_secret
from kubeiam.settings import TokenSettings
from kubeiam.tokens import key_store, keys
from kubeiam.tokens.key_store import HANDOVER_SECRET, RING_ENTRY

from .credentials_support import ISSUED_TOKENS, account_manifest, credential_manifest, many
from .metrics_support import Page
from .support import ClusterHandle, KubectlWatch, OperatorProcess, wait_for
from .token_support import (
    Client,
    TokenServer,
    client_of,
    running_token_server,
    serving_certificate,
)

JWKS_MAX_AGE = 4
SHORT = {
    "KUBEIAM_TOKEN_KEY_ROTATION_PERIOD": "20",
    "KUBEIAM_TOKEN_JWKS_MAX_AGE": str(JWKS_MAX_AGE),
    "KUBEIAM_TOKEN_KEY_REFRESH_INTERVAL": "2",
    "KUBEIAM_TOKEN_KEY_MARGIN": "3",
    "KUBEIAM_TOKEN_LIFETIME": "10",
}
LONGER_TOKENS = {"KUBEIAM_TOKEN_LIFETIME": "600"}
PUBLISHED = re.compile(r"Published signing key ([0-9a-f]+);")


def _reset_keys(cluster: ClusterHandle) -> None:
    cluster.kubectl(
        "delete",
        "secret",
        keys.SIGNING_KEY_SECRET,
        HANDOVER_SECRET,
        "-n",
        install.NAMESPACE,
        "--ignore-not-found",
    )


@pytest.fixture
def fresh_keys_after(cluster: ClusterHandle) -> Iterator[None]:
    """Set up before the operators (so torn down after they stop): what a test leaves is a
    fresh one-key ring with the default settings, as the session's operator makes it (later
    tests count the Secrets an operator creates, and expect this one to be there)."""
    yield
    _reset_keys(cluster)
    if cluster.operator_kubeconfig is None:
        return
    saved = api._api_client
    api._api_client = kubernetes.config.new_client_from_config(str(cluster.operator_kubeconfig))
    try:
        policy = TokenSettings().rotation_policy()
        now = datetime.datetime.now(datetime.UTC)
        asyncio.run(key_store.rotate(install.NAMESPACE, policy, now=lambda: now))
    finally:
        api._api_client = saved


# Where each operator's log stood when the test started it: logs are appended to across runs.
_LOG_STARTS: dict[Path, int] = {}


@pytest.fixture
def replicas(
    cluster: ClusterHandle,
    request: pytest.FixtureRequest,
    fresh_keys_after: None,
    operators: Callable[..., OperatorProcess],  # stops the session's operator; skips in-cluster
) -> Callable[..., OperatorProcess]:
    def start(name: str, **extra: str) -> OperatorProcess:
        # The path OperatorProcess gives the log of the process `operators` names so.
        log = cluster.log_dir / "operators" / f"{request.node.name[:40]}-{name}.log"
        _LOG_STARTS[log] = log.stat().st_size if log.exists() else 0
        return operators(name, "--standalone", **{**SHORT, **extra})

    return start


StartServer = Callable[..., contextlib.AbstractContextManager[TokenServer]]


@pytest.fixture
def short_token_server(cluster: ClusterHandle, tmp_path: Path) -> StartServer:
    """The token server with the short rotation settings, under its own ServiceAccount."""
    if cluster.token_server_kubeconfig is None:
        pytest.skip("the operator runs in the cluster; the token server is not deployed there yet")
    kubeconfig = cluster.token_server_kubeconfig
    ca = serving_certificate(tmp_path)

    def start(**extra: str) -> contextlib.AbstractContextManager[TokenServer]:
        port = free_port()
        return running_token_server(
            cluster,
            kubeconfig=kubeconfig,
            issuer=f"https://127.0.0.1:{port}",
            ca=ca,
            log_name="token-server-rotation.log",
            settings={
                "KUBEIAM_TOKEN_PORT": str(port),
                "KUBEIAM_TOKEN_ADDRESS": "127.0.0.1",
                "KUBEIAM_TOKEN_CERT_DIR": str(tmp_path),
                **SHORT,
                **extra,
            },
        )

    return start


def _credential(cluster: ClusterHandle, namespace: str) -> Client:
    cluster.apply(many([account_manifest("pipeline"), credential_manifest("key")]), namespace)
    return client_of(cluster, namespace, "key")


def _token(server: TokenServer, client: Client) -> str:
    """A token for the credential, its secret in the body as a pod's program sends it."""
    form = {
        "grant_type": "client_credentials",
        "client_id": client.client_id,
        "client_secret": client.secret,
    }
    answer = server.post(form)
    assert answer.status_code == 200, answer.status_code
    token: str = answer.json()["access_token"]
    ISSUED_TOKENS.add(token)
    return token


@dataclass
class CachingVerifier:
    """A relying party: it finds the JWKS through discovery, keeps it exactly as long as the
    answer's Cache-Control max-age says, and never refetches early on an unknown kid (PyJWT's
    PyJWKClient would, which would hide the very failure rotation must prevent)."""

    server: TokenServer
    jwks_uri: str = ""
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    fetched_at: float | None = None
    max_age: float = 0.0
    fetches: int = 0

    def __post_init__(self) -> None:
        discovery = self.server.get("/.well-known/openid-configuration").json()
        self.jwks_uri = discovery["jwks_uri"]

    def _current(self) -> dict[str, dict[str, Any]]:
        if self.fetched_at is None or time.monotonic() - self.fetched_at >= self.max_age:
            answer = requests.get(self.jwks_uri, verify=str(self.server.ca), timeout=10)
            found = re.search(r"max-age=(\d+)", answer.headers["Cache-Control"])
            assert found is not None, answer.headers["Cache-Control"]
            self.max_age = float(found.group(1))
            self.keys = {key["kid"]: key for key in answer.json()["keys"]}
            self.fetched_at = time.monotonic()  # counted from the answer: the longest a cache keeps
            self.fetches += 1
        return self.keys

    def verify(self, token: str) -> dict[str, Any]:
        kid = jwt.get_unverified_header(token)["kid"]
        cached = self._current()
        assert kid in cached, f"a verifier caching the JWKS met an unknown kid {kid}"
        claims: dict[str, Any] = jwt.decode(
            token,
            jwt.PyJWK(cached[kid]).key,
            algorithms=["ES256"],
            audience=self.server.issuer,
            issuer=self.server.issuer,
        )
        return claims


class RingHistory(KubectlWatch):
    """Every version of the signing keys Secret, as its ring (kids and times; `ring.json` holds
    no key material) with the event that brought it."""

    def __init__(self, cluster: ClusterHandle) -> None:
        super().__init__(cluster, install.NAMESPACE)
        self.versions: list[tuple[str, list[dict[str, Any]]]] = []

    def _watch_args(self) -> tuple[str, ...]:
        entry = RING_ENTRY.replace(".", "\\.")
        jsonpath = f'jsonpath={{.type}} {{.object.metadata.name}} {{.object.data.{entry}}}{{"\\n"}}'
        return ("secrets", "--output-watch-events", "-o", jsonpath)

    def _line(self, line: str) -> None:
        parts = line.split()
        if len(parts) == 3 and parts[1] == keys.SIGNING_KEY_SECRET:
            ring = json.loads(base64.b64decode(parts[2]))["keys"]
            self.versions.append((parts[0], ring))

    def rings(self) -> list[list[dict[str, Any]]]:
        with self._lock:
            return [ring for kind, ring in self.versions if kind != "DELETED"]


def _falls(ages: list[float]) -> int:
    """How many times the key-age gauge fell back (a rotation each)."""
    return sum(later < earlier for earlier, later in itertools.pairwise(ages))


def _key_age(server: TokenServer) -> float:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    page = Page(requests.get(url, timeout=10).text)
    (age,) = page.samples("kubeiam_token_signing_key_age_seconds").values()
    return age


def _log(process: OperatorProcess) -> str:
    """What the process logged (not what earlier runs of the test left in the same file)."""
    assert process.log_path is not None
    with process.log_path.open("rb") as log:
        log.seek(_LOG_STARTS[process.log_path])
        return log.read().decode(errors="replace")


def test_two_replicas_rotate_one_ring_and_a_caching_verifier_never_meets_an_unknown_kid(
    cluster: ClusterHandle,
    namespace: str,
    replicas: Callable[..., OperatorProcess],
    short_token_server: StartServer,
) -> None:
    _reset_keys(cluster)
    history = RingHistory(cluster).start()
    try:
        first, second = replicas("a"), replicas("b")
        client = _credential(cluster, namespace)
        with short_token_server() as server:
            verifier = CachingVerifier(server)
            issued: list[tuple[str, str, int]] = []  # (token, kid, exp)
            first_token: dict[str, float] = {}
            first_published: dict[str, float] = {}
            gone: dict[str, float] = {}  # kid -> wall clock when a fresh JWKS first lacked it
            deadline = time.monotonic() + 180
            at_start: set[str] | None = None  # kids already served when the party starts
            ages: list[float] = []  # kubeiam_token_signing_key_age_seconds, each round
            while time.monotonic() < deadline:
                published = {key["kid"] for key in server.get("/oauth2/jwks").json()["keys"]}
                at_start = published if at_start is None else at_start
                ages.append(_key_age(server))
                now = time.time()
                for kid in published:
                    first_published.setdefault(kid, time.monotonic())
                for kid in set(first_published) - published:
                    gone.setdefault(kid, now)
                token = _token(server, client)
                kid = jwt.get_unverified_header(token)["kid"]
                first_token.setdefault(kid, time.monotonic())
                issued.append((token, kid, verifier.verify(token)["exp"]))
                # Every earlier token still alive verifies too, through the same cache.
                for earlier, _, exp in issued:
                    if exp > time.time() + 1:
                        verifier.verify(earlier)
                if len(first_token) >= 3 and next(iter(first_token)) in gone:
                    break
                time.sleep(0.25)  # pacing the relying party, not waiting for a condition

            # The gauge is reported every second by each worker, so its fall at the rotation
            # whose token ended the loop may come a moment later: look until it falls twice.
            def fell_twice() -> bool:
                ages.append(_key_age(server))
                return _falls(ages) >= 2

            wait_for(fell_twice, timeout=15, interval=0.25, what="the key age to fall twice")
    finally:
        history.stop()

    order = list(first_token)
    assert len(order) >= 3, f"tokens carried only {order}: fewer than two rotations"
    assert at_start is not None
    for kid in order[1:]:
        # The next kid was served before any token carried it.
        assert first_published[kid] < first_token[kid], kid
        if kid not in at_start:  # else it was served before the party looked: no figure
            gap = first_token[kid] - first_published[kid]
            print(f"kid {kid}: first served {gap:.1f} s before a token carried it")
    retired = order[0]
    assert retired in gone, "the first key was never dropped"
    expiries = [exp for _, kid, exp in issued if kid == retired]
    assert gone[retired] >= max(expiries), "a key was dropped while a token it signed lived"
    print(f"{len(issued)} tokens, {verifier.fetches} JWKS fetches by the caching verifier")
    # The key-age gauge fell back at each rotation.
    assert _falls(ages) >= 2, ages

    # One ring: a key leaves the Secret only once retired (never replaced by another replica's
    # next key), each version has one key that is not retired, and each published kid was
    # published by one replica only.
    rings = history.rings()
    assert rings, "the watch saw no version of the signing keys Secret"
    seen: dict[str, dict[str, Any]] = {}
    for before, after in itertools.pairwise(rings):
        kept = {key["kid"] for key in after}
        for key in before:
            if key["kid"] not in kept:
                assert key["retires"] is not None, f"{key['kid']} was replaced before it signed"
    for ring in rings:
        assert sum(key["retires"] is None for key in ring) == 1, ring
        seen.update({key["kid"]: key for key in ring})
    announced = PUBLISHED.findall(_log(first)) + PUBLISHED.findall(_log(second))
    assert sorted(announced) == sorted(set(announced)), announced
    assert set(announced) <= set(seen)
    assert set(order) <= set(seen)
    # No two keys share an activation time, as two replicas' next keys made at once would.
    starts = sorted(parse_time(key["activates"]) for key in seen.values())
    assert all(later > earlier for earlier, later in itertools.pairwise(starts))


def test_a_signing_keys_secret_of_the_format_before_rotation_is_adopted_with_its_key(
    cluster: ClusterHandle,
    namespace: str,
    replicas: Callable[..., OperatorProcess],
    short_token_server: StartServer,
) -> None:
    issuing = replicas("issuing")
    client = _credential(cluster, namespace)
    issuing.stop()
    # What kube-iam wrote before rotation: immutable, active-key-id and one key.
    _reset_keys(cluster)
    kid = secrets.token_hex(4)
    old = key_secret.manifest(
        install.NAMESPACE,
        keys.SIGNING_KEY_SECRET,
        {key_secret.ACTIVE: kid.encode(), kid: keys.new_private_key_pem()},
        purpose=keys.PURPOSE,
    )
    cluster.kubectl("create", "-f", "-", input=json.dumps(old))
    old_uid = _secret(cluster)["metadata"]["uid"]

    # Tokens that outlive the operator's start, so the one signed before adoption is alive after.
    with short_token_server(**LONGER_TOKENS) as server:
        before = _token(server, client)  # signed with the old key, read in the old format
        assert jwt.get_unverified_header(before)["kid"] == kid
        replicas("adopting", **LONGER_TOKENS)
        adopted = wait_for(
            lambda: (found := _secret(cluster)) and not found.get("immutable") and found,
            what="the old signing keys Secret to be adopted",
        )
        ring = json.loads(base64.b64decode(adopted["data"][RING_ENTRY]))["keys"]
        assert ring[0]["kid"] == kid
        assert adopted["metadata"]["uid"] != old_uid  # moved into a mutable Secret
        assert _secret(cluster, HANDOVER_SECRET) is None
        # The token signed before still verifies from discovery, and so does one signed after.
        after = _token(server, client)
        for token in (before, after):
            verified = CachingVerifier(server).verify(token)
            assert verified["client_id"] == client.client_id


def _secret(cluster: ClusterHandle, name: str = keys.SIGNING_KEY_SECRET) -> dict[str, Any] | None:
    found = cluster.kubectl(
        "get", "secret", name, "-n", install.NAMESPACE, "-o", "json", "--ignore-not-found"
    ).stdout
    return json.loads(found) if found.strip() else None


def test_two_writers_that_read_the_same_version_add_one_next_key(
    cluster: ClusterHandle,
    replicas: Callable[..., OperatorProcess],  # no operator of the session runs meanwhile
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The race the replicas above rarely meet, made certain: two rotations in this process,
    against the real API server under the operator's own ServiceAccount, both read the Secret
    before either writes (the reads are real; they only wait for each other)."""
    if cluster.operator_kubeconfig is None:
        pytest.skip("the operator's token lives in the cluster")
    _reset_keys(cluster)
    # This process's API client, as the operator's ServiceAccount (the operator's own kubeconfig).
    client = kubernetes.config.new_client_from_config(str(cluster.operator_kubeconfig))
    monkeypatch.setattr(api, "_api_client", client)
    policy = TokenSettings(**_settings_of(SHORT)).rotation_policy()
    read_secret, replace_secret = api.get_own_secret, api.replace_secret
    first_reads = asyncio.Barrier(2)
    reads = 0
    conflicts: list[str] = []

    async def reads_meet(namespace: str, name: str) -> dict[str, Any] | None:
        nonlocal reads
        found = await read_secret(namespace, name)
        reads += 1
        if reads <= 2:
            await first_reads.wait()
        return found

    async def replace_noting_conflicts(namespace: str, name: str, body: dict[str, Any]) -> None:
        try:
            await replace_secret(namespace, name, body)
        except api.Conflict:
            conflicts.append(name)
            raise

    async def race() -> list[keys.SigningKeys]:
        await key_store.rotate(install.NAMESPACE, policy, now=lambda: start)  # the first key
        monkeypatch.setattr(api, "get_own_secret", reads_meet)
        monkeypatch.setattr(api, "replace_secret", replace_noting_conflicts)
        due = start + policy.period - policy.lead
        return list(
            await asyncio.gather(
                key_store.rotate(install.NAMESPACE, policy, now=lambda: due, new_kid=lambda: "aa"),
                key_store.rotate(install.NAMESPACE, policy, now=lambda: due, new_kid=lambda: "bb"),
            )
        )

    start = datetime.datetime.now(datetime.UTC)
    first, second = asyncio.run(race())
    # One write over the version both read met a 409 (a blind write would meet none).
    assert conflicts == [keys.SIGNING_KEY_SECRET]
    stored = _secret(cluster)
    assert stored is not None
    ring = json.loads(base64.b64decode(stored["data"][RING_ENTRY]))["keys"]
    assert len([key for key in ring if key["kid"] in ("aa", "bb")]) == 1, ring
    assert first.jwks() == second.jwks()


def _settings_of(variables: dict[str, str]) -> dict[str, Any]:
    """The TokenSettings fields the KUBEIAM_TOKEN_* variables set."""
    return {
        name.removeprefix("KUBEIAM_TOKEN_").lower(): datetime.timedelta(seconds=float(value))
        for name, value in variables.items()
    }
