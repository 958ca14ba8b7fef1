"""Install deploy/ into a cluster, and run as the operator's ServiceAccount from outside it.

The tests (and a developer who wants RBAC enforced on a local run) apply the same kustomize
base a user applies, then give a local operator process the Deployment's identity and settings:
a token of its ServiceAccount from the TokenRequest API, and the ConfigMap's variables.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from kubeiam.devcluster.binaries import REPO_ROOT, ensure_binaries
from kubeiam.devcluster.errors import ControlPlaneError
from kubeiam.devcluster.kubeconfig import write_token_kubeconfig
from kubeiam.devcluster.kubectl import Kubectl
from kubeiam.devcluster.webhook import LocalWebhook
from kubeiam.devcluster.webhook import load as load_webhook
from kubeiam.devcluster.webhook import register as register_webhook

DEPLOY_DIR = REPO_ROOT / "deploy"
NAMESPACE = "kube-iam-system"
SERVICE_ACCOUNT = "kube-iam"
SUBJECT = f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"
# The webhook's own identity (deploy/webhook-deployment.yaml): `--admission-only` runs as it.
WEBHOOK_SERVICE_ACCOUNT = "kube-iam-webhook"
WEBHOOK_SUBJECT = f"system:serviceaccount:{NAMESPACE}:{WEBHOOK_SERVICE_ACCOUNT}"
# The token server's (deploy/token-server-deployment.yaml): `kube-iam token-server` runs as it.
TOKEN_SERVER_SERVICE_ACCOUNT = "kube-iam-token-server"
TOKEN_SERVER_SUBJECT = f"system:serviceaccount:{NAMESPACE}:{TOKEN_SERVER_SERVICE_ACCOUNT}"
SETTINGS_CONFIGMAP = "kube-iam-settings"
# Long enough for any test session; TokenRequest tokens cannot be revoked, only expire.
TOKEN_DURATION = "12h"


def render(kubectl: Kubectl, directory: Path = DEPLOY_DIR) -> list[dict[str, Any]]:
    """The manifests `kubectl apply -k` would send, as objects."""
    built = kubectl("kustomize", str(directory)).stdout
    return [doc for doc in yaml.safe_load_all(built) if doc]


def install(
    kubectl: Kubectl, *, workload: bool = True, local_webhook: LocalWebhook | None = None
) -> None:
    """Apply deploy/ the way docs/install.md says: the CRDs first, then everything.

    Without `workload`, the Deployment is left out: on a cluster with nodes it would start
    operator pods beside the processes the tests run. With `local_webhook`, the webhook
    configurations deploy/ points at its Service are pointed at local processes again.
    """
    _apply(kubectl, workload=workload)
    if local_webhook is not None:
        register_webhook(kubectl, local_webhook)


def _apply(kubectl: Kubectl, *, workload: bool) -> None:
    kubectl("apply", "--kustomize", str(DEPLOY_DIR / "crds"))
    # `kubectl wait` reads no kustomization: every CRD in deploy/crds carries this label.
    kubectl(
        "wait",
        "customresourcedefinitions",
        "--selector=app.kubernetes.io/part-of=kube-iam",
        "--for=condition=Established",
        "--timeout=60s",
    )
    if workload:
        kubectl("apply", "--kustomize", str(DEPLOY_DIR))
        return
    objects = [doc for doc in render(kubectl) if doc["kind"] != "Deployment"]
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))


def settings_env(kubectl: Kubectl) -> dict[str, str]:
    """The KUBEIAM_* variables the Deployment's pods get, read from the installed ConfigMap."""
    result = kubectl("get", "configmap", SETTINGS_CONFIGMAP, "-n", NAMESPACE, "-o", "json")
    data: dict[str, str] = json.loads(result.stdout).get("data") or {}
    return data


def operator_kubeconfig(
    kubectl: Kubectl, path: Path, service_account: str = SERVICE_ACCOUNT
) -> Path:
    """Write a kubeconfig that acts as the operator's ServiceAccount (or the webhook's, or the
    token server's) on kubectl's cluster.

    The token never reaches a log or an error message: kubectl prints it on stdout only, and
    a failure quotes stderr.
    """
    raw = kubectl("config", "view", "--raw", "--minify", "--flatten", "-o", "json").stdout
    clusters = json.loads(raw).get("clusters") or []
    if not clusters:
        raise ControlPlaneError(f"{kubectl.kubeconfig} names no cluster.")
    token = kubectl(
        "create", "token", service_account, "-n", NAMESPACE, f"--duration={TOKEN_DURATION}"
    ).stdout.strip()
    subject = f"system:serviceaccount:{NAMESPACE}:{service_account}"
    return write_token_kubeconfig(path, clusters[0]["cluster"], subject, token)


def main(argv: list[str] | None = None) -> int:
    """`make run-as-deployed`: install deploy/ and write what a local process needs to act as
    the Deployment: a kubeconfig with the ServiceAccount's token and the settings as a shell
    file of exports."""
    parser = argparse.ArgumentParser(prog="python -m kubeiam.devcluster.install")
    parser.add_argument("--kubeconfig", type=Path, required=True, help="an admin's kubeconfig")
    parser.add_argument("--out", type=Path, required=True, help="directory for the two files")
    args = parser.parse_args(argv)
    binary = shutil.which("kubectl") or ensure_binaries(args.out / "logs") / "kubectl"
    kubectl = Kubectl(binary, args.kubeconfig)
    try:
        # The local control plane calls the webhook on loopback, where this process will serve.
        local = load_webhook(args.out)
        install(kubectl, local_webhook=local)
        kubeconfig = operator_kubeconfig(kubectl, args.out / "operator.kubeconfig")
        env = {**settings_env(kubectl), **(local.env() if local else {})}
    except ControlPlaneError as error:
        print(f"kube-iam: {error}", file=sys.stderr)
        return 2
    exports = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())
    (args.out / "operator.env").write_text(exports)
    print(f"Acting as {SUBJECT}: KUBECONFIG={kubeconfig}, settings in {args.out / 'operator.env'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
