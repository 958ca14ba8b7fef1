"""Start, find and stop one local control plane: etcd, kube-apiserver, kube-controller-manager."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kubeiam.api.crdgen import crd_documents
from kubeiam.devcluster import webhook
from kubeiam.devcluster.binaries import REPO_ROOT, ensure_binaries, pinned_versions
from kubeiam.devcluster.certs import ControlPlanePKI, KeyPair, create_pki, issue_certificate
from kubeiam.devcluster.errors import ControlPlaneError
from kubeiam.devcluster.kubeconfig import write_kubeconfig
from kubeiam.devcluster.kubectl import Kubectl
from kubeiam.devcluster.token_authn import TokenIssuer, authentication_config

DEFAULT_STATE_DIR = REPO_ROOT / ".local"
CRDS_DIR = REPO_ROOT / "crds"
# deploy/'s ClusterRoles for people: namespace editors and admins may then use kube-iam's kinds,
# so `kubectl --as` tries the admission rules as a team's members would meet them.
USER_ROLES = REPO_ROOT / "deploy" / "user-roles.yaml"
# The operator's namespace, where it keeps its proof key (KUBEIAM_OPERATOR_NAMESPACE).
OPERATOR_NAMESPACE = REPO_ROOT / "deploy" / "namespace.yaml"
# restart_apiserver's record of when the API server was down or starting, one line each.
OUTAGES_LOG = "apiserver-outages.log"
_START_TIMEOUT = 120.0
_STOP_TIMEOUT = 15.0


@dataclass
class ProcessRecord:
    """One process this module started: enough to find it again and to know it is ours."""

    name: str
    pid: int
    binary: str
    # What it was started with, to start it again in place; empty in the state of a cluster
    # started before the arguments were recorded.
    args: list[str] = field(default_factory=list)


@dataclass
class ClusterState:
    """What `up` records in <state dir>/cluster.json so later calls find the running cluster."""

    kubernetes_version: str
    etcd_version: str
    apiserver_url: str
    etcd_url: str
    processes: list[ProcessRecord] = field(default_factory=list)
    # Where the API server expects kube-iam's token server (as a JWT issuer); None in the state
    # of a cluster started before it was configured.
    token_issuer: dict[str, str | int] | None = None


def _free_ports(count: int) -> list[int]:
    # Hold every socket until all are chosen so the same port is never handed out twice.
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    """A loopback port free now, for a process of the tests or the bench to listen on."""
    return _free_ports(1)[0]


def terminate(
    process: subprocess.Popen[Any], *, timeout: float, signum: int = signal.SIGTERM
) -> None:
    """Stop a child as its supervisor would: SIGTERM (or `signum`), then SIGKILL if it outlives
    `timeout`."""
    if process.poll() is not None:
        return
    process.send_signal(signum)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _is_our_process(record: ProcessRecord) -> bool:
    """True if the pid is alive and still runs the binary we started (pids get reused)."""
    try:
        cmdline = Path(f"/proc/{record.pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return bool(cmdline) and cmdline[0].decode(errors="replace") == record.binary


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log written)"


class LocalCluster:
    """A control plane whose files (state, certificates, data, logs) live in one directory."""

    def __init__(self, state_dir: Path = DEFAULT_STATE_DIR) -> None:
        self.state_dir = state_dir
        self.kubeconfig = state_dir / "kubeconfig"
        self.log_dir = state_dir / "logs"
        self.kubectl_path = state_dir / "bin" / "kubectl"
        self._state_file = state_dir / "cluster.json"
        self._pki_dir = state_dir / "pki"
        self._etcd_dir = state_dir / "etcd"
        self._authn_config = state_dir / "authentication-config.json"

    # -- reading the recorded state ------------------------------------------------------------

    def _load_state(self) -> ClusterState | None:
        try:
            raw = json.loads(self._state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        processes = [ProcessRecord(**record) for record in raw.pop("processes", [])]
        return ClusterState(**raw, processes=processes)

    @property
    def token_issuer(self) -> TokenIssuer | None:
        """Where the API server expects kube-iam's token server: start it there (port, issuer
        URL, certificate) and the API server accepts its tokens. None without a cluster, or for
        one started before this was configured."""
        state = self._load_state()
        if state is None or state.token_issuer is None:
            return None
        return TokenIssuer(**state.token_issuer)  # type: ignore[arg-type]

    def _save_state(self, state: ClusterState) -> None:
        # Written whole and renamed over the old file: a reader (another `make` target, a test
        # session) never sees half a file, which would read as "no cluster" and be torn down.
        partial = self._state_file.with_name(f".{self._state_file.name}.{os.getpid()}")
        partial.write_text(json.dumps(asdict(state), indent=2) + "\n")
        os.replace(partial, self._state_file)

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self._pki_dir / "ca.crt"))
        context.load_cert_chain(str(self._pki_dir / "admin.crt"), str(self._pki_dir / "admin.key"))
        return context

    def _ready(self, apiserver_url: str) -> bool:
        try:
            with urllib.request.urlopen(  # noqa: S310 - the URL is ours, https on loopback
                f"{apiserver_url}/readyz", context=self._ssl_context(), timeout=5
            ) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError, ssl.SSLError):
            return False

    def pids(self) -> dict[str, int]:
        """The pid of each recorded process, by name, for tests that check what a restart
        replaced; fails unless every one still runs."""
        state = self._load_state()
        if state is None or not state.processes:
            raise ControlPlaneError(f"No control plane is recorded in {self.state_dir}.")
        gone = [record.name for record in state.processes if not _is_our_process(record)]
        if gone:
            raise ControlPlaneError(f"{', '.join(gone)} of {self.state_dir} no longer run.")
        return {record.name: record.pid for record in state.processes}

    def is_running(self) -> bool:
        state = self._load_state()
        if state is None or not state.processes:
            return False
        if not all(_is_our_process(record) for record in state.processes):
            return False
        return self._ready(state.apiserver_url)

    # -- starting --------------------------------------------------------------------------------

    def up(self, *, install_crds: bool = True, announce: bool = True) -> Path:
        """Start the control plane unless it already runs; return the admin kubeconfig's path."""
        if self.is_running():
            if install_crds:
                self.install_crds()
            self._register_webhook()
            return self.kubeconfig
        # Anything half-started by an earlier, interrupted call is ours to clear away first.
        self.down(quiet=True)
        versions = pinned_versions()
        binaries = ensure_binaries(self.log_dir, announce=announce)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "bin").mkdir(exist_ok=True)
        self.kubectl_path.unlink(missing_ok=True)
        self.kubectl_path.symlink_to(binaries / "kubectl")

        pki = create_pki(self._pki_dir)
        etcd_port, etcd_peer_port, apiserver_port, issuer_port = _free_ports(4)
        token_issuer = self._prepare_token_issuer(pki, issuer_port)
        state = ClusterState(
            kubernetes_version=versions.kubernetes,
            etcd_version=versions.etcd,
            apiserver_url=f"https://127.0.0.1:{apiserver_port}",
            etcd_url=f"http://127.0.0.1:{etcd_port}",
            token_issuer=asdict(token_issuer),
        )
        write_kubeconfig(self.kubeconfig, state.apiserver_url, pki.ca.cert, pki.admin, "admin")
        kcm_kubeconfig = self._pki_dir / "controller-manager.kubeconfig"
        write_kubeconfig(
            kcm_kubeconfig,
            state.apiserver_url,
            pki.ca.cert,
            pki.controller_manager,
            "kube-controller-manager",
        )
        try:
            etcd = self._start(state, binaries / "etcd", self._etcd_args(etcd_port, etcd_peer_port))
            self._wait(
                "etcd", etcd, lambda: self._etcd_healthy(state.etcd_url), self.log_dir / "etcd.log"
            )
            apiserver = self._start(
                state,
                binaries / "kube-apiserver",
                self._apiserver_args(pki, apiserver_port, state.etcd_url),
            )
            self._wait(
                "kube-apiserver",
                apiserver,
                lambda: self._ready(state.apiserver_url),
                self.log_dir / "kube-apiserver.log",
            )
            self._start(
                state, binaries / "kube-controller-manager", self._kcm_args(pki, kcm_kubeconfig)
            )
            if install_crds:
                self.install_crds()
            webhook.prepare(self.state_dir, pki.ca)
            self._register_webhook()
        except BaseException:
            self.down(quiet=True)
            raise
        return self.kubeconfig

    def _prepare_token_issuer(self, pki: ControlPlanePKI, port: int) -> TokenIssuer:
        """Choose where kube-iam's token server will listen, give it a serving certificate from
        the cluster's CA, and write the API server's AuthenticationConfiguration naming it. No
        token server needs to run: the API server retries the issuer's discovery in the
        background, and until it answers only JWTs fail (certificates and ServiceAccount
        tokens authenticate as before)."""
        cert_dir = self._pki_dir / "token-issuer"
        cert_dir.mkdir(parents=True, exist_ok=True)
        issue_certificate(
            pki.ca,
            KeyPair(cert_dir / "tls.crt", cert_dir / "tls.key"),
            "kube-iam token server",
            server_names=("localhost",),
            server_ips=("127.0.0.1",),
        )
        url = f"https://127.0.0.1:{port}"
        issuer = TokenIssuer(
            url=url,
            port=port,
            audience=url + "/kubernetes",
            cert_dir=str(cert_dir),
            ca_file=str(pki.ca.cert),
        )
        document = authentication_config(issuer.url, issuer.audience, pki.ca.cert.read_text())
        self._authn_config.write_text(json.dumps(document, indent=2) + "\n")
        return issuer

    def _start(self, state: ClusterState, binary: Path, args: list[str]) -> subprocess.Popen[bytes]:
        name = binary.name
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            # A new session keeps the process alive after `make cluster-up` returns and keeps
            # Ctrl-C in the caller's terminal from reaching it.
            process = subprocess.Popen(
                [str(binary), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        state.processes.append(
            ProcessRecord(name=name, pid=process.pid, binary=str(binary), args=list(args))
        )
        self._save_state(state)
        return process

    def _wait(
        self, name: str, process: subprocess.Popen[bytes], ready: Callable[[], bool], log: Path
    ) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = _log_tail(log)
                hint = ""
                if "address already in use" in tail:
                    hint = " A port it was given is already in use by another process; run again."
                raise ControlPlaneError(
                    f"{name} exited with code {process.returncode} while starting.{hint} "
                    f"Log: {log}\n{tail}"
                )
            if ready():
                return
            time.sleep(0.25)
        raise ControlPlaneError(
            f"{name} did not become ready within {_START_TIMEOUT:.0f}s. Log: {log}\n"
            f"{_log_tail(log)}"
        )

    def _etcd_healthy(self, etcd_url: str) -> bool:
        try:
            with urllib.request.urlopen(f"{etcd_url}/health", timeout=2) as response:  # noqa: S310
                return bool(json.loads(response.read()).get("health") == "true")
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def _etcd_args(self, client_port: int, peer_port: int) -> list[str]:
        client = f"http://127.0.0.1:{client_port}"
        peer = f"http://127.0.0.1:{peer_port}"
        return [
            "--name=kube-iam",
            f"--data-dir={self._etcd_dir}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=kube-iam={peer}",
            # A throw-away development store: durability on power loss is not worth the fsyncs.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]

    def _apiserver_args(self, pki: ControlPlanePKI, port: int, etcd_url: str) -> list[str]:
        return [
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            f"--tls-cert-file={pki.apiserver.cert}",
            f"--tls-private-key-file={pki.apiserver.key}",
            f"--client-ca-file={pki.ca.cert}",
            # kube-iam's token server as a JWT issuer (see _prepare_token_issuer).
            f"--authentication-config={self._authn_config}",
            # As a production cluster authorizes: RBAC decides for every identity except
            # kubelets, so a ServiceAccount holds only what its bindings grant; the admin
            # kubeconfig's client certificate is in system:masters and bypasses both.
            "--authorization-mode=Node,RBAC",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.service_account_pub}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            "--allow-privileged=true",
            # No kubelets run, so there is nothing to be gained from the Lease-based reconciler.
            "--endpoint-reconciler-type=none",
            "--v=1",
        ]

    def _kcm_args(self, pki: ControlPlanePKI, kubeconfig: Path) -> list[str]:
        return [
            f"--kubeconfig={kubeconfig}",
            f"--root-ca-file={pki.ca.cert}",
            f"--service-account-private-key-file={pki.service_account_key}",
            "--use-service-account-credentials=true",
            # Lets tests mint extra client identities through CertificateSigningRequests.
            f"--cluster-signing-cert-file={pki.ca.cert}",
            f"--cluster-signing-key-file={pki.ca.key}",
            "--leader-elect=false",
            "--secure-port=0",
            "--v=1",
        ]

    # -- CRDs ------------------------------------------------------------------------------------

    @property
    def kubectl(self) -> Kubectl:
        """The cluster's kubectl, with the admin kubeconfig."""
        return Kubectl(self.kubectl_path, self.kubeconfig)

    @property
    def webhook(self) -> webhook.LocalWebhook | None:
        """Where local operator processes serve the admission webhook the cluster calls."""
        return webhook.load(self.state_dir)

    def _register_webhook(self) -> None:
        local = webhook.load(self.state_dir)
        if local is None:  # a cluster started before the webhook existed
            ca = KeyPair(self._pki_dir / "ca.crt", self._pki_dir / "ca.key")
            local = webhook.prepare(self.state_dir, ca)
        webhook.register(self.kubectl, local)

    def install_crds(self) -> None:
        """Apply crds/ and wait until the API server serves every kind; apply deploy/'s roles
        for people, aggregated into view, edit and admin, and the operator's namespace."""
        apply_crds(self.kubectl)
        self.kubectl("apply", f"--filename={USER_ROLES}", f"--filename={OPERATOR_NAMESPACE}")

    # -- restarting ------------------------------------------------------------------------------

    def restart_apiserver(self) -> None:
        """Stop the running kube-apiserver and start it again in place, for fault tests: the
        same binary, port, arguments, certificates and etcd, so every client, the
        controller-manager and the webhook registration carry on against the same URL."""
        state = self._load_state()
        record = next(
            (r for r in (state.processes if state else []) if r.name == "kube-apiserver"), None
        )
        if state is None or record is None or not _is_our_process(record):
            raise ControlPlaneError(f"No kube-apiserver of ours runs in {self.state_dir}.")
        if not record.args:
            raise ControlPlaneError(
                f"The kube-apiserver of {self.state_dir} was started before its arguments were"
                " recorded, so it cannot be started again in place; stop the control plane"
                " (make cluster-down) and start it again."
            )
        stopped_at = time.time()
        self._stop(record, quiet=True)
        state.processes.remove(record)
        process = self._start(state, Path(record.binary), record.args)
        self._wait(
            "kube-apiserver",
            process,
            lambda: self._ready(state.apiserver_url),
            self.log_dir / "kube-apiserver.log",
        )
        # Ready is not enough: custom resources' storage may still answer 404 or 429 a while.
        wait_until_kinds_served(self.kubectl)
        # While it starts, the API server answers 403 to everyone until its RBAC caches fill:
        # the outage is recorded, so a scan of clients' logs can tell that from a missing rule.
        with (self.log_dir / OUTAGES_LOG).open("a") as outages:
            outages.write(f"{stopped_at:.3f} {time.time():.3f}\n")

    def apiserver_outages(self) -> list[tuple[float, float]]:
        """When restart_apiserver had the API server down or starting (epoch seconds)."""
        try:
            lines = (self.log_dir / OUTAGES_LOG).read_text().splitlines()
        except FileNotFoundError:
            return []
        return [(float(a), float(b)) for a, b in (line.split() for line in lines if line)]

    # -- stopping --------------------------------------------------------------------------------

    def down(self, *, quiet: bool = False) -> None:
        """Stop every process `up` started, newest first, and discard the cluster's data."""
        state = self._load_state()
        for record in reversed(state.processes if state else []):
            self._stop(record, quiet=quiet)
        self._state_file.unlink(missing_ok=True)
        self._authn_config.unlink(missing_ok=True)
        for written in ("webhook.json", "webhook.env"):
            (self.state_dir / written).unlink(missing_ok=True)
        for directory in (self._etcd_dir, self._pki_dir, self.state_dir / ".kube-cache"):
            shutil.rmtree(directory, ignore_errors=True)
        self.kubeconfig.unlink(missing_ok=True)

    def _stop(self, record: ProcessRecord, *, quiet: bool) -> None:
        if not _is_our_process(record):
            self._reap(record.pid)  # it may have died a zombie, whose cmdline is empty
            return
        os.kill(record.pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_TIMEOUT
        while time.monotonic() < deadline and _is_our_process(record):
            time.sleep(0.1)
            self._reap(record.pid)
        if _is_our_process(record):
            os.kill(record.pid, signal.SIGKILL)
            while _is_our_process(record):
                time.sleep(0.05)
                self._reap(record.pid)
        # The loops end once it no longer looks like ours, which a zombie does not: reap it.
        self._reap(record.pid)
        if not quiet:
            print(f"Stopped {record.name} (pid {record.pid}).", flush=True)

    @staticmethod
    def _reap(pid: int) -> None:
        # When the process is our own child (tests start the cluster in-process), collect it so
        # it does not linger as a zombie that still looks alive in /proc.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def apply_crds(kubectl: Kubectl) -> None:
    """Apply crds/ server-side and wait until the API server serves and explains every kind."""
    kubectl("apply", "--server-side", "--force-conflicts", f"--filename={CRDS_DIR}")
    kubectl("wait", "--for=condition=Established", "--timeout=60s", f"--filename={CRDS_DIR}")
    wait_until_kinds_served(kubectl)


def wait_until_kinds_served(kubectl: Kubectl) -> None:
    """Wait until the API server explains and lists every kind of crds/."""
    # Established means served; the OpenAPI document `kubectl explain` reads follows shortly.
    for crd in crd_documents():
        group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
        version = crd["spec"]["versions"][0]["name"]
        deadline = time.monotonic() + 60
        # Listing as well: right after a CRD is established its storage may still answer 429.
        while (
            kubectl("explain", plural, f"--api-version={group}/{version}", check=False).returncode
            or kubectl("get", f"{plural}.{group}", "--all-namespaces", check=False).returncode
        ):
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"The API server does not serve {plural} after 60s.")
            time.sleep(0.5)
