"""`kube-iam webhook-cert`'s decisions, without a cluster: keep, renew, rotate the CA."""

from __future__ import annotations

import base64
import datetime
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from kubeiam.devcluster import webhook_cert
from kubeiam.devcluster.certs import KeyPair, create_ca

NOW = datetime.datetime(2026, 12, 7, tzinfo=datetime.UTC)


def _secrets(issued: webhook_cert.Issued) -> dict[str, dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(issued.manifests) if doc["kind"] == "Secret"]
    return {doc["metadata"]["name"]: doc for doc in docs}


def _issue(ca: dict[str, Any] | None, serving: dict[str, Any] | None, **kw: Any) -> Any:
    return webhook_cert.issue(
        namespace="ns", service="svc", ca_secret=ca, serving_secret=serving, now=NOW, **kw
    )


def _verifies(serving_pem: str, bundle_pem: str) -> bool:
    """The serving certificate is signed by one of the bundle's CAs."""
    cert = x509.load_pem_x509_certificate(base64.b64decode(serving_pem))
    for ca in x509.load_pem_x509_certificates(base64.b64decode(bundle_pem)):
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


def test_a_second_run_keeps_everything_and_renew_keeps_the_ca() -> None:
    first = _issue(None, None, renew=False)
    secrets = _secrets(first)
    ca, serving = secrets["kube-iam-webhook-ca"], secrets["kube-iam-webhook-tls"]
    assert first.new_ca
    assert first.renewed
    assert first.serving_expires - NOW > datetime.timedelta(days=89)

    again = _secrets(_issue(ca, serving, renew=False))
    assert again == secrets  # idempotent: kubectl apply changes nothing

    renewed = _issue(ca, serving, renew=True)
    after = _secrets(renewed)
    assert not renewed.new_ca
    assert renewed.renewed
    assert after["kube-iam-webhook-ca"] == ca
    assert after["kube-iam-webhook-tls"]["data"]["tls.crt"] != serving["data"]["tls.crt"]
    assert _verifies(after["kube-iam-webhook-tls"]["data"]["tls.crt"], ca["data"]["ca.crt"])
    assert "--renew" in webhook_cert.summary(renewed, NOW)
    assert renewed.serving_expires.isoformat() in webhook_cert.summary(renewed, NOW)


def test_a_ca_near_its_end_is_replaced_and_the_bundle_trusts_old_and_new(tmp_path: Path) -> None:
    old = create_ca(
        KeyPair(tmp_path / "ca.crt", tmp_path / "ca.key"),
        "old CA",
        validity=datetime.timedelta(days=100),
    )
    old_pem = old.cert.read_bytes()
    ca_secret = {
        "data": {
            "ca.crt": base64.b64encode(old_pem).decode(),
            "ca.key": base64.b64encode(old.key.read_bytes()).decode(),
            "ca-bundle.crt": base64.b64encode(old_pem).decode(),
        }
    }
    issued = _issue(ca_secret, None, renew=False)
    assert issued.new_ca
    after = _secrets(issued)
    bundle = base64.b64decode(after["kube-iam-webhook-ca"]["data"]["ca-bundle.crt"])
    subjects = {cert.subject for cert in x509.load_pem_x509_certificates(bundle)}
    assert x509.load_pem_x509_certificate(old_pem).subject in subjects
    assert len(subjects) == 2
    tls = after["kube-iam-webhook-tls"]["data"]
    assert _verifies(tls["tls.crt"], tls["ca.crt"])


def test_an_expired_ca_leaves_the_bundle() -> None:
    later = NOW + datetime.timedelta(days=6 * 365)
    pem = base64.b64decode(
        _secrets(_issue(None, None, renew=False))["kube-iam-webhook-ca"]["data"]["ca.crt"]
    )
    assert webhook_cert.bundle([pem], NOW) == pem
    assert webhook_cert.bundle([pem], later) == b""
