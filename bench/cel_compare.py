"""Compare the two CEL libraries on PyPI on what a trust's condition needs: correctness and speed.

Not part of the package or the tests: it needs both libraries, and the project depends on one.
Run it with both installed beside the project's Python, for example:

    uv run --no-project --with cel-python==0.5.0 --with common-expression-language==0.10.0 \
        python bench/cel_compare.py

Each probe prints what each library did, so the choice recorded in
docs/decisions/0003-cel-python-for-trust-conditions.md can be checked again when either library
has a new release.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import cel  # common-expression-language: Python bindings of the Rust cel-interpreter
import celpy  # cel-python: a pure-Python interpreter on a Lark grammar
from celpy import celtypes
from celpy.adapter import json_to_cel

CLAIMS: dict[str, Any] = {
    "iss": "https://token.actions.githubusercontent.com",
    "sub": "repo:acme/api:ref:refs/heads/main",
    "aud": "sts.example",
    "repository": "acme/api",
    "repository_id": "123456",
    "repository_owner": "acme",
    "repository_owner_id": "7890",
    "ref": "refs/heads/main",
    "environment": "prod",
    "groups": ["dev", "ops"],
}
TYPICAL = (
    'claims.repository == "acme/api" && claims.repository_id == "123456"'
    ' && claims.ref == "refs/heads/main" && claims.environment in ["prod", "staging"]'
)

ENV = celpy.Environment(annotations={"claims": celtypes.MapType})


def celpy_run(source: str, claims: dict[str, Any]) -> Any:
    return ENV.program(ENV.compile(source)).evaluate({"claims": json_to_cel(claims)})


def rust_run(source: str, claims: dict[str, Any]) -> Any:
    return cel.compile(source).execute({"claims": claims})


def outcome(run: Callable[[str, dict[str, Any]], Any], source: str) -> str:
    try:
        return f"-> {run(source, CLAIMS)!r}"
    except Exception as error:
        return f"!! {type(error).__name__}: {' '.join(str(error).split())[:160]}"


PROBES = [
    ("typical GitHub condition", TYPICAL),
    ("unknown variable (claim)", 'claim.repository == "acme/api"'),
    ("syntax error at the end of line 2", 'claims.repository == "acme/api" &&\n  claims.ref =='),
    ("single = instead of ==", 'claims.repository = "acme/api"'),
    ("exists macro", 'claims.groups.exists(g, g == "ops")'),
    ("in with a list literal", 'claims.environment in ["prod", "staging"]'),
    ("startsWith", 'claims.repository.startsWith("acme/")'),
    ("matches (RE2)", 'claims.ref.matches("^refs/heads/(main|release/.*)$")'),
    ("missing key", 'claims.job_workflow_ref == "x"'),
    ("has() on a missing key", "has(claims.job_workflow_ref)"),
    ("type error string + int", "claims.repository_id + 1 == 2"),
    ("non-boolean result", "claims.repository"),
    ("int vs string comparison", "claims.repository_id == 123456"),
]


def correctness() -> None:
    print("== correctness: what each library does at compile and evaluation time")
    for title, source in PROBES:
        print(f"\n-- {title}: {source!r}")
        print("  cel-python:                ", outcome(celpy_run, source))
        print("  common-expression-language:", outcome(rust_run, source))
    print("\n-- compile time only (is an unknown variable refused before any token?)")
    for source in ['claim.repository == "x"', 'claims.groups.exists(g, g == "ops")']:
        try:
            program = cel.compile(source)
            print(f"  rust  {source!r}: compiles; variables()={program.variables()}")
        except Exception as error:
            print(f"  rust  {source!r}: refused: {error}")
        try:
            ENV.compile(source)
            print(f"  celpy {source!r}: compiles; the Lark tree is there to inspect")
        except Exception as error:
            print(f"  celpy {source!r}: refused: {error}")


DEEP = {
    "nested parentheses x60": "(" * 60 + "true" + ")" * 60,
    "&& chain x500": " && ".join(["true"] * 500),
    "! chain x490": "!" * 490 + "true",
}


def hostile() -> None:
    # A crash here (a Rust stack overflow aborts the process) must not end the comparison.
    print("\n== hostile expressions, each in its own process")
    for library in ("celpy", "rust"):
        for title, source in DEEP.items():
            code = textwrap.dedent(
                f"""
                import sys
                source = {source!r}
                if {library!r} == "celpy":
                    import celpy
                    env = celpy.Environment()
                    print(env.program(env.compile(source)).evaluate({{}}))
                else:
                    import cel
                    print(cel.compile(source).execute({{}}))
                """
            )
            done = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=False
            )
            last = (done.stdout.strip() or done.stderr.strip()).splitlines()[-1:] or [""]
            print(f"  {library:5} {title:24} exit {done.returncode}: {last[0][:110]}")


def timed(label: str, count: int, work: Callable[[], object]) -> None:
    start = time.perf_counter()
    for _ in range(count):
        work()
    elapsed = time.perf_counter() - start
    print(f"  {label:58} {count:6} x  {elapsed * 1e6 / count:9.1f} us each")


def speed(count: int = 3000) -> None:
    print(f"\n== speed, {TYPICAL!r}")
    program = ENV.program(ENV.compile(TYPICAL))
    activation = {"claims": json_to_cel(CLAIMS)}
    rust_program = cel.compile(TYPICAL)
    timed("cel-python compile (parse + program)", count // 10, lambda: celpy_compile(TYPICAL))
    timed(
        "cel-python evaluate (claims converted once)", count, lambda: program.evaluate(activation)
    )
    timed(
        "cel-python evaluate (claims converted each time)",
        count,
        lambda: program.evaluate({"claims": json_to_cel(CLAIMS)}),
    )
    timed("common-expression-language compile", count, lambda: cel.compile(TYPICAL))
    timed(
        "common-expression-language evaluate",
        count,
        lambda: rust_program.execute({"claims": CLAIMS}),
    )


def celpy_compile(source: str) -> object:
    return ENV.program(ENV.compile(source))


if __name__ == "__main__":
    correctness()
    hostile()
    speed()
