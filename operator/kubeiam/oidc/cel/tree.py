"""The parse tree cel-python gives a condition: its environment, its vocabulary, how to walk it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final, TypeAlias, cast

import celpy
import lark
from celpy import celtypes
from celpy.evaluation import Activation

VARIABLE: Final = "claims"
FIELD: Final = "spec.condition"

# The standard macros that bind a variable; cel-python's `reduce` and `min` are left out so a
# condition stays portable to another CEL evaluator (the token service may use one).
BINDING_MACROS: Final = frozenset({"all", "exists", "exists_one", "map", "filter"})
_PASSTHROUGH: Final = frozenset(
    {"expr", "conditionalor", "conditionaland", "relation", "addition", "multiplication"}
    | {"unary", "member", "primary"}
)
RELATIONS: Final = {
    "relation_eq": "==",
    "relation_ne": "!=",
    "relation_lt": "<",
    "relation_le": "<=",
    "relation_gt": ">",
    "relation_ge": ">=",
    "relation_in": "in",
}
OPERATORS: Final = {
    **RELATIONS,
    "addition_add": "+",
    "addition_sub": "-",
    "multiplication_mul": "*",
    "multiplication_div": "/",
    "multiplication_mod": "%",
}

# Module state: the grammar is loaded once (cel-python keeps the Lark parser as a singleton).
# Creating the Environment sets the process's recursion limit to 2500, once, at this import.
ENVIRONMENT = celpy.Environment(annotations={VARIABLE: celtypes.MapType})

Tree: TypeAlias = "lark.Tree[lark.Token]"


def new_activation(functions: Mapping[str, Any] | None = None) -> Activation:
    return Activation(
        annotations=ENVIRONMENT.annotations, package=ENVIRONMENT.package, functions=functions
    )


def subtrees(node: Tree) -> Iterator[Tree]:
    return (child for child in node.children if isinstance(child, lark.Tree))


def unwrap(node: Tree) -> Tree:
    """The node that gives the value: grammar levels with one child, and parentheses, skipped."""
    while True:
        children = node.children
        if node.data in _PASSTHROUGH and len(children) == 1 and isinstance(children[0], lark.Tree):
            node = children[0]
        elif node.data == "paren_expr":
            node = cast(Tree, children[0])
        else:
            return node


def position(node: Tree | lark.Token) -> str:
    where = node if isinstance(node, lark.Token) else node.meta
    if getattr(where, "line", None) is None:
        return ""
    return f" at line {where.line}, column {where.column}"


def name_of(node: Tree) -> str | None:
    """The identifier, when a node is a bare name (a macro's variable must be one)."""
    node = unwrap(node)
    if node.data == "ident":
        return str(node.children[0])
    return None


def arguments(node: Tree, index: int) -> list[Tree]:
    if len(node.children) > index:
        return list(subtrees(cast(Tree, node.children[index])))
    return []


def is_claims(node: Tree) -> bool:
    return node.data in ("ident", "dot_ident") and str(node.children[0]) == VARIABLE
