"""The shape of a condition as the guard rails read it, taken from the very tree that is evaluated.

Only what the guard rails reason about is named; anything else is Opaque, which they treat as
"could be true for any token".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias, cast

import lark
from celpy import celtypes
from celpy.evaluation import CELEvalError, Evaluator

from kubeiam.oidc.cel.errors import ConditionError
from kubeiam.oidc.cel.messages import clip, describe
from kubeiam.oidc.cel.tree import (
    BINDING_MACROS,
    FIELD,
    RELATIONS,
    Tree,
    arguments,
    is_claims,
    new_activation,
    position,
    unwrap,
)

__all__ = [
    "Choice",
    "Claim",
    "Compare",
    "Logical",
    "Method",
    "Node",
    "Not",
    "Opaque",
    "Value",
    "ValueList",
    "literal",
    "shape",
]


@dataclass(frozen=True)
class Claim:
    """`claims.name` or `claims["name"]`."""

    name: str


@dataclass(frozen=True)
class Value:
    """A literal: a string, number, boolean, bytes or null."""

    value: str | int | float | bool | bytes | None


@dataclass(frozen=True)
class ValueList:
    """A list literal whose items are all literals."""

    items: tuple[Value, ...]


@dataclass(frozen=True)
class Logical:
    """`left && right` or `left || right`."""

    operator: Literal["&&", "||"]
    left: Node
    right: Node


@dataclass(frozen=True)
class Not:
    """`!operand`."""

    operand: Node


@dataclass(frozen=True)
class Choice:
    """`condition ? then : otherwise`."""

    condition: Node
    then: Node
    otherwise: Node


@dataclass(frozen=True)
class Compare:
    """A relation: ==, !=, <, <=, >, >= or in."""

    operator: str
    left: Node
    right: Node


@dataclass(frozen=True)
class Method:
    """`target.name(args...)`, such as claims.repository.startsWith("acme/")."""

    target: Node
    name: str
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Opaque:
    """Anything else: arithmetic, function calls, macros, indexing by a computed key."""

    kind: str


Node: TypeAlias = Claim | Value | ValueList | Logical | Not | Choice | Compare | Method | Opaque


def shape(tree: Tree) -> Node:
    node = unwrap(tree)
    data, children = node.data, node.children
    if data == "conditionalor" and len(children) == 2:
        return Logical("||", shape(cast(Tree, children[0])), shape(cast(Tree, children[1])))
    if data == "conditionaland" and len(children) == 2:
        return Logical("&&", shape(cast(Tree, children[0])), shape(cast(Tree, children[1])))
    if data == "expr" and len(children) == 3:
        condition, then, otherwise = (shape(cast(Tree, child)) for child in children)
        return Choice(condition, then, otherwise)
    if data == "unary" and len(children) == 2:
        if cast(Tree, children[0]).data == "unary_not":
            return Not(shape(cast(Tree, children[1])))
        return Opaque("negation")
    if data == "relation" and len(children) == 2:
        relation = cast(Tree, children[0])
        left = shape(cast(Tree, relation.children[0]))
        return Compare(RELATIONS[relation.data], left, shape(cast(Tree, children[1])))
    if data == "literal":
        return literal(node)
    if data == "list_lit":
        items = [shape(child) for child in arguments(node, 0)]
        values = tuple(item for item in items if isinstance(item, Value))
        return ValueList(values) if len(values) == len(items) else Opaque("list")
    if data == "member_dot":
        target = unwrap(cast(Tree, children[0]))
        if is_claims(target):
            return Claim(str(children[1]))
        return Opaque("field")
    if data == "member_index":
        target = unwrap(cast(Tree, children[0]))
        key = shape(cast(Tree, children[1]))
        if is_claims(target) and isinstance(key, Value) and isinstance(key.value, str):
            return Claim(key.value)
        return Opaque("index")
    if data == "member_dot_arg":
        method = str(children[1])
        if method in BINDING_MACROS:
            return Opaque(method)
        args = tuple(shape(arg) for arg in arguments(node, 2))
        return Method(shape(cast(Tree, children[0])), method, args)
    return Opaque(data)


def literal(node: Tree) -> Value:
    # cel-python decodes the literal (quotes, escapes, raw strings): the value is the one the
    # evaluation compares with, never a second reading of the source text.
    try:
        value = Evaluator(node, new_activation()).evaluate({})
    except CELEvalError as error:
        token = cast(lark.Token, node.children[0])
        why = "it is out of range" if "overflow" in str(error.args[:1]) else describe(error)
        raise ConditionError(
            f"{FIELD}: the literal {clip(str(token), 40)}{position(token)} cannot be used: {why}"
        ) from None
    if isinstance(value, celtypes.BoolType):
        return Value(bool(value))
    if isinstance(value, celtypes.StringType):
        return Value(str(value))
    if isinstance(value, celtypes.BytesType):
        return Value(bytes(value))
    if isinstance(value, int):
        return Value(int(value))
    if isinstance(value, float):
        return Value(float(value))
    return Value(None)
