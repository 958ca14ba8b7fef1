"""The webhook's HTTPS server under hostile calls: its body size, its concurrency, its memory.

Every process here is `kube-iam run --admission-only`, the webhook container's command, and
every request goes over TLS to the real server.
"""

from __future__ import annotations

import http.client
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kubeiam.devcluster.binaries import REPO_ROOT
from kubeiam.devcluster.cluster import free_port
from kubeiam.kube.webhook_server import MAX_CONTAINERS, SMALL_REVIEW_BYTES
from kubeiam.settings import Settings

from .credentials_support import account_manifest
from .support import ClusterHandle, OperatorProcess, listening, wait_for

pytestmark = pytest.mark.integration

PATH = "/validate-serviceaccounts"
MiB = 1024 * 1024


def _review(size: int) -> bytes:
    """An AdmissionReview of about `size` bytes built to cost the most memory when parsed: a
    list of empty objects, each 3 bytes of JSON and a Python dict in memory."""
    head = (
        b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u",'
        b'"kind":{"group":"iam.kubeiam.io","version":"v1alpha1","kind":"ServiceAccount"},'
        b'"resource":{"group":"iam.kubeiam.io","version":"v1alpha1","resource":"serviceaccounts"},'
        b'"operation":"CREATE","userInfo":{"username":"mallory"},"object":{"a":['
    )
    tail = b"]}}}"
    count = max(1, (size - len(head) - len(tail)) // 3)
    return head + b",".join([b"{}"] * count) + tail


def _worst_review(size: int, containers: int) -> bytes:
    """The costliest review the server still judges: `containers` empty objects, and the rest
    of `size` as an object of distinct short keys (each a Python str and a dict entry)."""
    empties = b",".join([b"{}"] * containers)
    entries: list[bytes] = []
    length, index = len(empties), 0
    while length < size - 300:
        entry = b'"k%x":0' % index
        entries.append(entry)
        length += len(entry) + 1
        index += 1
    return _review(0).replace(
        b'"a":[{}]', b'"a":[' + empties + b'],"b":{' + b",".join(entries) + b"}"
    )


def _connection(
    cluster: ClusterHandle, port: int, client: tuple[Path, Path] | None = None
) -> http.client.HTTPSConnection:
    """A TLS connection that trusts the webhook's CA, with a client certificate if given."""
    assert cluster.webhook is not None
    context = ssl.create_default_context(cafile=str(cluster.webhook.ca_cert))
    if client is not None:
        context.load_cert_chain(*(str(path) for path in client))
    return http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)


def _post(cluster: ClusterHandle, port: int, body: bytes, *, chunked: bool = False) -> int:
    connection = _connection(cluster, port)
    try:
        if chunked:
            pieces = (body[i : i + 65536] for i in range(0, len(body), 65536))
            connection.request("POST", PATH, body=pieces, encode_chunked=True)
        else:
            connection.request("POST", PATH, body=body)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _memory_kib(process: OperatorProcess, field: str) -> int:
    """VmHWM (the peak resident set) or VmRSS of the process, in KiB."""
    assert process.process is not None
    for line in Path(f"/proc/{process.process.pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc status")


@pytest.fixture
def webhook_process(cluster: ClusterHandle) -> Iterator[tuple[OperatorProcess, int]]:
    """A webhook-only process on a port of its own, so nothing else shares what it measures."""
    if cluster.webhook is None:
        pytest.skip("no local webhook: the API server cannot call this machine")
    port = free_port()
    process = OperatorProcess(
        cluster,
        name="webhook-server",
        args=("--admission-only",),
        env={"KUBEIAM_WEBHOOK_PORT": str(port)},
    )
    process.start()
    wait_for(lambda: listening(port), what="the webhook to listen")
    try:
        yield process, port
    finally:
        process.stop()


def test_an_oversized_review_is_refused_unread_and_costs_no_memory(
    cluster: ClusterHandle, webhook_process: tuple[OperatorProcess, int]
) -> None:
    process, port = webhook_process
    # Warm up: the first review imports and caches what every later one uses.
    assert _post(cluster, port, _review(4096)) == 200
    peak_before = _memory_kib(process, "VmHWM")
    for chunked in (False, True):  # with a Content-Length, and without one (it may lie)
        started = time.monotonic()
        status = _post(cluster, port, _review(8 * MiB), chunked=chunked)
        elapsed = time.monotonic() - started
        assert status == 413, f"an 8 MiB review (chunked={chunked}) was answered {status}"
        assert elapsed < 3, f"refusing it took {elapsed:.1f} s"
    grown_mib = (_memory_kib(process, "VmHWM") - peak_before) / 1024
    assert grown_mib < 16, f"an 8 MiB review raised the peak RSS by {grown_mib:.0f} MiB"


