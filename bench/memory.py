"""The memory slope (`make bench BENCH_ONLY=memory_slope`): where the operator's memory per
object goes, by allocation site, and how it grows.

At each size (BENCH_MEMORY_OBJECTS, default 500,2000 kube-iam objects: accounts with 5 settled
credentials each, as the steady scenario makes them) it records, once everything has settled:
the RSS of the process that issued them; then a restart under tracemalloc (a snapshot by line
and by traceback once every object is resumed); then a plain restart (RSS, and RSS after
`malloc_trim(0)`, with no tracing to inflate it), which goes on to issue the next size. The
difference between two sizes, divided by the objects added, is the cost of one object; the
sites printed are where it goes. With BENCH_PROFILE=1 py-spy samples each plain restart
(profile-restart-<objects>.txt beside the snapshots; `python -m bench.profile` reads it).
BENCH_TRACEMALLOC_FRAMES (default 12) is the depth of the tracebacks; 0 skips the traced
restarts (RSS only: quicker at 10,000 objects).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

from bench import scenarios
from bench.client import Api
from bench.processes import BenchCluster, Operator

OBJECTS_PER_ACCOUNT = 1 + scenarios.LIMIT
# What a snapshot counts that is not the operator's: tracemalloc itself and the import system.
IGNORED = (
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    tracemalloc.Filter(False, "<unknown>"),
)


def sizes_from_env() -> list[int]:
    raw = os.environ.get("BENCH_MEMORY_OBJECTS") or "500,2000"
    return sorted(int(n) for n in raw.split(",") if n.strip())


def environment(text: str) -> dict[str, str]:
    """NAME=VALUE,NAME=VALUE as a mapping."""
    pairs = (item.split("=", 1) for item in text.split(",") if item.strip())
    return {name.strip(): value for name, value in pairs}


def _operator(
    cluster: BenchCluster,
    operators: list[Operator],
    name: str,
    snapshot: Path,
    frames: int,
    **env: str,
) -> Operator:
    """Started, and in `operators` first, so that the bench stops it whatever happens."""
    env |= {"BENCH_SNAPSHOT": str(snapshot), "BENCH_TRACEMALLOC_FRAMES": str(frames)}
    operator = Operator(cluster, name=name, module="bench.memtrace", env=env)
    operators.append(operator)
    # Traced, a process starts several times slower.
    return operator.start(timeout=600)


async def facts(operator: Operator, *, within: float = 600) -> dict[str, Any]:
    """Ask the process for its snapshot and RSS (bench/memtrace.py) and wait for them."""
    marker = Path(f"{operator.env['BENCH_SNAPSHOT']}.json")
    _forget(marker)
    os.kill(operator.pid, signal.SIGUSR2)
    deadline = time.monotonic() + within
    while (written := _written(marker)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{operator.name} wrote no memory figures within {within:.0f}s")
        await asyncio.sleep(0.5)
    return written


def _forget(marker: Path) -> None:
    marker.unlink(missing_ok=True)


def _written(marker: Path) -> dict[str, Any] | None:
    """The figures memtrace wrote, once the whole line is there."""
    text = marker.read_text() if marker.exists() else ""
    return dict(json.loads(text)) if text.endswith("\n") else None


async def resumed(operator: Operator, objects: int) -> float:
    """Until the process has resumed every object; seconds since it was spawned."""
    deadline = time.monotonic() + 300 + objects / 10
    while scenarios._resumed(operator) < objects:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{scenarios._resumed(operator)} of {objects} objects resumed")
        await asyncio.sleep(0.2)
    return time.monotonic() - (operator.started_at or time.monotonic())


async def _settle_to(api: Api, objects: int, accounts_so_far: int) -> int:
    """Accounts with 5 credentials each, settled, in a namespace of their own; returns the
    accounts there are now."""
    wanted = max(1, round(objects / OBJECTS_PER_ACCOUNT) - accounts_so_far)
    # settle_many makes Sizes.steady_accounts accounts (2,000 x scale, at least 40).
    sizes = scenarios.Sizes(scale=wanted / 2000)
    await scenarios.settle_many(api, sizes)
    return accounts_so_far + sizes.steady_accounts


async def slope(
    api: Api, cluster: BenchCluster, out: Path, operators: list[Operator]
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before any process
    frames = int(os.environ.get("BENCH_TRACEMALLOC_FRAMES") or 12)
    # Another tree's operator/ (e.g. `git archive main`), restarted beside ours at each size:
    # before and after a change, on the same objects and the same machine at the same time.
    baseline = os.environ.get("BENCH_MEMORY_BASELINE") or ""
    # And its environment, e.g. PYTHONMALLOC=pymalloc: this tree with Python's own allocator.
    baseline_env = environment(os.environ.get("BENCH_MEMORY_BASELINE_ENV") or "")
    points: list[dict[str, Any]] = []
    accounts = 0
    issuer = _operator(cluster, operators, "bench-memory-0", out / "issuer-0", 0)
    for i, wanted in enumerate(sizes_from_env()):
        accounts = await _settle_to(api, wanted, accounts)
        objects = await scenarios.count_objects(api)
        point: dict[str, Any] = {"objects": objects}
        point["issuing_process"] = await facts(issuer)
        issuer.stop()
        if baseline:
            name = f"bench-memory-baseline-{i}"
            env = {"PYTHONPATH": baseline, **baseline_env}
            other = _operator(cluster, operators, name, out / name, 0, **env)
            point["baseline_restart"] = await _restarted(api, other, objects, out, "baseline")
            other.stop()
        issuer = _operator(cluster, operators, f"bench-memory-{i + 1}", out / f"issuer-{i + 1}", 0)
        point["restart"] = await _restarted(api, issuer, objects, out, "restart")
        points.append(point)
        if frames:
            # Last at each size: under tracemalloc a restart is several times slower.
            issuer.stop()
            point.update(await _traced_restart(api, cluster, operators, out, objects, frames, i))
            issuer = _operator(
                cluster, operators, f"bench-memory-{i + 1}b", out / f"issuer-{i}b", 0
            )
    issuer.stop()
    result: dict[str, Any] = {"points": points, "frames": frames}
    if len(points) >= 2 and all("snapshot" in p for p in points):
        result["sites"] = sites(points[0], points[-1])
    return result


async def _restarted(
    api: Api, operator: Operator, objects: int, out: Path, what: str
) -> dict[str, Any]:
    """A process started over `objects` settled: seconds to resume them all, then its RSS."""
    if os.environ.get("BENCH_PROFILE"):
        operator.profile(out / f"profile-{what}-{objects}.txt")
    resumed_s = await resumed(operator, objects)
    operator.stop_profile()
    await scenarios.quiet(api, seconds=5)
    return {"resumed_s": resumed_s, **await facts(operator)}


async def _traced_restart(
    api: Api,
    cluster: BenchCluster,
    operators: list[Operator],
    out: Path,
    objects: int,
    frames: int,
    i: int,
) -> dict[str, Any]:
    """A restart under tracemalloc: its snapshot once every object is resumed. One that does
    not finish in time is recorded as such; the figures before it stand."""
    snapshot = out / f"traced-{objects}.snapshot"
    traced = _operator(cluster, operators, f"bench-memory-traced-{i}", snapshot, frames)
    try:
        resumed_s = await resumed(traced, objects)
        await scenarios.quiet(api, seconds=5)
        figures = await facts(traced)
    except TimeoutError as error:
        return {"traced_error": str(error)}
    finally:
        traced.stop()
    return {"traced_resumed_s": resumed_s, "traced_restart": figures, "snapshot": str(snapshot)}


def _load(point: dict[str, Any]) -> tracemalloc.Snapshot:
    return tracemalloc.Snapshot.load(point["snapshot"]).filter_traces(IGNORED)


def sites(low: dict[str, Any], high: dict[str, Any], *, top: int = 25) -> dict[str, Any]:
    """The allocation sites that grew between two sizes, per object added."""
    added = high["objects"] - low["objects"]
    before, after = _load(low), _load(high)
    by_line = after.compare_to(before, "lineno")
    by_traceback = after.compare_to(before, "traceback")
    return {
        "objects_added": added,
        "by_line": [
            {
                "site": f"{s.traceback[0].filename}:{s.traceback[0].lineno}",
                "bytes_per_object": s.size_diff / added,
                "blocks_per_object": s.count_diff / added,
            }
            for s in by_line[:top]
        ],
        "by_traceback": [
            {
                "bytes_per_object": s.size_diff / added,
                "blocks_per_object": s.count_diff / added,
                "traceback": [f"{f.filename}:{f.lineno}" for f in s.traceback],
            }
            for s in by_traceback[: top // 2]
        ],
    }


def _per_object(low: dict[str, Any], high: dict[str, Any], *keys: str) -> str:
    value_low: Any = low
    value_high: Any = high
    for key in keys:
        value_low, value_high = value_low[key], value_high[key]
    per = (value_high - value_low) * 2**20 / (high["objects"] - low["objects"])
    return f"{value_low:.1f} -> {value_high:.1f} MB, {per / 1024:.1f} KB an object"


def report(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"memory slope: {result['error']}"
    points = result.get("points") or []
    lines = ["Memory slope (objects: RSS of the issuing process / after a restart / trimmed):"]
    for p in points:
        lines.append(
            f"  {p['objects']:6d}: issuing {p['issuing_process']['rss_mb']:.1f} MB"
            f" (trimmed {p['issuing_process']['rss_mb_after_trim']:.1f}),"
            f" restart {p['restart']['rss_mb']:.1f} MB"
            f" (trimmed {p['restart']['rss_mb_after_trim']:.1f}) resumed in"
            f" {p['restart']['resumed_s']:.1f} s"
            + (f"; traced {p['traced_restart']['traced_mb']:.1f} MB" if "snapshot" in p else "")
        )
        if "baseline_restart" in p:
            b = p["baseline_restart"]
            lines.append(
                f"          baseline restart {b['rss_mb']:.1f} MB (trimmed"
                f" {b['rss_mb_after_trim']:.1f}) resumed in {b['resumed_s']:.1f} s"
            )
    if len(points) >= 2:
        low, high = points[0], points[-1]
        lines.append(
            f"  issuing process RSS: {_per_object(low, high, 'issuing_process', 'rss_mb')}"
        )
        lines.append(f"  restart RSS:         {_per_object(low, high, 'restart', 'rss_mb')}")
        if "baseline_restart" in low and "baseline_restart" in high:
            before = _per_object(low, high, "baseline_restart", "rss_mb")
            lines.append(f"  baseline restart:    {before}")
        lines.append(
            f"  restart RSS trimmed: {_per_object(low, high, 'restart', 'rss_mb_after_trim')}"
        )
        if "snapshot" in low and "snapshot" in high:
            traced = _per_object(low, high, "traced_restart", "traced_mb")
            lines.append(f"  traced (Python):     {traced}")
    found = result.get("sites")
    if found:
        lines.append(f"Top sites by line, bytes per object added ({found['objects_added']}):")
        for s in found["by_line"]:
            per, blocks = s["bytes_per_object"], s["blocks_per_object"]
            lines.append(f"  {per:9.0f} B {blocks:6.1f} blocks  {s['site']}")
        lines.append("Top sites by traceback (innermost last):")
        for s in found["by_traceback"]:
            lines.append(f"  {s['bytes_per_object']:9.0f} B {s['blocks_per_object']:6.1f} blocks")
            lines += [f"      {frame}" for frame in s["traceback"]]
    return "\n".join(lines)


def main() -> None:
    """The sites between two snapshots already taken (the JSON's `snapshot` paths):
    python -m bench.memory LOW.snapshot HIGH.snapshot OBJECTS_LOW OBJECTS_HIGH"""
    low_path, high_path, n_low, n_high = sys.argv[1:5]
    low = {"snapshot": low_path, "objects": int(n_low)}
    high = {"snapshot": high_path, "objects": int(n_high)}
    print(report({"sites": sites(low, high)}))


if __name__ == "__main__":
    main()
