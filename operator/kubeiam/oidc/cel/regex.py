"""matches(): RE2 patterns compiled within limits, and each search charged before it runs.

RE2's search is the one call the step meter cannot interrupt, so its worst case is paid up front:
docs/decisions/0004-metering-condition-evaluation.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

import re2  # type: ignore[import-untyped]  # google-re2, the binding cel-python itself uses
from celpy import celtypes

from kubeiam.oidc.cel import limits
from kubeiam.oidc.cel.messages import clip
from kubeiam.oidc.cel.metering import Meter, OutOfBudget

__all__ = ["PatternRefused", "metered_matches", "regexp"]


def _re2_options() -> Any:
    options = re2.Options()
    options.max_mem = limits.MAX_PATTERN_MEMORY
    # RE2 would log a failed pattern, which may come from a token's claim, to stderr.
    options.log_errors = False
    # matches() only says whether there is a match: no submatch tracking, which costs per group.
    options.never_capture = True
    return options


_RE2_OPTIONS: Final = _re2_options()


class PatternRefused(Exception):
    """A pattern that RE2 does not compile, or compiles to a program beyond the limit."""

    def __init__(self, why: str, *, too_large: bool = False) -> None:
        super().__init__(why)
        self.why = why
        self.too_large = too_large


def regexp(pattern: str) -> Any:
    """The compiled pattern (re2 caches it); PatternRefused says why not, as a sentence end."""
    try:
        compiled = re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as error:
        cause = error.args[0] if error.args else "it does not compile"
        why = cause.decode(errors="replace") if isinstance(cause, bytes) else str(cause)
        if "pattern too large" in why:
            raise PatternRefused(_too_large(None), too_large=True) from None
        raise PatternRefused(f"is not valid RE2: {clip(why, 80)}") from None
    if compiled.programsize > limits.MAX_PATTERN_PROGRAM:
        raise PatternRefused(_too_large(compiled.programsize), too_large=True)
    return compiled


def _too_large(size: int | None) -> str:
    size_first = f"{size} instructions, more than the" if size else "more than the"
    return (
        f"compiles to {size_first} {limits.MAX_PATTERN_PROGRAM} instructions allowed; use fewer"
        " or shorter repetitions"
    )


def metered_matches(
    meter: Meter, compiled: Mapping[str, Any]
) -> Callable[[object, object], celtypes.BoolType]:
    """CEL's matches() that pays for its search, and for compiling a pattern that is not among
    the condition's `compiled` literals, before running it."""

    def matches(text: object, pattern: object) -> celtypes.BoolType:
        if not isinstance(text, celtypes.StringType) or not isinstance(
            pattern, celtypes.StringType
        ):
            raise TypeError("matches() takes two strings")  # cel-python: no such overload
        if len(text) > limits.MAX_MATCH_CHARACTERS:
            raise OutOfBudget(
                f"gave matches() a text of {len(text)} characters, more than the"
                f" {limits.MAX_MATCH_CHARACTERS} characters matches() reads,"
            )
        if len(pattern) > limits.MAX_PATTERN_CHARACTERS:
            raise OutOfBudget(
                f"gave matches() a pattern of {len(pattern)} characters, more than the"
                f" {limits.MAX_PATTERN_CHARACTERS} allowed,"
            )
        found = compiled.get(str(pattern))
        if found is None:
            meter.charge(1 + len(pattern) * limits.PATTERN_STEPS_PER_CHARACTER)
        try:
            found = found or regexp(str(pattern))
        except PatternRefused as refused:
            # RE2's own words quote the pattern, which came from the token: not repeated here.
            why = refused.why if refused.too_large else "is not valid RE2"
            raise OutOfBudget(f"gave matches() a regular expression that {why},") from None
        forward = found.programsize
        reverse = found.reverseprogramsize  # -1 when RE2 could not build it: it then runs forward
        per_byte = forward + (reverse if reverse > 0 else forward) + limits.MATCH_BYTE_OVERHEAD
        size = len(str(text).encode("utf-8", "surrogatepass"))
        meter.charge(1 + size * per_byte // limits.MATCH_UNITS_PER_STEP)
        return celtypes.BoolType(found.search(str(text)) is not None)

    return matches
