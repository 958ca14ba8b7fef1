"""What the token figures are measured with and against: vegeta (the load generator) and Ory
Hydra (the peer), both Go programs built from wrapper modules in tools/bench the way the control
plane is built (kubeiam.devcluster.binaries), and cached by version.

vegeta's results stream goes straight into `vegeta report` through a pipe: the responses (access
tokens) are never written to disk, and only the report's figures come back. Its targets file
holds a client secret while it runs; it is written 0600 in a directory of its own and removed.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.processes import cpu_seconds, rss_mb, spawn
from kubeiam.devcluster.binaries import REPO_ROOT, GoProgram, ensure_program
from kubeiam.devcluster.cluster import free_port, terminate

TOOLS = REPO_ROOT / "tools" / "bench"
VEGETA = GoProgram(
    name="vegeta",
    wrapper=TOOLS / "vegeta",
    module="github.com/tsenart/vegeta/v12",
    package="github.com/tsenart/vegeta/v12",
    kind="bench",
)
# DSN=memory needs SQLite compiled in (../shared/PEERS.md); go-sqlite3 needs cgo.
HYDRA = GoProgram(
    name="hydra",
    wrapper=TOOLS / "hydra",
    module="github.com/ory/hydra/v2",
    package="github.com/ory/hydra/v2",
    kind="bench",
    tags=("sqlite", "sqlite_omit_load_extension"),
    cgo=True,
)

# Hydra's own default secret hasher (spec/config.json of v2.3.0: pbkdf2, 25,000 iterations),
# and the cheapest it accepts (pbkdf2 at its minimum, one iteration).
HYDRA_DEFAULT: dict[str, str] = {}
HYDRA_CHEAPEST = {"OAUTH2_HASHERS_ALGORITHM": "pbkdf2", "OAUTH2_HASHERS_PBKDF2_ITERATIONS": "1"}


@dataclass(frozen=True)
class Target:
    """One request vegeta sends over and over."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = field(default=b"", repr=False)

    def json_line(self) -> str:
        line: dict[str, Any] = {
            "method": self.method,
            "url": self.url,
            "header": {k: [v] for k, v in self.headers.items()},
        }
        if self.body:
            line["body"] = base64.b64encode(self.body).decode()
        return json.dumps(line)


@dataclass(frozen=True)
class Load:
    """How hard: `workers` connections kept alive, each sending as fast as answers come
    (`rate` 0), or `rate` requests a second in all."""

    workers: int
    seconds: float
    rate: float = 0.0


def attack_args(targets: Path | None, load: Load, ca: Path) -> list[str]:
    """vegeta attack's arguments: `targets` a file of one target sent over and over, or None
    for a stream of targets on stdin read one a request (`-lazy`)."""
    rate = f"{load.rate:.0f}/1s" if load.rate else "0"
    source = [f"-targets={targets}"] if targets is not None else ["-targets=stdin", "-lazy"]
    return [
        "attack",
        "-format=json",
        *source,
        f"-duration={load.seconds:.1f}s",
        f"-rate={rate}",
        f"-workers={load.workers}",
        f"-max-workers={load.workers}",
        "-keepalive=true",
        "-http2=false",  # aiohttp speaks HTTP/1.1 only; Hydra is held to the same
        f"-root-certs={ca}",
        "-timeout=30s",
    ]


def summary(
    report: dict[str, Any],
    *,
    loadgen_cpu_s: float,
    server_cpu_s: float,
    generator_cpu_s: float | None = None,
) -> dict[str, Any]:
    """The figures of one vegeta report: successes a second, latencies in ms, what failed."""
    latencies = report.get("latencies") or {}
    duration = (report.get("duration") or 0) / 1e9
    ms = 1e6
    return {
        "per_second": float(report.get("throughput") or 0.0),
        "requests": int(report.get("requests") or 0),
        "success": float(report.get("success") or 0.0),
        "p50_ms": (latencies.get("50th") or 0) / ms,
        "p99_ms": (latencies.get("99th") or 0) / ms,
        "mean_ms": (latencies.get("mean") or 0) / ms,
        "bytes_in_mean": float((report.get("bytes_in") or {}).get("mean") or 0.0),
        "status_codes": report.get("status_codes") or {},
        # vegeta's errors are transport errors and status lines: never a body.
        "errors": list(report.get("errors") or [])[:3],
        "seconds": duration,
        "loadgen_cpu_s": loadgen_cpu_s,
        "loadgen_cores": loadgen_cpu_s / duration if duration else 0.0,
        "server_cores": server_cpu_s / duration if duration else 0.0,
        **(
            {"generator_cores": generator_cpu_s / duration if duration else 0.0}
            if generator_cpu_s is not None
            else {}
        ),
    }


