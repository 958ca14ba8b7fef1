"""The table `make bench` prints: each figure beside its floor, as a ratio, and the goal."""

from __future__ import annotations

from typing import Any


def _ratio(ours: float, floor: float) -> str:
    return f"{ours / floor:.2f}x" if floor else "-"


def _ms(value: float) -> str:
    return f"{value * 1000:.0f} ms"


Row = tuple[str, str, str, str, str]


def _failed(r: dict[str, Any], keys: tuple[str, ...]) -> list[Row]:
    errors = [
        f"{k}: {r[k]['error']}" for k in keys if isinstance(r.get(k), dict) and "error" in r[k]
    ]
    missing = [k for k in keys if k not in r]
    return [
        (f"({'; '.join(errors + [m + ': not run' for m in missing])[:160]})", "-", "-", "-", "")
    ]


def table(r: dict[str, Any]) -> str:
    rows: list[Row] = []
    for keys, section in (
        (("issuance", "floor_issuance"), _issuance),
        (("burst", "floor_burst"), _burst),
        (("issuance", "burst"), _writes),
        (("steady", "restart", "rest_with_operator", "rest_without_operator"), _steady),
        (("expiry",), _expiry),
    ):
        try:
            rows += section(r)
        except (KeyError, TypeError, ValueError):
            rows += _failed(r, keys)
    return _render(r, rows)


def _issuance(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    issue, floor_issue = r["issuance"]["latency_s"], r["floor_issuance"]["latency_s"]
    n = int(issue["n"])
    for p in ("p50", "p90", "p99"):
        rows.append(
            (
                f"Issuance latency {p} ({n}, one at a time)",
                _ms(issue[p]),
                _ms(floor_issue[p]),
                _ratio(issue[p], floor_issue[p]),
                "<= 1.5x floor" if p == "p50" else "",
            )
        )
    return rows


def _burst(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    burst, floor_burst = r["burst"], r["floor_burst"]
    rows.append(
        (
            f"Burst: {burst['n']} credentials / {burst['n'] // 5} accounts, to right state",
            f"{burst['per_second']:.1f}/s ({burst['seconds']:.1f} s)",
            f"{floor_burst['per_second']:.1f}/s ({floor_burst['seconds']:.1f} s)",
            _ratio(burst["per_second"], floor_burst["per_second"]),
            ">= 0.6x floor",
        )
    )
    rows.append(
        (
            "  bench client: creates alone, its CPU",
            f"{burst['n'] / burst['creates_seconds']:.0f}/s, {burst['bench_client_cpu_s']:.1f} s",
            f"CPU {floor_burst['bench_client_cpu_s']:.1f} s",
            "",
            "not the bottleneck",
        )
    )
    return rows


def _writes(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for label, key in (("issuance", "issuance"), ("burst", "burst")):
        rows.append(
            (
                f"API writes per issuance ({label}; kube-iam kinds + Secrets)",
                f"{r[key]['object_writes_per_issuance']:.2f}",
                "3 (Secret, 2 statuses)",
                _ratio(r[key]["object_writes_per_issuance"], 3),
                "<= 3",
            )
        )
        rows.append(
            (
                f"  and Events per issuance ({label})",
                f"{r[key]['event_writes_per_issuance']:.2f}",
                "0",
                "",
                "",
            )
        )
    return rows


def _steady(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    steady, rest_on, rest_off = r["steady"], r["rest_with_operator"], r["rest_without_operator"]
    rows.append(
        (
            f"Operator RSS, {steady['objects']} objects settled",
            f"{steady['rss_mb']:.0f} MB",
            "",
            "",
            "< 150 MB",
        )
    )
    restart = r["restart"]
    rows.append(
        (
            f"Restart: start to all {restart['objects']} resumed",
            f"{restart['resumed_s']:.1f} s",
            f"healthy {restart['healthy_s']:.1f} s",
            "",
            "",
        )
    )
    rows.append(
        (
            "  RSS after the restart",
            f"{restart['rss_mb_after_resume']:.0f} MB",
            "",
            "",
            "< 150 MB",
        )
    )
    all_writes = sum(restart["writes"].values())
    rows.append(
        (
            "  writes at startup (kube-iam kinds + Secrets; all)",
            f"{restart['kube_iam_writes']} ({all_writes} all)",
            "0",
            "",
            "0",
        )
    )
    rows.append(
        (
            f"API requests/min at rest ({rest_on['window_s']:.0f} s windows)",
            f"{rest_on['requests_per_min']:.0f}",
            f"{rest_off['requests_per_min']:.0f} without operator",
            _ratio(rest_on["requests_per_min"], rest_off["requests_per_min"]),
            "",
        )
    )
    return rows


def _expiry(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    expiry = r["expiry"]
    late = expiry["lateness_s"]
    rows.append(
        (
            f"Expiry lateness p50 / p99 ({expiry['n']} within {expiry['spread_s']:.0f} s)",
            f"{late['p50']:.2f} s / {late['p99']:.2f} s",
            "",
            "",
            "p99 < 2 s",
        )
    )
    return rows


def _render(r: dict[str, Any], rows: list[Row]) -> str:
    header = ("Figure", "kube-iam", "Floor (bare client)", "Ratio", "Goal")
    widths = [max(len(row[i]) for row in (*rows, header)) for i in range(5)]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in rows]
    out.append("")
    retries = sum(v.get("webhook_retries", 0) for v in r.values() if isinstance(v, dict))
    out.append(
        f"Scale {r['scale']}, {r['machine']['cpus']} CPUs; the admission webhook is registered "
        "and served throughout (operator and floor writes both pass it); creates retried after "
        f"a webhook timeout: {retries}."
    )
    return "\n".join(out)
