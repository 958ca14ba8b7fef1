"""The token bench's own arithmetic and plumbing, without a cluster: the floor's fixed bodies,
vegeta's arguments, targets and report, the best level, the API requests counted, the table."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from bench import dpop_targets, peers, token_floor, tokens
from bench.client import GROUP, RequestCounts

from kubeiam.devcluster.binaries import cache_root
from kubeiam.tokens import dpop
from kubeiam.tokens.grants import Refusal
from kubeiam.tokens.holds import LocalHolds


@pytest.mark.parametrize("size", [13, 14, 50, 289, 796, 4096])
def test_the_floors_body_is_json_of_exactly_the_size_asked(size: int) -> None:
    body = token_floor.fixed_body(size)
    assert len(body) == size
    assert isinstance(json.loads(body), dict)


def test_the_floor_answers_each_endpoint_with_its_size_after_reading_the_body() -> None:
    async def main() -> list[tuple[int, int, str]]:
        async with TestClient(TestServer(token_floor.app(796, 289, 194))) as client:
            answers = [
                await client.post("/oauth2/token", data=b"grant_type=client_credentials"),
                await client.post("/oauth2/introspect", data=b"token=x"),
                await client.get("/oauth2/jwks"),
            ]
            return [
                (a.status, len(await a.read()), a.headers.get("Cache-Control", "")) for a in answers
            ]

    assert asyncio.run(main()) == [(200, 796, "no-store"), (200, 289, "no-store"), (200, 194, "")]


def test_the_floor_answers_an_exchange_with_the_exchanges_size_and_others_with_the_grants() -> None:
    exchange = urllib.parse.urlencode(
        {
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "client_id": "pipeline@ns.acme.iam",
            "subject_token": "eyJ.x.y",
        }
    ).encode()

    async def main() -> list[int]:
        async with TestClient(TestServer(token_floor.app(796, 289, 194, 1097))) as client:
            answers = [
                await client.post("/oauth2/token", data=exchange),
                await client.post("/oauth2/token", data=b"grant_type=client_credentials"),
            ]
            return [len(await a.read()) for a in answers]

    assert asyncio.run(main()) == [1097, 796]


def test_basic_authentication_form_encodes_both_parts_first() -> None:
    header = tokens.basic("a:b@ns", "s3cr+t/=")
    scheme, _, encoded = header.partition(" ")
    client_id, _, secret = base64.b64decode(encoded).decode().partition(":")
    assert scheme == "Basic"
    assert urllib.parse.unquote_plus(client_id) == "a:b@ns"
    assert urllib.parse.unquote_plus(secret) == "s3cr+t/="
    assert ":" not in client_id


def test_a_vegeta_target_carries_the_body_base64_and_each_header_as_a_list() -> None:
    target = peers.Target("POST", "https://h/t", {"Content-Type": tokens.FORM}, b"a=1&b=2")
    line = json.loads(target.json_line())
    assert line == {
        "method": "POST",
        "url": "https://h/t",
        "header": {"Content-Type": [tokens.FORM]},
        "body": base64.b64encode(b"a=1&b=2").decode(),
    }
    assert "body" not in json.loads(peers.Target("GET", "https://h/k").json_line())


def test_vegeta_runs_keep_alive_over_http_1_1_as_fast_as_answers_come_or_at_a_rate() -> None:
    flat_out = peers.attack_args(Path("t.json"), peers.Load(64, 20), Path("ca.crt"))
    assert {"-rate=0", "-workers=64", "-max-workers=64", "-keepalive=true", "-http2=false"} <= set(
        flat_out
    )
    assert "-duration=20.0s" in flat_out
    paced = peers.attack_args(Path("t.json"), peers.Load(64, 20, rate=1000), Path("ca.crt"))
    assert "-rate=1000/1s" in paced


def report(throughput: float, p99_ns: int) -> dict[str, Any]:
    return {
        "latencies": {"50th": 2_000_000, "99th": p99_ns, "mean": 3_000_000},
        "duration": 20_000_000_000,
        "throughput": throughput,
        "requests": 1000,
        "success": 1.0,
        "bytes_in": {"mean": 796.0},
        "status_codes": {"200": 1000},
        "errors": ["a", "b", "c", "d"],
    }


def test_a_vegeta_report_is_read_in_milliseconds_and_cores() -> None:
    summary = peers.summary(report(950.5, 9_500_000), loadgen_cpu_s=5.0, server_cpu_s=30.0)
    assert summary["per_second"] == 950.5
    assert (summary["p50_ms"], summary["p99_ms"], summary["mean_ms"]) == (2.0, 9.5, 3.0)
    assert (summary["loadgen_cores"], summary["server_cores"]) == (0.25, 1.5)
    assert summary["errors"] == ["a", "b", "c"]


def test_the_best_level_is_the_one_with_most_answers_a_second() -> None:
    levels = {
        "16": {"per_second": 900.0},
        "64": {"per_second": 1200.0},
        "256": {"per_second": 1100.0},
    }
    assert tokens.best(levels) == "64"


def test_only_kube_iam_kinds_secrets_and_events_count_as_the_token_servers_requests() -> None:
    before = RequestCounts({})
    after = RequestCounts(
        {
            ("WATCH", GROUP, "serviceaccountcredentials"): 1,
            ("PATCH", GROUP, "serviceaccountcredentials"): 2,
            ("PUT", "coordination.k8s.io", "leases"): 40,
        }
    )
    curve = {
        "levels": {
            "16": {"requests": 100, "success": 1.0},
            "64": {"requests": 200, "success": 0.5},
        },
        "half": {"requests": 100, "success": 1.0},
    }
    counted = tokens._token_server_requests(after - before, curve)
    assert counted == {"requests": 2, "answers": 300.0, "per_answer": 2 / 300}
    assert tokens._status_writes(after - before) == 2


def row_cells(table: str, scenario: str) -> list[str]:
    row = next(line for line in table.splitlines() if line.startswith(f"| {scenario} "))
    return [cell.strip() for cell in row.strip("|").split("|")]


def curve(per_second: float) -> dict[str, Any]:
    summary = peers.summary(report(per_second, 8_000_000), loadgen_cpu_s=2.0, server_cpu_s=1.0)
    return {"levels": {"64": summary}, "best_level": 64, "best": summary, "half": summary}


def test_the_table_puts_each_system_and_the_ratios_side_by_side() -> None:
    scenario = {
        "kube-iam": curve(3000),
        "floor": curve(6000),
        "hydra": curve(100),
        "hydra-cheapest": curve(1000),
        "vs_floor": 0.5,
        "vs_hydra": 30.0,
        "vs_hydra-cheapest": 3.0,
    }
    text = tokens.table({"tokens_cc_body": scenario, "tokens_dpop": {"error": "not measured"}})
    cells = row_cells(text, "tokens_cc_body")
    assert cells[1:5] == ["3000/s @64", "6000/s @64", "100/s @64", "1000/s @64"]
    assert cells[5:8] == ["0.50x", "30.00x", "3.00x"]
    assert "2.0/8.0 ms" in cells
    assert "(not measured)" in next(line for line in text.splitlines() if "tokens_dpop" in line)
    assert "(not run)" in next(line for line in text.splitlines() if "tokens_jwks" in line)


def test_peers_are_cached_by_the_version_their_wrapper_module_pins() -> None:
    assert peers.HYDRA.version == "v2.3.0"
    assert peers.VEGETA.version == "v12.13.0"
    assert peers.HYDRA.path == cache_root() / "bench" / "hydra-v2.3.0" / "hydra"


def test_the_lines_under_the_table_give_the_writes_the_memory_and_the_api_requests() -> None:
    attack = peers.summary(report(990, 8_000_000), loadgen_cpu_s=1.0, server_cpu_s=1.0)
    body = {"kube-iam": {"api": {"per_answer": 0.0, "requests": 0, "answers": 5000.0}}}
    text = tokens.table(
        {
            "tokens_usage_writes": {"writes_per_minute": 1.0, "attack": attack},
            "tokens_cache_rss": {
                "rss_mb": 140.4,
                "credentials_cached": 10001,
                "rss_mb_at_start": 90.2,
                "rss_mb_after_load": 150.0,
            },
            "tokens_cc_body": body,
        }
    )
    assert "lastUsed status writes: 1.0/min while one credential got 990 tokens/s for 20 s" in text
    assert "Token server RSS: 140 MB with 10001 credentials cached" in text
    assert "90 MB at start, 150 MB after the load scenarios" in text
    assert "API requests by the token server per token: 0.0000 (0 over 5000 answers" in text
    partial = next(line for line in text.splitlines() if line.startswith("| tokens_cc_body"))
    assert "(incomplete: KeyError" in partial


def served(name: str = "kube-iam") -> tokens.Served:
    # No process: building a target never touches it.
    no_process: Any = None
    return tokens.Served(name, no_process, "https://h/oauth2/token", "", "")


def test_an_exchange_target_presents_the_subject_token_as_rfc_8693_asks_and_no_secret() -> None:
    server = served()
    server.exchange = ("pipeline@ns.acme.iam", "eyJ.subject.token")
    server.clients = {"body": ("other@ns.acme.iam", "a-client-secret")}
    sent = tokens.target(server, tokens.EXCHANGE_SCENARIO)
    assert (sent.method, sent.url, sent.headers) == (
        "POST",
        "https://h/oauth2/token",
        {"Content-Type": tokens.FORM},
    )
    assert urllib.parse.parse_qs(sent.body.decode(), strict_parsing=True) == {
        "grant_type": ["urn:ietf:params:oauth:grant-type:token-exchange"],
        "client_id": ["pipeline@ns.acme.iam"],
        "subject_token": ["eyJ.subject.token"],
        "subject_token_type": ["urn:ietf:params:oauth:token-type:jwt"],
    }
    assert "eyJ.subject.token" not in repr(server) + repr(sent)


def test_the_bench_trust_pins_the_service_account_it_issues_the_subject_token_for() -> None:
    subject = "system:serviceaccount:bench-tokens-1:bench-exchange"
    jwks = {"keys": [{"kty": "RSA", "kid": "k", "n": "AQAB", "e": "AQAB"}]}
    body = tokens._trust_body("bench-exchange", "bench-client", "https://k.local", subject, jwks)
    spec = body["spec"]
    assert body["kind"] == "FederationTrust"
    assert spec["serviceAccountName"] == "bench-client"
    assert (spec["issuer"], spec["audiences"], spec["jwks"]) == (
        "https://k.local",
        [tokens.EXCHANGE_AUDIENCE],
        jwks,
    )
    assert spec["subject"] == subject
    assert spec["condition"] == f"claims.sub == '{subject}'"


def test_the_exchange_row_has_no_hydra_cells_and_the_decision_alone_goes_under_the_table() -> None:
    scenario = {
        "kube-iam": curve(1200),
        "floor": curve(4800),
        "vs_floor": 0.25,
        "decision": {"rate": 1181.4, "p50_ms": 0.655, "p99_ms": 3.998},
    }
    text = tokens.table({tokens.EXCHANGE_SCENARIO: scenario})
    cells = row_cells(text, "tokens_exchange")
    assert cells[1:5] == ["1200/s @64", "4800/s @64", "-", "-"]
    assert cells[5:8] == ["0.25x", "-", "-"]
    assert "2.0/8.0 ms" in cells
    assert cells[-1] == ">= 1,000/s"
    assert "decision and signing alone (one core, no HTTP): 1181/s, p50/p99 0.7/4.0 ms" in text
    assert "(not run)" in next(line for line in text.splitlines() if "tokens_dpop" in line)


def test_the_floor_runs_as_many_processes_as_the_token_server_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BENCH_TOKEN_WORKERS", "3")
    assert tokens.workers() == 3
    # Unset: the token server's own default under the same environment, never a fixed 1.
    monkeypatch.delenv("BENCH_TOKEN_WORKERS")
    monkeypatch.setenv("KUBEIAM_TOKEN_WORKERS", "5")
    assert tokens.workers() == 5


def test_each_generated_target_carries_a_fresh_proof_the_token_server_accepts_once() -> None:
    """The stream's proofs pass kube-iam's own check (RFC 9449 §4.3) for the target's method and
    URL; each line's proof is new, and a line sent twice is refused as a replay."""
    base = json.loads(
        peers.Target(
            "POST", "https://127.0.0.1:8443/oauth2/token", {"Content-Type": tokens.FORM}, b"a=1"
        ).json_line()
    )
    sink = io.StringIO()
    assert dpop_targets.write(base, sink, 3) == 3
    lines = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert [
        {**line, "header": {"Content-Type": line["header"]["Content-Type"]}} for line in lines
    ] == [base] * 3
    proofs = [line["header"]["DPoP"] for line in lines]
    assert all(len(proof) == 1 for proof in proofs)
    holds = LocalHolds()
    window = dpop.Window(max_age=60, skew=5)

    def checked(proof: list[str]) -> object:
        return dpop.check(
            proof,
            method="POST",
            url="https://127.0.0.1:8443/oauth2/token",
            window=window,
            holds=holds,
            now=time.time(),
        )

    keys = {checked(proof) for proof in proofs}
    assert len(keys) == 1
    assert all(isinstance(key, str) for key in keys)
    replayed = checked(proofs[0])
    assert isinstance(replayed, Refusal)
    assert "used before" in replayed.description


