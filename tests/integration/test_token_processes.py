"""The token server as several processes, against the real control plane over real HTTPS.

`kube-iam token-server` with two worker processes: a killed worker is started again while the
other keeps answering, and no request meets a worker that is not ready; usage is written at
most once per credential and interval for the whole server; a renewed certificate is served
without a restart. Two servers side by side (two processes, two ports, one issuer) give the
same answers. And the API server restarts while a client asks for tokens: no refusal ever
turns into a grant, grants resume, and a revocation after the restart reaches the server.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from cryptography import x509

from kubeiam.devcluster.cluster import free_port

from .credentials_support import (
    ISSUED_TOKENS,
    account_manifest,
    credential_manifest,
    revoke,
    wait_state,
)
from .metrics_support import Page
from .support import ClusterHandle, KubectlWatch, OperatorProcess, served_certificate, wait_for
from .token_support import (
    Client,
    TokenServer,
    client_of,
    namespace_with,
    running_token_server,
    serving_certificate,
    verify,
)

pytestmark = pytest.mark.integration


@dataclass
class World:
    namespace: str
    good: Client
    revoked: Client
    late: Client  # revoked by the API server restart's test, after the restart
    busy: Client  # usage: many tokens, counted writes
    wrong: Client = field(init=False)  # the good client id with a secret of the right shape

    def __post_init__(self) -> None:
        prefix, _, rest = self.good.secret.rpartition("_")
        self.wrong = Client(self.good.client_id, f"{prefix}_{'A' * len(rest)}")


@pytest.fixture(scope="module")
def world(cluster: ClusterHandle, session_operator: OperatorProcess) -> Iterator[World]:
    if cluster.token_server_kubeconfig is None:
        pytest.skip("the operator runs in the cluster; the token server is not deployed there yet")
    if not session_operator.running:
        session_operator.start()  # it creates the signing key Secret at start
    with namespace_with(
        cluster,
        "t-token-processes",
        [
            account_manifest("pipeline"),
            credential_manifest("key", "pipeline"),
            credential_manifest("ended", "pipeline"),
            credential_manifest("late", "pipeline"),
            credential_manifest("busy", "pipeline"),
        ],
    ) as namespace:
        found = World(
            namespace,
            good=client_of(cluster, namespace, "key"),
            revoked=client_of(cluster, namespace, "ended"),
            late=client_of(cluster, namespace, "late"),
            busy=client_of(cluster, namespace, "busy"),
        )
        revoke(cluster, namespace, "ended")
        wait_state(cluster, namespace, "ended", "Revoked")
        yield found


Start = Callable[..., contextlib.AbstractContextManager[TokenServer]]


@pytest.fixture
def start(cluster: ClusterHandle, world: World, tmp_path: Path) -> Start:
    """Start a token server of `workers` processes on a port of its own, serving the
    certificate in tmp_path (one CA for every server of the test); `issuer_port` is the port
    it names as its issuer (its own by default); `wait`: until it is ready."""
    assert cluster.token_server_kubeconfig is not None
    ca = serving_certificate(tmp_path)

    def started(
        name: str,
        *,
        workers: int = 2,
        port: int | None = None,
        issuer_port: int | None = None,
        wait: bool = True,
        **settings: str,
    ) -> contextlib.AbstractContextManager[TokenServer]:
        assert cluster.token_server_kubeconfig is not None
        port = port or free_port()
        issuer = f"https://127.0.0.1:{issuer_port or port}"
        return running_token_server(
            cluster,
            kubeconfig=cluster.token_server_kubeconfig,
            issuer=issuer,
            url=f"https://127.0.0.1:{port}",
            ca=ca,
            log_name=f"token-processes-{name}.log",
            wait=wait,
            settings={
                "KUBEIAM_TOKEN_PORT": str(port),
                "KUBEIAM_TOKEN_ADDRESS": "127.0.0.1",
                "KUBEIAM_TOKEN_CERT_DIR": str(tmp_path),
                "KUBEIAM_TOKEN_WORKERS": str(workers),
                **settings,
            },
        )

    return started


def _form(client: Client) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_id": client.client_id,
        "client_secret": client.secret,
    }


def _answer(server: TokenServer, client: Client) -> tuple[int, str]:
    """(status, error code or "granted"); a granted token is registered for the leak scan."""
    answer = server.post(_form(client))
    if answer.status_code == 200:
        ISSUED_TOKENS.add(answer.json()["access_token"])
        return 200, "granted"
    try:
        return answer.status_code, str(answer.json().get("error"))
    except ValueError:
        return answer.status_code, answer.text[:80]


def _token(server: TokenServer, client: Client) -> str:
    answer = server.post(_form(client))
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["access_token"]
    ISSUED_TOKENS.add(token)
    return token


def _metrics(server: TokenServer) -> Page:
    return Page(requests.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).text)


class Asking:
    """A client loop beside the test: the good, the revoked and the wrong client in turn, each
    on a new connection, every answer recorded with the time it came."""

    def __init__(self, server: TokenServer, world: World) -> None:
        self.server, self.world = server, world
        self.answers: list[tuple[float, str, tuple[int, str]]] = []
        self.failures: list[tuple[float, str]] = []  # no answer at all (connection refused)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Asking:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        world = self.world
        clients = (("good", world.good), ("revoked", world.revoked), ("wrong", world.wrong))
        while not self._stop.is_set():
            for name, client in clients:
                try:
                    answer = _answer(self.server, client)
                except requests.RequestException as error:
                    self.failures.append((time.monotonic(), type(error).__name__))
                    continue
                self.answers.append((time.monotonic(), name, answer))

    def granted(self, name: str, *, after: float = 0.0) -> int:
        return sum(
            1
            for at, who, (status, _) in self.answers
            if who == name and at > after and status == 200
        )

    def assert_no_refusal_granted(self) -> None:
        for _, who, (status, error) in self.answers:
            if who != "good":
                assert (status, error) == (400, "invalid_client"), (who, status, error)


# -- (a) a worker dies -----------------------------------------------------------------------------


@pytest.mark.timeout(600)  # a worker's start is slow on a loaded machine (see the wait below)
def test_a_killed_worker_is_started_again_and_no_request_meets_an_unready_one(
    start: Start, world: World
) -> None:
    with start("killed") as server:
        first = wait_for(lambda: w if len(w := server.workers()) == 2 else None, what="2 workers")
        with Asking(server, world) as asking:
            wait_for(lambda: asking.granted("good") >= 5, what="grants before the kill")
            victim = min(first)
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()

            def replaced() -> set[int] | None:
                now = server.workers()
                return now if len(now) == 2 and victim not in now else None

            again = wait_for(replaced, what="the parent to start a new worker")
            assert first - {victim} <= again  # the other worker was left alone
            # The new worker binds only once ready: wait until it says so, then ask on.
            # A new worker lists and watches the three kinds and reads the keys before it is
            # ready: seconds on a quiet machine, over a minute seen on the loaded CI machine.
            wait_for(
                lambda: server.log().count("Ready (") >= 3,
                timeout=240,
                what="the new worker ready",
            )
            ready_at = time.monotonic()
            wait_for(lambda: asking.granted("good", after=ready_at) >= 20, what="grants after it")
        asking.assert_no_refusal_granted()
        statuses = {status for _, who, (status, _) in asking.answers if who == "good"}
        assert statuses == {200}, statuses  # never a 503 from a worker not ready yet
        # At most the connections the killed worker had accepted fail, at the kill itself.
        late = [at for at, _ in asking.failures if at > killed_at + 1]
        assert not late, asking.failures
        assert server.process.poll() is None


def test_a_worker_that_cannot_answer_yet_accepts_no_connection(start: Start) -> None:
    # Its signing keys are looked for where there are none: its workers never get ready.
    nowhere = {"KUBEIAM_OPERATOR_NAMESPACE": f"kube-iam-nowhere-{secrets.token_hex(3)}"}
    with start("unready", wait=False, **nowhere) as server:

        def waiting() -> int | None:
            said = server.log().count("Waiting for the operator")  # once by each worker
            return said if said == 2 else None

        wait_for(waiting, what="both workers to wait for the signing keys", timeout=180)
        for _ in range(10):
            with pytest.raises(requests.ConnectionError):
                server.get("/healthz")  # refused by the kernel: no 503, no answer at all
        assert server.process.poll() is None
        assert len(server.workers()) == 2


# -- (b) two servers side by side ------------------------------------------------------------------


def _active(server: TokenServer, token: str, caller: Client) -> bool:
    answer = requests.post(
        server.url + "/oauth2/introspect",
        data={"token": token, "client_id": caller.client_id, "client_secret": caller.secret},
        verify=str(server.ca),
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    active: bool = answer.json()["active"]
    return active


def test_two_servers_side_by_side_give_the_same_answers(start: Start, world: World) -> None:
    port_a = free_port()
    with (
        start("replica-a", port=port_a) as a,
        start("replica-b", issuer_port=port_a) as b,  # one issuer, as behind one Service
    ):
        token_a, token_b = _token(a, world.good), _token(b, world.good)
        for token, other in ((token_a, b), (token_b, a)):
            claims = verify(other, token, other.issuer)
            assert claims["client_id"] == world.good.client_id
            assert _active(other, token, world.good)
        for client in (world.revoked, world.wrong):
            assert _answer(a, client) == _answer(b, client) == (400, "invalid_client")
        assert a.get("/oauth2/jwks").json() == b.get("/oauth2/jwks").json()


# -- usage: one write per credential and interval for the whole server -----------------------------


class LastUsed(KubectlWatch):
    """Every change of one credential the watch sees, with its status.lastUsedAt."""

    def __init__(self, cluster: ClusterHandle, namespace: str, name: str) -> None:
        super().__init__(cluster, namespace)
        self.name = name
        self.seen: list[tuple[str, str]] = []  # (resourceVersion, lastUsedAt)

    def _watch_args(self) -> tuple[str, ...]:
        path = '{.metadata.resourceVersion} {.status.lastUsedAt}{"\\n"}'
        return ("iamcred", self.name, "-o", f"jsonpath={path}")

    def _line(self, line: str) -> None:
        version, _, used = line.strip().partition(" ")
        if version:
            self.seen.append((version, used))

    def writes(self) -> int:
        """Changes that carried a lastUsedAt: one a usage write (the operator leaves an Active
        credential alone)."""
        with self._lock:
            versions = {version for version, used in self.seen if used}
        return len(versions)


def test_usage_is_written_at_most_once_an_interval_by_all_the_workers(
    cluster: ClusterHandle, start: Start, world: World
) -> None:
    interval = 2.0
    watch = LastUsed(cluster, world.namespace, "busy")
    try:
        with start("usage", KUBEIAM_TOKEN_USAGE_INTERVAL=str(interval)) as server:
            wait_for(lambda: len(server.workers()) == 2 or None, what="2 workers")
            # Started once the server listens (kubectl's connection could take the port the
            # server was to bind its metrics on), and seen connected before the first token.
            watch.start()
            wait_for(lambda: watch.seen, what="the watch's first event")
            began = time.monotonic()
            granted = 0
            while time.monotonic() - began < 4 * interval:
                granted += _answer(server, world.busy) == (200, "granted")  # new connections
            asked_for = time.monotonic() - began
            # The last use written after its interval, then nothing more comes.
            wait_for(
                lambda: _metrics(server).value("kubeiam_token_usage_noted_total") == granted,
                what="every use noted",
            )
            time.sleep(interval * 2)  # the trailing write's interval: none more may come
            page = _metrics(server)
            written = page.value("kubeiam_token_usage_writes_total", result="written")
            skipped = page.value("kubeiam_token_usage_writes_total", result="skipped")
        writes = watch.writes()
    finally:
        watch.stop()
    bound = int(asked_for // interval) + 2  # one an interval, plus the first and the last edge
    print(
        f"{granted} tokens in {asked_for:.1f}s: {writes} writes seen (at most {bound}), "
        f"{written:g} written and {skipped:g} skipped by the workers"
    )
    assert granted >= 20
    assert 1 <= written <= bound  # what the workers wrote, identical writes included
    assert 1 <= writes <= bound
    # The metrics page sums both workers' counts. A write identical to the last one (a use
    # within the same second, written by the other worker after the interval) changes nothing,
    # so the watch cannot see it: the workers' own count is the bound that matters.
    assert writes <= written
    assert skipped >= 1  # the other worker held back at least once


# -- (c) the API server restarts -------------------------------------------------------------------


def test_an_apiserver_restart_turns_no_refusal_into_a_grant_and_revocations_still_arrive(
    cluster: ClusterHandle, start: Start, world: World
) -> None:
    local = cluster.local
    if local is None:
        pytest.skip("restarts the API server of a local control plane this session started")
    with start("apiserver-restart") as server, Asking(server, world) as asking:
        wait_for(lambda: asking.granted("good") >= 5, what="grants before the restart")
        local.restart_apiserver()
        restarted = time.monotonic()
        wait_for(lambda: asking.granted("good", after=restarted) >= 5, what="grants after it")
        # Revoked after the restart: the watch resumed, so the revocation arrives.
        assert _answer(server, world.late) == (200, "granted")
        revoke(cluster, world.namespace, "late")
        refused = wait_for(
            lambda: (a := _answer(server, world.late)) != (200, "granted") and a,
            what="the revocation after the restart to reach the token server",
            timeout=120,
        )
        assert refused == (400, "invalid_client")
    print(
        f"{len(asking.answers)} answers ({asking.granted('good')} grants, "
        f"{asking.granted('good', after=restarted)} after the restart), "
        f"{len(asking.failures)} requests without an answer"
    )
    asking.assert_no_refusal_granted()
    assert asking.granted("revoked") == asking.granted("wrong") == 0
    assert server.log().count("Ready (") == 2  # no worker restarted meanwhile


# -- (d) a renewed certificate ---------------------------------------------------------------------


def test_a_renewed_certificate_is_served_without_a_restart(
    start: Start, world: World, tmp_path: Path
) -> None:
    with start("tls") as server:
        workers = server.workers()
        port = int(server.url.rsplit(":", 1)[1])
        bundle = server.ca.read_bytes()
        first = served_certificate(port, bundle, "127.0.0.1")
        serving_certificate(tmp_path)  # the same CA, a new certificate, swapped in
        renewed = x509.load_pem_x509_certificate((tmp_path / "tls.crt").read_bytes())
        assert renewed.serial_number != first.serial_number

        def served_renewed() -> x509.Certificate | None:
            served = served_certificate(port, bundle, "127.0.0.1")
            return served if served.serial_number == renewed.serial_number else None

        # Every worker loads it: ten new connections in a row (spread over the workers by the
        # kernel) all get it.
        wait_for(
            lambda: all(served_renewed() for _ in range(10)),
            what="the renewed certificate on every new connection",
            timeout=60,
        )
        assert server.workers() == workers  # no worker started again
        assert server.process.poll() is None
        _token(server, world.good)
