"""The two ways a condition fails: it does not compile, or it cannot decide on a token."""

from __future__ import annotations

from typing import ClassVar

from kubeiam.domain.conditions import Reason

__all__ = ["ConditionError", "ConditionEvaluationError"]


class _Failure(Exception):
    """A failure with the reason a condition shows and a message for a person."""

    reason: ClassVar[Reason]

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConditionError(_Failure, ValueError):
    """A condition that cannot be compiled: the reason and a message that points at the error."""

    reason = Reason.CONDITION_INVALID


class ConditionEvaluationError(_Failure):
    """A condition that could not decide on a token: a missing claim, a type error, a limit."""

    reason = Reason.CONDITION_ERROR
