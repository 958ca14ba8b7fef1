"""The bounds on a condition and on one evaluation: depth, steps, time, claims and patterns.

Read through this module (`limits.MAX_COST`), never copied, so a test may change one. How the
figures were measured: docs/decisions/0004-metering-condition-evaluation.md.
"""

from __future__ import annotations

from typing import Final

# Tree depth, in parse-tree nodes (one `&&` term or one parenthesis adds about ten): keeps an
# evaluation far from the recursion limit cel-python sets. Real conditions stay under 60.
MAX_DEPTH: Final = 150
# The budget of one evaluation, in steps: one per tree node visited, plus one per 32 characters
# or elements of each value a step produces, so copying large strings or lists costs what it
# weighs. It admits `exists` over 1000 groups and stops a quadratic macro within about a quarter
# of a second.
MAX_COST: Final = 50_000
# A backstop in wall time for what the step count cannot see (a slow machine, one slow step).
MAX_SECONDS: Final = 0.5
# Claims beyond these are not a token anyone issues; refusing them bounds the conversion.
MAX_CLAIM_VALUES: Final = 10_000
MAX_CLAIM_DEPTH: Final = 20
MAX_CLAIM_CHARACTERS: Final = 256 * 1024
# matches(): each search is charged before it runs, bytes of text times (forward program +
# reverse program + MATCH_BYTE_OVERHEAD), one step per MATCH_UNITS_PER_STEP, since RE2's
# fallback visits every instruction for every byte.
MATCH_UNITS_PER_STEP: Final = 256
MATCH_BYTE_OVERHEAD: Final = 64
# The longest text matches() reads: a claim a trust matches is a name or a path, never kilobytes.
MAX_MATCH_CHARACTERS: Final = 4096
# The longest pattern read from a claim (a literal is bounded by the condition's own length).
MAX_PATTERN_CHARACTERS: Final = 4096
# Compiling a pattern read from a claim (literal ones are compiled once, with the condition) is
# charged by its length before it starts; a step stands for about 5 us.
PATTERN_STEPS_PER_CHARACTER: Final = 32
# Instructions a pattern may compile to: `\pL+` takes 1 200, a ref pattern about 50.
MAX_PATTERN_PROGRAM: Final = 10_000
# RE2's memory for one pattern (program and DFA cache; its default is 8 MiB). re2 keeps the last
# 128 compiled patterns, so this also bounds what patterns read from tokens can hold: 32 MiB.
MAX_PATTERN_MEMORY: Final = 256 * 1024