def test_each_settling_try_gets_a_new_proof_and_the_request_stays_as_it_was() -> None:
    sent = tokens.target(served_with_client(), tokens.DPOP_SCENARIO)
    prover = dpop_targets.Prover(sent.method, sent.url)
    first, second = tokens.with_proof(sent, prover), tokens.with_proof(sent, prover)
    assert first.body == second.body == sent.body
    assert first.headers["DPoP"] != second.headers["DPoP"]
    assert "DPoP" not in sent.headers


def served_with_client() -> tokens.Served:
    server = served()
    server.clients = {"body": ("pipeline@ns.acme.iam", "a-client-secret")}
    return server


def test_a_dpop_target_is_the_body_grant_without_a_proof_of_its_own() -> None:
    server = served_with_client()
    assert tokens.target(server, tokens.DPOP_SCENARIO) == tokens.target(server, "tokens_cc_body")


def test_vegeta_reads_a_stream_lazily_from_stdin_when_targets_are_generated() -> None:
    streamed = peers.attack_args(None, peers.Load(64, 20), Path("ca.crt"))
    assert {"-targets=stdin", "-lazy", "-format=json"} <= set(streamed)
    assert "-lazy" not in peers.attack_args(Path("t.json"), peers.Load(64, 20), Path("ca.crt"))