@dataclass
class Vegeta:
    binary: Path
    ca: Path
    workdir: Path

    def attack(
        self,
        target: Target,
        load: Load,
        *,
        server_pids: list[int],
        stream: list[str] | None = None,
    ) -> dict[str, Any]:
        """Run one attack and return its summary, with vegeta's own CPU time and the server's.
        `stream`: a command that, given `--base <the target's file>`, writes targets without end
        (bench.dpop_targets); vegeta then reads them one a request, and the command's CPU time
        is in the summary too."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.workdir) as scratch:
            targets = Path(scratch) / "targets.json"
            descriptor = os.open(targets, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(target.json_line() + "\n")
            server_before = sum(cpu_seconds(pid) for pid in server_pids)
            generator = (
                subprocess.Popen(
                    [*stream, "--base", str(targets)],
                    stdout=subprocess.PIPE,
                    stdin=subprocess.DEVNULL,
                )
                if stream
                else None
            )
            attack = subprocess.Popen(
                [
                    str(self.binary),
                    *attack_args(None if generator else targets, load, self.ca),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=generator.stdout if generator else subprocess.DEVNULL,
            )
            if generator is not None:
                assert generator.stdout is not None
                generator.stdout.close()  # vegeta holds it now
            report = subprocess.Popen(
                [str(self.binary), "report", "-type=json"],
                stdin=attack.stdout,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            assert attack.stdout is not None
            attack.stdout.close()  # the report process holds it now
            out, _ = report.communicate(timeout=load.seconds + 120)
            _, status, usage = os.wait4(attack.pid, 0)
            attack.returncode = os.waitstatus_to_exitcode(status)
            generator_cpu = _stopped_cpu(generator) if generator is not None else None
            server_cpu = sum(cpu_seconds(pid) for pid in server_pids) - server_before
            assert attack.stderr is not None
            errors = attack.stderr.read().decode(errors="replace")
            attack.stderr.close()
        if attack.returncode != 0 or report.returncode != 0:
            raise RuntimeError(f"vegeta attack exited {attack.returncode}: {errors[-300:]}")
        return summary(
            json.loads(out),
            loadgen_cpu_s=usage.ru_utime + usage.ru_stime,
            server_cpu_s=server_cpu,
            generator_cpu_s=generator_cpu,
        )


def _stopped_cpu(process: subprocess.Popen[bytes]) -> float:
    """Stop a target generator whose reader is gone; the CPU seconds it used. Signalled by
    pid, not `terminate()`: that polls first, and a generator that had already exited (its
    pipe closed) would be reaped there, its CPU time lost and wait4 left with no child."""
    os.kill(process.pid, signal.SIGTERM)  # still ours: not reaped until the wait4 below
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


def _context(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def https_json(
    url: str, ca: Path, body: Any = None, *, form: bytes | None = None, headers: Any = None
) -> tuple[int, bytes]:
    """One request with the bench's CA; the status and the raw answer (never logged)."""
    data, sent = None, dict(headers or {})
    if body is not None:
        data, sent["Content-Type"] = json.dumps(body).encode(), "application/json"
    if form is not None:
        data, sent["Content-Type"] = form, "application/x-www-form-urlencoded"
    request = urllib.request.Request(url, data=data, headers=sent)  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(request, timeout=10, context=_context(ca)) as response:  # noqa: S310
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), bytes(error.read())


@dataclass
class Hydra:
    """`hydra serve all` with an in-memory store, JWT access tokens and TLS (the token server's
    certificate), its log at error level only."""

    binary: Path
    name: str
    hasher: dict[str, str]
    cert_dir: Path
    ca: Path
    log_dir: Path
    public_port: int = 0
    admin_port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def issuer(self) -> str:
        return f"https://127.0.0.1:{self.public_port}"

    @property
    def admin(self) -> str:
        return f"https://127.0.0.1:{self.admin_port}"

    def start(self, *, timeout: float = 120) -> Hydra:
        self.public_port, self.admin_port = free_port(), free_port()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", ""),
            "DSN": "memory",
            # Hydra refuses to create clients without one; random, never printed.
            "SECRETS_SYSTEM": secrets.token_hex(24),
            "URLS_SELF_ISSUER": self.issuer,
            "STRATEGIES_ACCESS_TOKEN": "jwt",
            "SERVE_PUBLIC_HOST": "127.0.0.1",
            "SERVE_PUBLIC_PORT": str(self.public_port),
            "SERVE_ADMIN_HOST": "127.0.0.1",
            "SERVE_ADMIN_PORT": str(self.admin_port),
            "SERVE_TLS_ENABLED": "true",
            "SERVE_TLS_CERT_PATH": str(self.cert_dir / "tls.crt"),
            "SERVE_TLS_KEY_PATH": str(self.cert_dir / "tls.key"),
            "LOG_LEVEL": "error",
            **self.hasher,
        }
        self.process = spawn(
            [str(self.binary), "serve", "all", "--dev", "--sqa-opt-out"],
            env,
            self.log_dir / f"{self.name}.log",
        )
        deadline = time.monotonic() + timeout
        try:
            while not self._ready():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} was not ready within {timeout:.0f}s")
                time.sleep(0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
        try:
            status, _ = https_json(f"{self.admin}/health/ready", self.ca)
        except OSError:
            return False
        return status == 200

    def client(self, auth_method: str) -> tuple[str, str]:
        """A new client_credentials client authenticating with `auth_method`: its id, secret."""
        body = {
            "grant_types": ["client_credentials"],
            "token_endpoint_auth_method": auth_method,
            "access_token_strategy": "jwt",
        }
        status, answer = https_json(f"{self.admin}/admin/clients", self.ca, body)
        if status != 201:
            raise RuntimeError(f"{self.name} did not create a client: HTTP {status}")
        created = json.loads(answer)
        return str(created["client_id"]), str(created["client_secret"])

    @property
    def token_url(self) -> str:
        return f"{self.issuer}/oauth2/token"

    @property
    def introspect_url(self) -> str:
        return f"{self.admin}/admin/oauth2/introspect"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/.well-known/jwks.json"

    @property
    def pids(self) -> list[int]:
        assert self.process is not None
        return [self.process.pid]

    def rss_mb(self) -> float:
        assert self.process is not None
        return rss_mb(self.process.pid)

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process, timeout=20)


def tools(log_dir: Path) -> tuple[Path, Path]:
    """vegeta and hydra, built on the first run and cached by version."""
    return ensure_program(VEGETA, log_dir), ensure_program(HYDRA, log_dir)
