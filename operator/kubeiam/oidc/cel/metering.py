"""One evaluation's budget: steps for every node visited and value made, and a deadline."""

from __future__ import annotations

import time

from celpy.evaluation import Activation, Evaluator, Result

from kubeiam.oidc.cel import limits
from kubeiam.oidc.cel.tree import Tree, subtrees

__all__ = ["Meter", "MeteredEvaluator", "OutOfBudget"]


class OutOfBudget(BaseException):
    """Stops an evaluation. A BaseException, so that cel-python's `except Exception` clauses,
    which turn errors into CEL values or log them, cannot swallow it."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class Meter:
    """The steps and time one evaluation may still spend."""

    __slots__ = ("deadline", "left")

    def __init__(self) -> None:
        self.left = limits.MAX_COST
        self.deadline = time.monotonic() + limits.MAX_SECONDS

    def charge(self, steps: int) -> None:
        self.left -= steps
        if self.left < 0:
            raise OutOfBudget(f"exceeded its cost limit of {limits.MAX_COST} steps")
        if time.monotonic() > self.deadline:
            raise OutOfBudget(f"ran longer than {limits.MAX_SECONDS} seconds")


def _weight(value: object) -> int:
    if isinstance(value, str | bytes | list | dict):
        return 1 + len(value) // 32
    return 1


class MeteredEvaluator(Evaluator):
    """cel-python's interpreter with every node it visits charged to a shared meter.

    Nodes are reached either through visit() (the root, and subtrees a rule visits itself) or
    through visit_children(); both are charged, and macros' nested evaluators share the meter.
    """

    def __init__(self, ast: Tree, activation: Activation, meter: Meter) -> None:
        super().__init__(ast, activation)
        self._meter = meter

    def sub_evaluator(self, ast: Tree) -> Evaluator:
        return MeteredEvaluator(ast, self.activation, self._meter)

    def visit(self, tree: Tree) -> Result:
        self._meter.charge(1)
        result: Result = super().visit(tree)
        self._meter.charge(_weight(result))
        return result

    def visit_children(self, tree: Tree) -> list[Result]:
        self._meter.charge(sum(1 for _ in subtrees(tree)))
        results = super().visit_children(tree)
        self._meter.charge(sum(_weight(result) for result in results))
        return results
