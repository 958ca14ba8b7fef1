"""`kube-iam webhook-cert` against the real cluster, and its renewal as the real server sees it.

The webhook configurations it prints are not applied here: they would point the session's
cluster at a Service instead of the local processes. Its Secrets are applied into the test's
namespace, and a webhook process serves their files as the kubelet mounts them.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from kubeiam.devcluster.cluster import free_port

from .metrics_support import scrape
from .support import ClusterHandle, OperatorProcess, listening, served_certificate, wait_for

pytestmark = pytest.mark.integration


def _webhook_cert(cluster: ClusterHandle, namespace: str, *args: str) -> tuple[list[Any], str]:
    result = subprocess.run(
        [sys.executable, "-m", "kubeiam.cli", "webhook-cert", "--namespace", namespace, *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    secrets = [doc for doc in docs if doc["kind"] == "Secret"]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(secrets))
    return docs, result.stderr


def _mount(docs: list[Any], directory: Path) -> bytes:
    """Write the serving Secret's files as the kubelet does (a whole new set, swapped in at
    once), and return the CA bundle of the webhook configurations."""
    (tls,) = [doc for doc in docs if doc["metadata"]["name"] == "kube-iam-webhook-tls"]
    for key in ("tls.crt", "tls.key"):
        partial = directory / f".{key}.new"
        partial.write_bytes(base64.b64decode(tls["data"][key]))
        os.replace(partial, directory / key)
    bundles = {
        hook["clientConfig"]["caBundle"]
        for doc in docs
        if doc["kind"].endswith("WebhookConfiguration")
        for hook in doc["webhooks"]
    }
    (bundle,) = bundles
    return base64.b64decode(bundle)


def test_webhook_cert_renews_with_its_kept_ca_and_the_server_loads_it_without_a_restart(
    cluster: ClusterHandle, namespace: str, tmp_path: Path
) -> None:
    if cluster.operator_kubeconfig is None:
        pytest.skip("the operator runs in the cluster; this test needs processes of its own")
    host = f"kube-iam-webhook.{namespace}.svc"
    docs, said = _webhook_cert(cluster, namespace)
    assert "expires at" in said
    assert "kube-iam webhook-cert --renew | kubectl apply -f -" in said
    first_bundle = _mount(docs, tmp_path)
    first = x509.load_pem_x509_certificate((tmp_path / "tls.crt").read_bytes())
    assert first.not_valid_after_utc.isoformat() in said

    # Running it again changes nothing: the same Secrets, the same bundle.
    again, _ = _webhook_cert(cluster, namespace)
    assert [d for d in again if d["kind"] == "Secret"] == [d for d in docs if d["kind"] == "Secret"]

    port = free_port()
    process = OperatorProcess(
        cluster,
        name="webhook-cert",
        args=("--admission-only",),
        kubeconfig=cluster.webhook_kubeconfig,
        env={
            "KUBEIAM_WEBHOOK_PORT": str(port),
            "KUBEIAM_WEBHOOK_CERT_DIR": str(tmp_path),
            # Any certificate is "about to expire": the warning shows at once.
            "KUBEIAM_WEBHOOK_CERT_WARNING_LEAD": "P3650D",
        },
    )
    process.start()
    try:
        wait_for(lambda: listening(port), what="the webhook to listen")
        assert served_certificate(port, first_bundle, host).serial_number == first.serial_number
        expiry = "kubeiam_webhook_certificate_expiry_timestamp_seconds"
        assert scrape(process).value(expiry) == first.not_valid_after_utc.timestamp()
        assert process.process is not None
        pid = process.process.pid

        renewed_docs, said = _webhook_cert(cluster, namespace, "--renew")
        assert "a new serving certificate" in said
        renewed_bundle = _mount(renewed_docs, tmp_path)
        renewed = x509.load_pem_x509_certificate((tmp_path / "tls.crt").read_bytes())
        assert renewed.serial_number != first.serial_number
        # The same CA: the bundle the API server already holds trusts the new certificate.
        assert renewed_bundle == first_bundle

        # Picked up by the running server, which never stopped answering meanwhile.
        def renewed_served() -> x509.Certificate | None:
            served = served_certificate(port, first_bundle, host)
            return served if served.serial_number == renewed.serial_number else None

        served = wait_for(renewed_served, what="the renewed certificate to be served", timeout=60)
        assert served.not_valid_after_utc == renewed.not_valid_after_utc
        assert process.running
        assert process.process.pid == pid
        assert scrape(process).value(expiry) == renewed.not_valid_after_utc.timestamp()
        log = process.log_tail(200)
        assert "Loaded the renewed webhook certificate." in log
        assert "The webhook's serving certificate expires at" in log
        assert "WARNING" in log
    finally:
        process.stop()
