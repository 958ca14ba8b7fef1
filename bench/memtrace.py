"""`kube-iam` under tracemalloc, for the bench's memory slope (`BENCH_ONLY=memory_slope`).

Run as `python -m bench.memtrace run ...` in place of `python -m kubeiam.cli run ...`, with
BENCH_TRACEMALLOC_FRAMES frames traced from after the imports (0: not traced, RSS only). On
SIGUSR2 it collects garbage, writes a tracemalloc snapshot to BENCH_SNAPSHOT (when traced), then a
line of JSON to BENCH_SNAPSHOT + ".json" with the RSS before and after `malloc_trim(0)` (what the
allocator held that no Python object uses). Nothing of kube-iam changes; the snapshot holds
allocation sites and sizes, never the memory's contents.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import os
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType

import kubeiam.runtime  # noqa: F401 - imported before tracing starts: imports are not per object
from kubeiam.cli import main as kube_iam


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def malloc_trim() -> bool:
    """glibc's malloc_trim(0): returns free heap memory to the OS; False where there is none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "malloc_trim"):
        return False
    return bool(libc.malloc_trim(0))


def dump(path: Path) -> None:
    gc.collect()
    rss = rss_mb()
    traced, peak = tracemalloc.get_traced_memory()
    if tracemalloc.is_tracing():
        snapshot = tracemalloc.take_snapshot()
        snapshot.dump(str(path))
        del snapshot
        gc.collect()
    trimmed = malloc_trim()
    facts = {
        "rss_mb": rss,
        "traced_mb": traced / 2**20,
        "traced_peak_mb": peak / 2**20,
        "trimmed": trimmed,
        "rss_mb_after_trim": rss_mb(),
        "tracemalloc_overhead_mb": tracemalloc.get_tracemalloc_memory() / 2**20,
    }
    Path(f"{path}.json").write_text(json.dumps(facts) + "\n")


def main() -> int:
    frames = int(os.environ.get("BENCH_TRACEMALLOC_FRAMES") or 0)
    if frames:
        tracemalloc.start(frames)
    path = Path(os.environ["BENCH_SNAPSHOT"])

    def on_signal(signum: int, frame: FrameType | None) -> None:
        dump(path)

    signal.signal(signal.SIGUSR2, on_signal)
    return kube_iam(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
