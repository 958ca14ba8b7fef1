"""The bench's control plane and operator processes, started the way the test suite starts them.

Its own control plane in `.local/bench-cluster` (the tests use `.local/test-cluster`, `make run`
`.local`), deploy/ installed, and every operator process acting as deploy/'s ServiceAccount with
its ConfigMap's settings. As in deploy/, a webhook-only process (`kube-iam run
--admission-only`) serves the admission webhook the API server calls on loopback, and the
operator serves none; the floor's writes pass the same webhook as the operator's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from kubeiam.devcluster import install
from kubeiam.devcluster.binaries import REPO_ROOT
from kubeiam.devcluster.cluster import LocalCluster, free_port, terminate
from kubeiam.devcluster.webhook import LocalWebhook

STATE_DIR = REPO_ROOT / ".local" / "bench-cluster"
PY_SPY = Path(sys.executable).parent / "py-spy"


@dataclass
class BenchCluster:
    """The bench's local control plane, with deploy/ installed and the webhook registered."""

    local: LocalCluster
    operator_kubeconfig: Path
    operator_env: dict[str, str]
    webhook: LocalWebhook

    @classmethod
    def up(cls, state_dir: Path = STATE_DIR) -> BenchCluster:
        local = LocalCluster(state_dir)
        local.up(announce=True)
        webhook = local.webhook
        if webhook is None:
            raise RuntimeError(f"{state_dir} records no local webhook")
        # No kubelet runs here: the Deployment is accepted and its pods never start.
        install.install(local.kubectl, workload=True, local_webhook=webhook)
        kubeconfig = install.operator_kubeconfig(local.kubectl, state_dir / "operator.kubeconfig")
        env = {**install.settings_env(local.kubectl), **webhook.env()}
        return cls(local=local, operator_kubeconfig=kubeconfig, operator_env=env, webhook=webhook)

    @property
    def state_dir(self) -> Path:
        return self.local.state_dir


@dataclass
class Operator:
    """`kube-iam run` as deploy/ runs it (peering on, its start time as priority), in a process."""

    cluster: BenchCluster
    name: str
    args: tuple[str, ...] = ()
    # The module run in place of kubeiam.cli (bench/memtrace.py wraps it), and its environment.
    module: str = "kubeiam.cli"
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    started_at: float = 0.0
    metrics_port: int = 0
    _profiler: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, *, timeout: float = 120) -> Operator:
        health_port = free_port()
        self.metrics_port = free_port()
        self.log_path = self.cluster.state_dir / "logs" / "operators" / f"{self.name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.write_bytes(b"")
        env = {
            **os.environ,
            **self.cluster.operator_env,
            "KUBEIAM_METRICS_PORT": str(self.metrics_port),
            "KUBECONFIG": str(self.cluster.operator_kubeconfig),
            **self.env,
        }
        if "--admission-only" not in self.args:
            # As in deploy/: admission is the webhook process's, never the reconciling one's.
            env["KUBEIAM_WEBHOOK_PORT"] = "0"
        args = self.args or ("--priority", str(time.time_ns()))
        health = f"http://127.0.0.1:{health_port}/healthz"
        self.started_at = time.monotonic()
        self.process = spawn(
            [sys.executable, "-m", self.module, "run", "--liveness", health, *args],
            env,
            self.log_path,
        )
        deadline = time.monotonic() + timeout
        while not self._healthy(health):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start within {timeout:.0f}s")
            time.sleep(0.05)
        return self

    def _healthy(self, url: str) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.process.returncode}: {self.log_path}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def log_lines(self) -> list[str]:
        assert self.log_path is not None
        return self.log_path.read_text(errors="replace").splitlines()

    def profile(self, output: Path) -> None:
        """Sample the running process with py-spy until `stop_profile` (raw folded stacks)."""
        self._profiler = start_profile(self.pid, output)

    def stop_profile(self) -> None:
        stop_profile(self._profiler)
        self._profiler = None

    def stop(self, *, timeout: float = 60) -> None:
        self.stop_profile()
        if self.process is not None:
            terminate(self.process, timeout=timeout)


def spawn(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """A process of the bench's, its output appended to `log_path`, no input."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )


def rss_mb(pid: int) -> float:
    """A process's resident set (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pss_mb(pid: int) -> float:
    """A process's proportional set (Pss: each shared page divided among the processes that map
    it), in MiB: what summing it over several processes adds up to without counting twice."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far, user and system."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def start_profile(pid: int, output: Path) -> subprocess.Popen[bytes] | None:
    """Sample a running process with py-spy until `stop_profile` (raw folded stacks)."""
    if not PY_SPY.exists():
        return None
    return subprocess.Popen(
        [
            str(PY_SPY),
            "record",
            "--pid",
            str(pid),
            "--subprocesses",
            "--format",
            "raw",
            "--rate",
            "100",
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_profile(profiler: subprocess.Popen[bytes] | None) -> None:
    if profiler is None:
        return
    terminate(profiler, timeout=60, signum=signal.SIGINT)


def admission_only(cluster: BenchCluster) -> Operator:
    """The webhook alone, as deploy/'s webhook container: it serves every admission call."""
    return Operator(cluster, name="admission", args=("--admission-only",))
