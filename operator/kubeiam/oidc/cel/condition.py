"""A trust's condition: compiled once with its checks, evaluated per token within its budget."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from celpy import celtypes
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError

from kubeiam.oidc.cel.checks import check_depth, check_names, check_result
from kubeiam.oidc.cel.claims import to_cel
from kubeiam.oidc.cel.errors import ConditionError, ConditionEvaluationError
from kubeiam.oidc.cel.messages import describe, syntax_message, type_name
from kubeiam.oidc.cel.metering import Meter, MeteredEvaluator, OutOfBudget
from kubeiam.oidc.cel.regex import metered_matches
from kubeiam.oidc.cel.shape import Node, shape
from kubeiam.oidc.cel.tree import ENVIRONMENT, FIELD, VARIABLE, Tree, new_activation

__all__ = ["CompiledCondition", "compile_condition"]


@dataclass(frozen=True)
class CompiledCondition:
    """A condition that compiled: its source, its parse tree, and its shape for the guard rails.

    Equal when the source is equal; the tree is what evaluate() runs.
    """

    source: str
    tree: Tree = field(repr=False, compare=False)
    expression: Node = field(repr=False, compare=False)
    # The literal patterns of its matches() calls, compiled once, here.
    patterns: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def evaluate(self, claims: Mapping[str, Any]) -> bool:
        """Whether the condition is true for these claims.

        Raises ConditionEvaluationError when it cannot say: a claim it reads is missing, a type
        does not fit, the result is not a boolean, the claims are beyond the limits, or the
        evaluation ran out of its budget.
        """
        values = {VARIABLE: to_cel(claims)}
        meter = Meter()
        matches = metered_matches(meter, self.patterns)
        activation = new_activation(functions={"matches": matches})
        evaluator = MeteredEvaluator(self.tree, activation, meter)
        try:
            result = evaluator.evaluate(values)
        except OutOfBudget as stop:
            raise ConditionEvaluationError(
                f"the condition could not be evaluated: it {stop.what} and was stopped"
            ) from None
        except CELEvalError as error:
            raise ConditionEvaluationError(
                f"the condition could not be evaluated: {describe(error)}"
            ) from None
        except RecursionError:  # MAX_DEPTH should prevent it; never let it escape as a crash
            raise ConditionEvaluationError(
                "the condition could not be evaluated: it nests too deeply"
            ) from None
        except Exception as error:  # a library surprise must refuse the token, not crash
            raise ConditionEvaluationError(
                f"the condition could not be evaluated ({type(error).__name__})"
            ) from None
        if not isinstance(result, celtypes.BoolType):
            raise ConditionEvaluationError(
                f"the condition gave {type_name(result)}, not true or false"
            )
        return bool(result)


def compile_condition(source: str) -> CompiledCondition:
    """Parse and check a condition; only the variable `claims` exists.

    Raises ConditionError for a syntax error (with line, column and a caret), an undeclared name
    or unknown function, a tree deeper than MAX_DEPTH, or a result known not to be a boolean.
    """
    try:
        tree = cast(Tree, ENVIRONMENT.compile(source))
    except CELParseError as error:
        raise ConditionError(syntax_message(source, error)) from None
    except RecursionError:
        raise ConditionError(f"{FIELD}: the condition nests too deeply") from None
    check_depth(tree)
    patterns: dict[str, Any] = {}
    check_names(tree, frozenset(), patterns)
    check_result(tree)
    return CompiledCondition(source=source, tree=tree, expression=shape(tree), patterns=patterns)
