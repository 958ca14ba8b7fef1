"""`make run`: the operator, its admission webhook and the token server as three processes, as
deploy/ runs them.

One process reconciling and answering admission on the same event loop answered some of a
burst's admission calls past the API server's 5 s timeout, and the webhook fails closed. So, as
in deploy/, `kube-iam run --admission-only` serves the webhook and `kube-iam run` reconciles,
side by side; Ctrl-C (or any one's end) stops all. The token server (`kube-iam token-server`)
serves on loopback with a certificate from the local CA, and the operator writes its token URL
into every generated Secret, so a credential's Secret gets a token from it as is.

The local control plane is recognised by its kubeconfig, whatever KUBECONFIG says: unset, the
local one's path, or any kubeconfig naming the local API server's URL. Another cluster cannot call
a webhook on this machine: against it only the operator runs (deploy/'s pods serve admission).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

from kubeiam.devcluster.binaries import ensure_binaries
from kubeiam.devcluster.certs import KeyPair, issue_certificate
from kubeiam.devcluster.cluster import (
    DEFAULT_STATE_DIR,
    LocalCluster,
    apply_crds,
    free_port,
    terminate,
)
from kubeiam.devcluster.errors import ControlPlaneError
from kubeiam.devcluster.kubectl import Kubectl
from kubeiam.devcluster.webhook import ADDRESS
from kubeiam.settings import TOKEN_PATH

_START_TIMEOUT = 180.0
_STOP_TIMEOUT = 30.0


def is_local(kubeconfig: str | None, cluster: LocalCluster) -> bool:
    """Whether `kubeconfig` (KUBECONFIG's value) points at the local control plane: unset, its
    path, or a kubeconfig whose current context names the local API server."""
    if not kubeconfig:
        return True
    paths = [Path(part) for part in kubeconfig.split(os.pathsep) if part]
    if len(paths) == 1 and paths[0].resolve() == cluster.kubeconfig.resolve():
        return True
    local = _server(str(cluster.kubeconfig))
    return local is not None and _server(kubeconfig) == local


def _server(kubeconfig: str) -> str | None:
    """The API server of the kubeconfig's current context, as kubectl would pick it (files
    merged in KUBECONFIG's order); None if it names none that can be read."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)  # type: ignore[no-untyped-call]
    except Exception:  # any kubeconfig kube-iam cannot read is not the local one
        return None
    return str(configuration.host).rstrip("/")


def _healthy(url: str, ca: Path | None = None) -> bool:
    context = ssl.create_default_context(cafile=str(ca)) if ca else None
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310 - loopback
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _listening(port: int) -> bool:
    import socket

    try:
        socket.create_connection((ADDRESS, port), timeout=1).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _children() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for child in reversed(started):
            terminate(child, timeout=_STOP_TIMEOUT)


def _start(args: list[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    # Their output goes to this terminal, as `kube-iam run`'s would.
    return subprocess.Popen([sys.executable, "-m", "kubeiam.cli", *args], env=dict(env))


def token_server_env(state_dir: Path, port: int, metrics_port: int) -> dict[str, str]:
    """The token server's settings on loopback, with a serving certificate the local CA signs
    (issued afresh on every run, into the state directory's pki/token-server)."""
    pki = state_dir / "pki"
    cert_dir = pki / "token-server"
    cert_dir.mkdir(parents=True, exist_ok=True)
    issue_certificate(
        KeyPair(pki / "ca.crt", pki / "ca.key"),
        KeyPair(cert_dir / "tls.crt", cert_dir / "tls.key"),
        "kube-iam-token-server",
        server_names=("localhost",),
        server_ips=(ADDRESS,),
    )
    return {
        "KUBEIAM_TOKEN_ISSUER": f"https://{ADDRESS}:{port}",
        "KUBEIAM_TOKEN_ADDRESS": ADDRESS,
        "KUBEIAM_TOKEN_PORT": str(port),
        "KUBEIAM_TOKEN_CERT_DIR": str(cert_dir),
        # Not the operator's metrics port (KUBEIAM_METRICS_PORT, 9090 by default).
        "KUBEIAM_METRICS_PORT": str(metrics_port),
    }


def run(state_dir: Path, *, kubeconfig: str | None) -> int:
    cluster = LocalCluster(state_dir)
    if not is_local(kubeconfig, cluster):
        return _run_remote(Path(kubeconfig or ""), state_dir)
    admin = cluster.up()
    webhook = cluster.webhook
    if webhook is None:
        raise ControlPlaneError(f"The local control plane in {state_dir} has no webhook set up.")
    base = {**os.environ, "KUBECONFIG": str(admin)}
    admission_health = f"http://127.0.0.1:{free_port()}/healthz"
    operator_health = f"http://127.0.0.1:{free_port()}/healthz"
    issuer = cluster.token_issuer
    if issuer is not None:
        # Where the API server expects kube-iam's token server (--authentication-config): its
        # tokens then work with `kubectl --token` against this control plane too.
        tokens = {
            "KUBEIAM_TOKEN_ISSUER": issuer.url,
            "KUBEIAM_TOKEN_ADDRESS": ADDRESS,
            "KUBEIAM_TOKEN_PORT": str(issuer.port),
            "KUBEIAM_TOKEN_CERT_DIR": issuer.cert_dir,
            "KUBEIAM_TOKEN_AUDIENCES": json.dumps([issuer.url, issuer.audience]),
            "KUBEIAM_METRICS_PORT": str(free_port()),
        }
    else:
        tokens = token_server_env(state_dir, free_port(), free_port())
    token_url = tokens["KUBEIAM_TOKEN_ISSUER"] + TOKEN_PATH
    token_health = tokens["KUBEIAM_TOKEN_ISSUER"] + "/healthz"
    ca = cluster.state_dir / "pki" / "ca.crt"
    with _children() as children:
        children.append(
            _start(
                ["run", "--admission-only", f"--liveness={admission_health}"],
                # Its metrics on a port of its own; the operator keeps KUBEIAM_METRICS_PORT.
                {**base, **webhook.env(), "KUBEIAM_METRICS_PORT": str(free_port())},
            )
        )
        children.append(
            _start(
                ["run", f"--liveness={operator_health}"],
                # Generated Secrets carry the local token server's URL and its CA (ca.crt).
                {
                    **base,
                    "KUBEIAM_WEBHOOK_PORT": "0",
                    "KUBEIAM_TOKEN_ISSUER": tokens["KUBEIAM_TOKEN_ISSUER"],
                    "KUBEIAM_TOKEN_CA_FILE": str(ca),
                },
            )
        )
        # Ready once its caches are filled and it has read the signing key the operator creates.
        children.append(_start(["token-server"], {**base, **tokens}))
        deadline = time.monotonic() + _START_TIMEOUT
        while not (
            _healthy(admission_health)
            and _listening(webhook.port)
            and _healthy(operator_health)
            and _healthy(token_health, ca)
        ):
            for child in children:
                if child.poll() is not None:
                    print(f"kube-iam: a process exited with {child.returncode}", file=sys.stderr)
                    return child.returncode or 1
            if time.monotonic() > deadline:
                print("kube-iam: the operator did not become ready in time", file=sys.stderr)
                return 1
            time.sleep(0.2)
        print(
            "kube-iam is ready for objects: the operator reconciles and the admission webhook "
            f"answers on {ADDRESS}:{webhook.port}. Ctrl-C stops all three.\n"
            f"Token endpoint: {token_url} (its CA: {ca})\n"
            + (
                f"The API server accepts kube-iam tokens for the audience {issuer.audience}\n"
                if issuer is not None
                else ""
            )
            + "From another terminal:\n"
            f"  export KUBECONFIG={admin} PATH={cluster.kubectl_path.parent}:$PATH\n"
            "  kubectl apply -f examples/ && kubectl get iam",
            flush=True,
        )
        # Until Ctrl-C, or until one of them ends (the other is then stopped too).
        with contextlib.suppress(KeyboardInterrupt):
            while all(child.poll() is None for child in children):
                time.sleep(0.5)
        ended = [child.returncode for child in children if child.returncode is not None]
    return max(ended, default=0)


def _run_remote(kubeconfig: Path, state_dir: Path) -> int:
    """Another cluster: its CRDs brought up to date, then only the operator, with no webhook
    (the cluster could not call one here; deploy/'s pods serve it there)."""
    binary = shutil.which("kubectl") or ensure_binaries(state_dir / "logs") / "kubectl"
    apply_crds(Kubectl(Path(binary), kubeconfig))
    env = {**os.environ, "KUBEIAM_WEBHOOK_PORT": os.environ.get("KUBEIAM_WEBHOOK_PORT", "0")}
    os.execve(sys.executable, [sys.executable, "-m", "kubeiam.cli", "run"], env)  # noqa: S606


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubeiam.devcluster.local_run")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    args = parser.parse_args(argv)
    # Ctrl-C reaches the children too (one process group), and each stops itself; SIGTERM (a
    # supervisor, a test) is handled the same way, and the children are stopped here.
    signal.signal(signal.SIGTERM, _interrupt)
    # Started in the background of a shell without job control, a process inherits SIGINT
    # ignored; Ctrl-C (or a test's SIGINT) must still stop all three.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run(args.state_dir, kubeconfig=os.environ.get("KUBECONFIG"))
    except ControlPlaneError as error:
        print(f"kube-iam: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    raise SystemExit(main())