def test_concurrent_large_reviews_do_not_starve_the_api_servers_calls(
    cluster: ClusterHandle, namespace: str
) -> None:
    """While callers flood the webhook with the largest reviews it reads and slow bodies, the
    API server's own calls (a kubectl create) are still answered, fast."""
    if cluster.webhook is None or cluster.admission is None:
        pytest.skip("no local webhook: the API server cannot call this machine")
    # The session's webhook process steps aside: the API server then calls this one only.
    cluster.admission.stop()
    process = OperatorProcess(cluster, name="webhook-flooded", args=("--admission-only",))
    stop = threading.Event()
    answers: list[int] = []

    def flood(body: bytes) -> None:
        while not stop.is_set():
            try:
                answers.append(_post(cluster, cluster.webhook.port, body))  # type: ignore[union-attr]
            except OSError:
                answers.append(0)

    def slow_sender() -> None:
        while not stop.is_set():
            connection = _connection(cluster, cluster.webhook.port)  # type: ignore[union-attr]
            try:
                connection.putrequest("POST", PATH)
                connection.putheader("Content-Length", str(MiB))
                connection.endheaders()
                while not stop.is_set():
                    connection.send(b" ")
                    stop.wait(0.5)
            except OSError:
                pass
            finally:
                connection.close()

    settings = Settings()
    largest = _worst_review(settings.webhook.max_review_bytes - 8192, MAX_CONTAINERS - 100)
    small = _worst_review(SMALL_REVIEW_BYTES - 1024, SMALL_REVIEW_BYTES // 4)
    threads = [threading.Thread(target=flood, args=(largest,)) for _ in range(4)]
    threads += [threading.Thread(target=flood, args=(small,)) for _ in range(24)]
    threads += [threading.Thread(target=slow_sender) for _ in range(20)]
    try:
        process.start()
        wait_for(lambda: listening(cluster.webhook.port), what="the webhook to listen")  # type: ignore[union-attr]
        peak_before = _memory_kib(process, "VmHWM")
        for thread in threads:
            thread.start()
        wait_for(lambda: len(answers) >= 6, what="the flood to be under way", timeout=60)
        durations = []
        for index in range(5):
            started = time.monotonic()
            cluster.kubectl(
                "create",
                "-n",
                namespace,
                "-f",
                "-",
                input=account_manifest(f"during-flood-{index}"),
            )
            durations.append(time.monotonic() - started)
        peak_mib = _memory_kib(process, "VmHWM") / 1024
        grown_mib = peak_mib - peak_before / 1024
    finally:
        stop.set()
        for thread in threads:
            if thread.is_alive() or thread.ident is not None:
                thread.join(timeout=30)
        process.stop()
        cluster.admission.start()
    # Each create waits on two webhook calls (mutating, validating), each allowed 5 s; on 2
    # shared cores, with the flood's 48 senders in this very process, they took 1 to 3.5 s.
    assert max(durations) < 5, f"creates took {[round(d, 1) for d in durations]} s"
    limit_mib = _deployed_memory_limit_mib()
    print(f"peak RSS under the flood: {peak_mib:.0f} MiB (+{grown_mib:.0f}); limit {limit_mib}")
    assert 200 in answers, "the flood's reviews were judged, not only refused"
    assert peak_mib < limit_mib * 0.8, f"peak RSS {peak_mib:.0f} MiB, limit {limit_mib} MiB"


def _deployed_memory_limit_mib() -> int:
    manifest = yaml.safe_load((REPO_ROOT / "deploy" / "webhook-deployment.yaml").read_text())
    limit = manifest["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    assert limit.endswith("Mi"), limit
    return int(limit[:-2])


def test_with_a_client_ca_only_a_caller_with_its_certificate_is_served(
    cluster: ClusterHandle,
) -> None:
    """KUBEIAM_WEBHOOK_CLIENT_CA: the API server's client certificate (here: the local CA's
    admin certificate) is served; a caller without one never completes the handshake."""
    if cluster.webhook is None:
        pytest.skip("no local webhook")
    pki = cluster.webhook.ca_cert.parent
    port = free_port()
    process = OperatorProcess(
        cluster,
        name="webhook-client-ca",
        args=("--admission-only",),
        env={"KUBEIAM_WEBHOOK_PORT": str(port), "KUBEIAM_WEBHOOK_CLIENT_CA": str(pki / "ca.crt")},
    )
    process.start()
    try:
        wait_for(lambda: listening(port), what="the webhook to listen")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _post(cluster, port, _review(4096))
        connection = _connection(cluster, port, (pki / "admin.crt", pki / "admin.key"))
        connection.request("POST", PATH, body=_review(4096))
        assert connection.getresponse().status == 200
        connection.close()
    finally:
        process.stop()
