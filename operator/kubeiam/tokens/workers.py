"""The token server on every core: a parent process supervising worker processes.

Each worker is a whole token server (its own event loop, cache, watches and usage writer) and
binds the port with SO_REUSEPORT only once it is ready (cache filled, signing keys read), so
the kernel never hands a connection to a worker that would answer 503 beside ready ones. The
workers share one `SharedHolds` table; the parent serves the metrics of them all (prometheus
multiprocess mode), starts a worker again when it dies (at once, then backing off while it keeps
dying young), forwards SIGTERM and SIGINT for a graceful stop, and exits 1 on a crash loop.
Workers run asyncio's own event loop (docs/decisions/0005: uvloop saved nothing measurable).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing
import multiprocessing.context
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from kubeiam.kube import metrics, tls
from kubeiam.settings import Settings, get_settings
from kubeiam.tokens.holds import SharedHolds

logger = logging.getLogger(__name__)

LOG_FORMAT = "[%(asctime)s] %(name)-24s [%(levelname)-8s] %(message)s"
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
# How long the workers get to finish what they serve after SIGTERM (Kubernetes' grace period
# is 30 s by default), before they are killed.
STOP_SECONDS = 20.0


# -- how many --------------------------------------------------------------------------------------


def usable_cpus(affinity: int, cpu_max: Iterable[str]) -> int:
    """CPUs a process may use: its affinity mask's size, capped by every cgroup v2 `cpu.max`
    quota above it (`<quota> <period>` or `max <period>`), rounded up; at least 1."""
    usable = affinity
    for text in cpu_max:
        quota, _, period = text.strip().partition(" ")
        if quota != "max" and period:
            usable = min(usable, math.ceil(int(quota) / int(period)))
    return max(1, usable)


def _cpu_max_files() -> Iterable[str]:
    """The `cpu.max` of this process's cgroup and of each one above it (cgroup v2)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    where = next((line[3:] for line in lines if line.startswith("0::")), None)
    if where is None:
        return []
    root = Path("/sys/fs/cgroup")
    found = []
    path = root / where.lstrip("/")
    while True:
        with contextlib.suppress(OSError):  # a cgroup without the cpu controller
            found.append((path / "cpu.max").read_text())
        if path == root or root not in path.parents:
            return found
        path = path.parent


def worker_count(settings: Settings) -> int:
    if settings.tokens.workers:
        return settings.tokens.workers
    return usable_cpus(len(os.sched_getaffinity(0)), _cpu_max_files())


# -- when to start a dead worker again -------------------------------------------------------------


class Restarts:
    """When to start a dead worker again, or to give up.

    A worker that ran `stable` seconds or more starts again at once. One that dies younger
    counts towards a streak: the first again at once, then after 1, 2, 4, ... seconds (at most
    `longest`); past `limit` in a row, the server gives up (a crash loop: a bad setting, a
    certificate that does not load), so that Kubernetes sees it and backs off itself.
    """

    def __init__(self, *, stable: float = 60.0, limit: int = 6, longest: float = 30.0) -> None:
        self.stable, self.limit, self.longest = stable, limit, longest
        self._streaks: dict[int, int] = {}

    def after_exit(self, slot: int, ran_for: float) -> float | None:
        """Seconds to wait before starting `slot` again; None: give up."""
        streak = 1 if ran_for >= self.stable else self._streaks.get(slot, 0) + 1
        self._streaks[slot] = streak
        if streak > self.limit:
            return None
        return 0.0 if streak == 1 else min(self.longest, 2.0 ** (streak - 2))


# -- the parent ------------------------------------------------------------------------------------