def test_the_floor_answers_a_request_with_a_dpop_header_with_the_bound_answers_size() -> None:
    async def main() -> list[int]:
        app = token_floor.app(796, 289, 194, 1097, 905)
        async with TestClient(TestServer(app)) as client:
            answers = [
                await client.post("/oauth2/token", data=b"grant_type=client_credentials"),
                await client.post(
                    "/oauth2/token", data=b"grant_type=client_credentials", headers={"DPoP": "x"}
                ),
            ]
            return [len(await a.read()) for a in answers]

    assert asyncio.run(main()) == [796, 905]


def test_the_dpop_row_has_no_hydra_cells_and_the_generators_share_goes_under_the_table() -> None:
    fed = peers.summary(
        report(1500, 8_000_000), loadgen_cpu_s=4.0, server_cpu_s=30.0, generator_cpu_s=2.0
    )
    scenario = {
        "kube-iam": {"levels": {"64": fed}, "best_level": 64, "best": fed, "half": fed},
        "floor": curve(6000),
        "vs_floor": 0.25,
        "generator": {"targets": 5000, "cpu_s": 0.25, "per_cpu_second": 20000.0},
    }
    text = tokens.table({tokens.DPOP_SCENARIO: scenario})
    cells = row_cells(text, "tokens_dpop")
    assert cells[1:8] == ["1500/s @64", "6000/s @64", "-", "-", "0.25x", "-", "-"]
    assert (
        "DPoP proof generator: 20000 targets a CPU second alone; at most 0.10 cores during the "
        "attacks, which peaked at 6000/s" in text
    )


def test_a_generator_that_already_exited_is_still_waited_for_and_its_cpu_counted() -> None:
    """vegeta closes the pipe at the end of an attack, and the generator may exit before the
    bench stops it: stopping it then must not reap it twice (ChildProcessError)."""
    process = subprocess.Popen([sys.executable, "-c", "sum(range(10**6))"])
    stat = Path(f"/proc/{process.pid}/stat")
    deadline = time.monotonic() + 60
    while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":  # exited, not yet reaped
        assert time.monotonic() < deadline, "the child did not exit within 60 s"
        time.sleep(0.05)
    cpu = peers._stopped_cpu(process)
    assert cpu > 0
    assert process.returncode == 0
