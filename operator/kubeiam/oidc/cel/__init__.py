"""Trust conditions: CEL over a token's claims, checked when compiled and evaluated within a budget.

Where each part lives: `condition` compiles and evaluates (start there); `checks` refuses what
must not compile; `shape` is what the guard rails read; `metering`, `regex` and `claims` bound an
evaluation; `limits` holds every bound; `messages` writes what a person reads. Why cel-python:
docs/decisions/0003-cel-python-for-trust-conditions.md.
"""
