"""`make bench` (`python -m bench`): run every scenario, print the table, write the JSON.

BENCH_SCALE (default 1) sizes the run: 0.1 is a quick one of a couple of minutes.
BENCH_PROFILE=1 samples the operator with py-spy during the issuance and burst scenarios and
writes the raw stacks beside the JSON. Only loopback traffic; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from bench import scenarios
from bench.client import Api
from bench.processes import BenchCluster, Operator, admission_only
from bench.report import table
from kubeiam.devcluster.binaries import REPO_ROOT

OUT_DIR = REPO_ROOT / ".local" / "bench"


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


async def _leftovers(api: Api) -> list[str]:
    listed = await api.request("GET", f"/api/v1/namespaces?labelSelector={scenarios.BENCH_LABEL}")
    return [item["metadata"]["name"] for item in listed.get("items") or []]


async def run(sizes: scenarios.Sizes, profile_dir: Path | None) -> dict[str, Any]:
    cluster = BenchCluster.up()
    results: dict[str, Any] = {
        "scale": sizes.scale,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "admission_webhook": "registered and served (an --admission-only process throughout)",
    }
    admission = admission_only(cluster).start()
    operators: list[Operator] = [admission]
    try:
        async with Api.for_state_dir(cluster.state_dir) as api:
            left = await _leftovers(api)
            if left:
                _say(f"deleting {len(left)} namespaces of an earlier run")
                await scenarios.delete_namespaces(api, left)
            _say("floor: issuance by a bare client (no operator running)")
            results["floor_issuance"] = await scenarios.floor_issuance(api, sizes)
            _say("floor: burst of writes by a bare client")
            results["floor_burst"] = await scenarios.floor_burst(api, sizes)
            _say("deleting the floor's namespaces")
            await scenarios.delete_namespaces(
                api,
                [results["floor_issuance"]["namespace"], results["floor_burst"]["namespace"]],
            )
            operator = Operator(cluster, name="bench-operator").start()
            operators.append(operator)
            _say(f"operator running (pid {operator.pid}); issuance, one at a time")
            results["issuance"] = await scenarios.issuance(
                api, sizes, operator, profile=_profile(profile_dir, "issuance")
            )
            _say("burst")
            results["burst"] = await scenarios.burst(
                api, sizes, operator, profile=_profile(profile_dir, "burst")
            )
            _say("expiry")
            results["expiry"] = await scenarios.expiry(
                api, sizes, issue_rate=results["burst"]["per_second"]
            )
            _say(f"steady state: {sizes.steady_accounts} accounts x 5 credentials")
            results["steady"] = await scenarios.settle_many(api, sizes)
            results["steady"]["rss_mb"] = operator.rss_mb()
            results["steady"]["objects"] = await scenarios.count_objects(api)
            _say(f"at rest with the operator ({sizes.rest_window:.0f}s)")
            results["rest_with_operator"] = await scenarios.rest_rate(api, sizes.rest_window)
            operator.stop()
            _say(f"at rest without it ({sizes.rest_window:.0f}s)")
            results["rest_without_operator"] = await scenarios.rest_rate(api, sizes.rest_window)
            _say("restart over everything settled")
            restarted, results["restart"] = await scenarios.restart(api, cluster)
            operators.append(restarted)
            restarted.stop()
    finally:
        for process in reversed(operators):
            process.stop()
    return results


def _profile(profile_dir: Path | None, scenario: str) -> Path | None:
    return None if profile_dir is None else profile_dir / f"profile-{scenario}.txt"


def main() -> int:
    scale = float(os.environ.get("BENCH_SCALE") or 1)
    sizes = scenarios.Sizes(scale=scale)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    profile_dir = None
    if os.environ.get("BENCH_PROFILE"):
        profile_dir = OUT_DIR / stamp
        profile_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results = asyncio.run(run(sizes, profile_dir))
    results["wall_seconds"] = time.monotonic() - started
    text = json.dumps(results, indent=1, sort_keys=True)
    (OUT_DIR / f"{stamp}.json").write_text(text + "\n")
    (OUT_DIR / "latest.json").write_text(text + "\n")
    print()
    print(table(results))
    print()
    print(f"Raw figures: {OUT_DIR / (stamp + '.json')} (and latest.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
