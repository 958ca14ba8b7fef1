"""`make bench` (`python -m bench`): run every scenario, print the table, write the JSON.

BENCH_SCALE (default 1) sizes the run: 0.1 is a quick one of a couple of minutes.
BENCH_ONLY=issuance,burst runs only those (and nothing that needs what they skip).
BENCH_PROFILE=1 samples the operator with py-spy during the issuance, burst and restart
scenarios (and the token server during each token scenario) and writes the raw stacks beside
the JSON. The token scenarios (bench/tokens.py, names tokens_*) come last.
Only loopback traffic; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from bench import scenarios, tokens
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
            await _scenarios(api, cluster, sizes, profile_dir, results, operators)
    finally:
        for process in reversed(operators):
            process.stop()
    return results


async def _scenarios(
    api: Api,
    cluster: BenchCluster,
    sizes: scenarios.Sizes,
    profile_dir: Path | None,
    results: dict[str, Any],
    operators: list[Operator],
) -> None:
    """Each scenario in turn; one that fails is recorded with its error and the run goes on
    where it can (the operator's scenarios after the floor's, the restart after the rest)."""

    only = {k for k in os.environ.get("BENCH_ONLY", "").split(",") if k}

    async def step(key: str, what: str, scenario: Coroutine[Any, Any, Any]) -> Any:
        if only and key not in only:
            scenario.close()
            results[key] = {"error": "not run (BENCH_ONLY)"}
            return results[key]
        _say(what)
        retries = api.webhook_retries
        try:
            results[key] = await scenario
        except Exception as error:  # a figure missing beats no figures at all
            results[key] = {"error": f"{type(error).__name__}: {error}"[:500]}
            _say(f"{key} failed: {results[key]['error']}")
        if isinstance(results[key], dict):
            results[key]["webhook_retries"] = api.webhook_retries - retries
        return results[key]

    await step(
        "floor_issuance", "floor: issuance by a bare client", scenarios.floor_issuance(api, sizes)
    )
    await step(
        "floor_burst", "floor: burst of writes by a bare client", scenarios.floor_burst(api, sizes)
    )
    floors = [results[k].get("namespace") for k in ("floor_issuance", "floor_burst")]
    await scenarios.delete_namespaces(api, [n for n in floors if n])
    operator = Operator(cluster, name="bench-operator").start()
    operators.append(operator)
    _say(f"operator running (pid {operator.pid})")
    await step(
        "issuance",
        "issuance, one credential at a time",
        scenarios.issuance(api, sizes, operator, profile=_profile(profile_dir, "issuance")),
    )
    burst = await step(
        "burst",
        "burst",
        scenarios.burst(api, sizes, operator, profile=_profile(profile_dir, "burst")),
    )
    await step(
        "expiry",
        "expiry",
        scenarios.expiry(api, sizes, issue_rate=burst.get("per_second") or 10.0),
    )
    steady = await step(
        "steady",
        f"steady state: {sizes.steady_accounts} accounts x 5 credentials",
        scenarios.settle_many(api, sizes),
    )
    steady["rss_mb"] = operator.rss_mb()
    steady["objects"] = await scenarios.count_objects(api)
    await step(
        "rest_with_operator",
        f"at rest with the operator ({sizes.rest_window:.0f}s)",
        scenarios.rest_rate(api, sizes.rest_window),
    )
    operator.stop()
    await step(
        "rest_without_operator",
        f"at rest without it ({sizes.rest_window:.0f}s)",
        scenarios.rest_rate(api, sizes.rest_window),
    )
    restarted = await step(
        "restart",
        "restart over everything settled",
        scenarios.restart(api, cluster, profile=_profile(profile_dir, "restart")),
    )
    if isinstance(restarted, tuple):
        process, results["restart"] = restarted
        operators.append(process)
    for process in operators[1:]:
        process.stop()  # the token scenarios run an operator of their own
    await tokens.run(
        api,
        cluster,
        sizes.scale,
        step,
        only=only,
        log_dir=cluster.state_dir / "logs" / "tokens",
        out_dir=OUT_DIR,
        profile_dir=profile_dir,
    )


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
    print(tokens.table(results))
    print()
    print(f"Raw figures: {OUT_DIR / (stamp + '.json')} (and latest.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