class Supervisor:
    """Starts `count` workers, keeps them running, and stops them on SIGTERM or SIGINT."""

    def __init__(
        self,
        count: int,
        holds: SharedHolds,
        context: multiprocessing.context.SpawnContext,
        *,
        verbose: bool,
        metrics_dir: Path,
        restarts: Restarts | None = None,
        target: Callable[[int, SharedHolds, bool, int], None] | None = None,
    ) -> None:
        self.count = count
        self.holds = holds
        self.context = context
        self.verbose = verbose
        self.metrics_dir = metrics_dir
        self.restarts = restarts or Restarts()
        self.target = target or worker_main
        self.started = 0  # worker processes started, restarts included
        self.code = 0
        self._workers: dict[int, tuple[multiprocessing.process.BaseProcess, float]] = {}
        self._stopping = False
        self._done = asyncio.Event()

    async def run(self, metrics_port: int) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.metrics_dir))  # type: ignore[no-untyped-call]
        await metrics.serve(metrics_port, registry=registry)
        for slot in range(self.count):
            self._start(slot)
        logger.info("Started %d token server workers.", self.count)
        try:
            await self._done.wait()
        finally:
            await metrics.stop()
        return self.code

    def stop(self) -> None:
        """Ask every worker to finish (SIGTERM); kill those still there after STOP_SECONDS."""
        if self._stopping:
            return
        self._stopping = True
        logger.info("Stopping: asking %d token server workers to finish.", len(self._workers))
        for process, _ in self._workers.values():
            process.terminate()
        if not self._workers:
            self._done.set()
            return
        asyncio.get_running_loop().call_later(STOP_SECONDS, self._kill_all)

    def _kill_all(self) -> None:
        for process, _ in self._workers.values():
            logger.warning("Worker pid %s did not stop in %gs: killed.", process.pid, STOP_SECONDS)
            process.kill()

    def _start(self, slot: int) -> None:
        if self._stopping:
            return
        loop = asyncio.get_running_loop()
        process = self.context.Process(
            target=self.target,
            args=(slot, self.holds, self.verbose, os.getpid()),
            name=f"kube-iam-token-worker-{slot}",
            daemon=True,
        )
        process.start()
        self.started += 1
        self._workers[slot] = (process, loop.time())
        loop.add_reader(process.sentinel, self._exited, slot)

    def _exited(self, slot: int) -> None:
        loop = asyncio.get_running_loop()
        process, started = self._workers.pop(slot)
        loop.remove_reader(process.sentinel)
        process.join()
        assert process.pid is not None  # started
        mark_process_dead(process.pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]
        if self.holds.recover(process.pid):
            logger.warning("Worker pid %s died holding the holds table's lock.", process.pid)
        if self._stopping:
            if not self._workers:
                self._done.set()
            return
        delay = self.restarts.after_exit(slot, loop.time() - started)
        if delay is None:
            logger.error(
                "Token server worker %d keeps dying (last exit code %s): stopping the server.",
                slot,
                process.exitcode,
            )
            self.code = 1
            self.stop()
            return
        logger.warning(
            "Token server worker %d (pid %s) exited with code %s; starting it again in %gs.",
            slot,
            process.pid,
            process.exitcode,
            delay,
        )
        loop.call_later(delay, self._start, slot)


def check_certificate(settings: Settings) -> None:
    """Stop with the setting's name when the serving certificate's files are not there."""
    missing = tls.missing_files(settings.tokens.cert_dir)
    if missing:
        raise SystemExit(
            f"kube-iam token-server: no serving certificate at {', '.join(missing)} "
            "(KUBEIAM_TOKEN_CERT_DIR)"
        )


def run(settings: Settings, *, verbose: bool) -> int:
    """`kube-iam token-server`: supervise the workers until SIGTERM or SIGINT; the exit code."""
    check_certificate(settings)  # a missing certificate stops here, not in a crash loop
    count = worker_count(settings)
    context = multiprocessing.get_context("spawn")
    holds = SharedHolds(settings.tokens.holds_capacity, context)
    given = os.environ.get(MULTIPROC_DIR)
    metrics_dir = Path(given) if given else Path(tempfile.mkdtemp(prefix="kube-iam-metrics-"))
    for stale in metrics_dir.glob("*.db"):  # a previous run's samples are not this one's
        stale.unlink()
    os.environ[MULTIPROC_DIR] = str(metrics_dir)  # the workers' prometheus_client reads it
    supervisor = Supervisor(count, holds, context, verbose=verbose, metrics_dir=metrics_dir)
    try:
        return asyncio.run(supervisor.run(settings.observability.metrics_port))
    finally:
        if not given:
            shutil.rmtree(metrics_dir, ignore_errors=True)


# -- a worker --------------------------------------------------------------------------------------


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)
    # urllib3 would log the API server's URLs at DEBUG; nothing of ours needs it.
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def worker_main(slot: int, holds: SharedHolds, verbose: bool, parent: int) -> None:
    """A worker process: one token server until SIGTERM, SIGINT or its parent's death."""
    import aiohttp.web

    from kubeiam.tokens.server import serve

    configure_logging(verbose)
    logging.getLogger(__name__).debug("Token server worker %d starting.", slot)
    with contextlib.suppress(aiohttp.web.GracefulExit, KeyboardInterrupt):
        asyncio.run(serve(get_settings(), holds, parent=parent))
