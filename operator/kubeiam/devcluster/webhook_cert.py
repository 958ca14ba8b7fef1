"""`kube-iam webhook-cert`: the webhook's serving certificate on a cluster without cert-manager.

The CA is kept in the cluster (the Secret kube-iam-webhook-ca, which no pod mounts), so a later
run signs a new serving certificate with the same CA: the API server's caBundle still trusts it,
and the pods load the renewed Secret without a restart, so renewal refuses no call. When the CA
itself nears its end, a new CA signs the serving certificate and the caBundle holds the old CA
and the new one until the old one expires: whichever certificate a pod serves meanwhile, the API
server trusts it.
"""

from __future__ import annotations

import base64
import datetime
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from kubeiam.devcluster.certs import KeyPair, create_ca, issue_certificate
from kubeiam.devcluster.webhook import configurations_with

SERVING_SECRET = "kube-iam-webhook-tls"
CA_SECRET = "kube-iam-webhook-ca"
SERVING_VALIDITY = datetime.timedelta(days=90)
CA_VALIDITY = datetime.timedelta(days=5 * 365)
# Renew (without --renew) once less than this is left, as cert-manager does at two thirds.
RENEW_BEFORE = SERVING_VALIDITY / 3


@dataclass(frozen=True)
class Issued:
    """What one run produced: the manifests, and what a person needs to know about them."""

    manifests: str
    serving_expires: datetime.datetime
    ca_expires: datetime.datetime
    renewed: bool
    new_ca: bool


def needs_new_ca(ca_expires: datetime.datetime | None, now: datetime.datetime) -> bool:
    """A new CA when there is none, or when the current one would expire before a serving
    certificate issued now (and a renewal a third before its end) does."""
    return ca_expires is None or ca_expires - now < SERVING_VALIDITY * 2


def bundle(pems: list[bytes], now: datetime.datetime) -> bytes:
    """The CA certificates still valid, each once, newest first: old and new trusted alike."""
    seen: dict[bytes, x509.Certificate] = {}
    for pem in pems:
        for cert in x509.load_pem_x509_certificates(pem) if pem.strip() else []:
            if cert.not_valid_after_utc > now:
                seen.setdefault(cert.fingerprint(hashes.SHA256()), cert)
    ordered = sorted(seen.values(), key=lambda cert: cert.not_valid_before_utc, reverse=True)
    return b"".join(_pem(cert) for cert in ordered)


def issue(
    *,
    namespace: str,
    service: str,
    ca_secret: dict[str, Any] | None,
    serving_secret: dict[str, Any] | None,
    renew: bool,
    now: datetime.datetime,
) -> Issued:
    """The Secrets and webhook configurations to apply, from what the cluster holds now.

    Without `renew`, a serving certificate with more than RENEW_BEFORE left is kept as it is,
    so running it again changes nothing (`kubectl apply` sees the same objects)."""
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        ca_data = _data(ca_secret)
        ca_pair = KeyPair(directory / "ca.crt", directory / "ca.key")
        current_ca = x509.load_pem_x509_certificate(ca_data["ca.crt"]) if ca_data else None
        new_ca = needs_new_ca(current_ca.not_valid_after_utc if current_ca else None, now)
        if new_ca:
            stamp = now.strftime("%Y-%m-%dT%H:%MZ")
            create_ca(ca_pair, f"kube-iam webhook CA {stamp}", CA_VALIDITY)
        else:
            ca_pair.cert.write_bytes(ca_data["ca.crt"])
            ca_pair.key.write_bytes(ca_data["ca.key"])
        ca_cert_pem = ca_pair.cert.read_bytes()
        ca_bundle = bundle([ca_cert_pem, ca_data.get("ca-bundle.crt", b"")], now)

        serving_data = _data(serving_secret)
        keep = not renew and not new_ca and _still_good(serving_data, ca_cert_pem, now)
        if keep:
            cert_pem, key_pem = serving_data["tls.crt"], serving_data["tls.key"]
        else:
            host = f"{service}.{namespace}.svc"
            serving = issue_certificate(
                ca_pair,
                KeyPair(directory / "tls.crt", directory / "tls.key"),
                # The names are the SANs; a common name is at most 64 characters, which the
                # Service's host name exceeds in a namespace of more than ~40.
                service[:64],
                server_names=(host, f"{host}.cluster.local"),
                validity=SERVING_VALIDITY,
            )
            cert_pem, key_pem = serving.cert.read_bytes(), serving.key.read_bytes()
        ca_key_pem = ca_pair.key.read_bytes()

    serving_expires = x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc
    labels = {"app.kubernetes.io/name": "kube-iam", "app.kubernetes.io/part-of": "kube-iam"}
    secrets = [
        _secret(
            SERVING_SECRET,
            namespace,
            labels,
            {"tls.crt": cert_pem, "tls.key": key_pem, "ca.crt": ca_bundle},
            kind="kubernetes.io/tls",
        ),
        _secret(
            CA_SECRET,
            namespace,
            labels,
            {"ca.crt": ca_cert_pem, "ca.key": ca_key_pem, "ca-bundle.crt": ca_bundle},
            kind="Opaque",
        ),
    ]
    encoded_bundle = base64.b64encode(ca_bundle).decode("ascii")
    return Issued(
        manifests=yaml.safe_dump_all([*secrets, *configurations_with(encoded_bundle, None)]),
        serving_expires=serving_expires,
        ca_expires=x509.load_pem_x509_certificate(ca_cert_pem).not_valid_after_utc,
        renewed=not keep,
        new_ca=new_ca,
    )


def summary(issued: Issued, now: datetime.datetime) -> str:
    """What the command tells a person (on stderr: stdout is for `kubectl apply -f -`)."""
    days = (issued.serving_expires - now).days
    what = "a new serving certificate" if issued.renewed else "the current serving certificate"
    lines = [
        f"kube-iam webhook-cert: {what}, which expires at "
        f"{issued.serving_expires.isoformat()} (in {days} days); its CA expires at "
        f"{issued.ca_expires.isoformat()}.",
    ]
    if issued.new_ca:
        lines.append(
            "  A new CA signed it; the caBundle keeps the previous CA (if any) until it expires, "
            "so pods serving either certificate are trusted."
        )
    lines.append(
        "  Renew before it expires (expired, every write of kube-iam's kinds is refused): "
        "`kube-iam webhook-cert --renew | kubectl apply -f -`. The pods load the renewed Secret "
        "without a restart; watch kubeiam_webhook_certificate_expiry_timestamp_seconds."
    )
    return "\n".join(lines) + "\n"


def _still_good(data: dict[str, bytes], ca_pem: bytes, now: datetime.datetime) -> bool:
    if "tls.crt" not in data or "tls.key" not in data:
        return False
    cert = x509.load_pem_x509_certificate(data["tls.crt"])
    signed_by_ca = cert.issuer == x509.load_pem_x509_certificate(ca_pem).subject
    return signed_by_ca and cert.not_valid_after_utc - now > RENEW_BEFORE


def _data(secret: dict[str, Any] | None) -> dict[str, bytes]:
    raw = (secret or {}).get("data") or {}
    return {key: base64.b64decode(value) for key, value in raw.items()}


def _secret(
    name: str, namespace: str, labels: dict[str, str], data: dict[str, bytes], *, kind: str
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": kind,
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "data": {key: base64.b64encode(value).decode("ascii") for key, value in data.items()},
    }


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)
