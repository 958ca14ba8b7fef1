"""A token's claims as CEL values, refused when beyond the claim limits or not JSON-like."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from celpy import celtypes
from celpy.adapter import json_to_cel

from kubeiam.oidc.cel import limits
from kubeiam.oidc.cel.errors import ConditionEvaluationError

__all__ = ["to_cel"]

_INT64 = range(-(2**63), 2**63)


def to_cel(claims: Mapping[str, Any]) -> celtypes.Value:
    """The claims as CEL values, refused when beyond the limits or not JSON-like."""
    values = characters = 0
    stack: list[tuple[object, int]] = [(claims, 1)]
    while stack:
        value, depth = stack.pop()
        values += 1
        if values > limits.MAX_CLAIM_VALUES:
            raise _refused(f"the token's claims hold more than {limits.MAX_CLAIM_VALUES} values")
        if depth > limits.MAX_CLAIM_DEPTH:
            raise _refused(f"the token's claims nest deeper than {limits.MAX_CLAIM_DEPTH} levels")
        if isinstance(value, str):
            characters += len(value)
        elif isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise _refused("a claim name is not a string")
                characters += len(key)
                stack.append((item, depth + 1))
        elif isinstance(value, list | tuple):
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, bool) or value is None:
            pass
        elif isinstance(value, int):
            if value not in _INT64:
                raise _refused("a claim holds an integer outside the 64-bit range CEL has")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise _refused("a claim holds a number that is not finite")
        else:
            raise _refused(f"a claim holds a {type(value).__name__}, which JSON does not have")
        if characters > limits.MAX_CLAIM_CHARACTERS:
            raise _refused(
                f"the token's claims hold more than {limits.MAX_CLAIM_CHARACTERS} characters"
            )
    try:
        return json_to_cel(dict(claims))
    except (TypeError, ValueError) as error:
        raise _refused(f"a claim could not be read ({type(error).__name__})") from None


def _refused(why: str) -> ConditionEvaluationError:
    return ConditionEvaluationError(f"the condition was not evaluated: {why}")
