"""Trust conditions: CEL over a token's claims, checked when compiled and evaluated within a budget.

Which library, and why. Two maintained CEL libraries are on PyPI; `bench/cel_compare.py` runs the
comparison again. What it showed (cel-python 0.5.0, common-expression-language 0.10.0):

- Both parse and evaluate the conditions trusts need alike: `&&`, `||`, `in` with a list,
  `startsWith`, `matches` (RE2 in both), the `has`, `exists` and `all` macros, and both report a
  missing key, a type error and a non-boolean result at evaluation time.
- Neither type-checks, so neither refuses an unknown variable before a token arrives. An unknown
  name is found here by walking the parse tree with the names each macro binds. cel-python hands
  us that tree (Lark, with line and column on every node); the Rust-backed library exposes no
  tree, and its `variables()` lists a macro's bound name (`g` in `exists(g, ...)`) beside free
  ones, so it cannot tell `g` from a typo.
- The guard rails (guards.py) must read which claims a condition pins. With cel-python they read
  the very tree that is evaluated; with the Rust library they would need a second CEL parser,
  and any disagreement between two parsers is a way around the guard rails.
- Neither has a cost limit. cel-python evaluates in Python, node by node, so evaluation is
  metered here (a budget of steps, charged more for large values, and a deadline); a call into
  the Rust library cannot be bounded once started, only its inputs. The one call cel-python
  cannot interrupt either is RE2's search in `matches`: it is replaced here by one that charges
  the search's worst case to the budget before running it, with RE2's memory bounded.
- Syntax errors: both give line and column (the Rust library's message is friendlier; ours is
  rebuilt from cel-python's positions and the source).
- Speed (one core, a four-clause GitHub condition, 3000 runs): the Rust library compiles in
  about 40 us and evaluates in about 22 us; cel-python compiles in about 0.42 ms and evaluates in
  about 0.45 ms (0.65 ms with the metering below). A condition is compiled when its trust
  changes and evaluated once per token exchange, next to an RSA signature check, so well under
  a millisecond is affordable; a second parser and an unbounded evaluation are not.
- Hostile expressions: deep nesting exhausts cel-python's recursion (60 nested parentheses,
  500 `&&` terms) where the Rust library copes. A condition is therefore refused at compile time
  when its tree is deeper than MAX_DEPTH, which keeps evaluation far from the recursion limit.
- cel-python raises on `"1" == 1` where the current CEL spec says false; either way such a
  condition does not admit the token.

So cel-python. Note that creating its Environment sets the process's recursion limit to 2500,
once, at import of this module.
"""

from __future__ import annotations

import difflib
import math
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias, cast

import celpy
import lark
import re2  # type: ignore[import-untyped]  # google-re2, the binding cel-python itself uses
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import (
    Activation,
    CELEvalError,
    Evaluator,
    Result,
    base_functions,
)

from kubeiam.domain.conditions import Reason

__all__ = [
    "Choice",
    "Claim",
    "Compare",
    "CompiledCondition",
    "ConditionError",
    "ConditionEvaluationError",
    "Logical",
    "Method",
    "Node",
    "Not",
    "Opaque",
    "Value",
    "ValueList",
    "compile_condition",
]

VARIABLE: Final = "claims"
FIELD: Final = "spec.condition"

# Tree depth, in parse-tree nodes (one `&&` term or one parenthesis adds about ten). cel-python
# uses about five Python frames per level; 150 levels keep an evaluation under 800 frames, far
# from the 2500 cel-python sets, whatever the caller's own stack holds. Real conditions stay
# under 60.
MAX_DEPTH: Final = 150
# The budget of one evaluation, in steps: one per tree node visited, plus one per 32 characters
# or elements of each value a step produces, so copying large strings or lists costs what it
# weighs. A four-clause condition costs about 180 steps (0.6 ms); `exists` over a claim list of
# 1000 groups, about 34 000 (0.17 s). The budget admits that and stops a quadratic macro or a
# copy of a large claim in a loop within about a quarter of a second.
MAX_COST: Final = 50_000
# A backstop in wall time for what the step count cannot see (a slow machine, one slow step).
MAX_SECONDS: Final = 0.5
# Claims beyond these are not a token anyone issues; refusing them bounds the conversion.
MAX_CLAIM_VALUES: Final = 10_000
MAX_CLAIM_DEPTH: Final = 20
MAX_CLAIM_CHARACTERS: Final = 256 * 1024
# matches(). RE2 takes time linear in the text, but the factor is the compiled program: when its
# DFA runs out of memory it falls back to an NFA that visits every instruction for every byte, so
# one search over a 22 KB claim with a 91-character pattern ran 2.4 s inside a single step. Each
# search is therefore charged before it runs: bytes of text times (forward program + reverse
# program + MATCH_BYTE_OVERHEAD), one step per MATCH_UNITS_PER_STEP. On the worst patterns
# measured (DFA-hostile repetitions, 1.3 to 8.5 ns a unit) a whole budget of such searches takes
# 15 to 110 ms, under the quarter second the budget stands for; a ref of 200 characters against
# a real pattern costs about 130 steps.
MATCH_UNITS_PER_STEP: Final = 256
MATCH_BYTE_OVERHEAD: Final = 64
# The longest text matches() reads: a claim a trust matches is a name or a path, never kilobytes.
MAX_MATCH_CHARACTERS: Final = 4096
# The longest pattern read from a claim (a literal is bounded by the condition's own length).
MAX_PATTERN_CHARACTERS: Final = 4096
# Compiling a pattern read from a claim (literal ones are compiled once, with the condition) is
# charged by its length before it starts: RE2 took up to 125 us a character on 4 KB patterns of
# Unicode classes, and a step stands for about 5 us.
PATTERN_STEPS_PER_CHARACTER: Final = 32
# Instructions a pattern may compile to: `\pL+` takes 1 200, a ref pattern about 50.
MAX_PATTERN_PROGRAM: Final = 10_000
# RE2's memory for one pattern (program and DFA cache; its default is 8 MiB). re2 keeps the last
# 128 compiled patterns, so this also bounds what patterns read from tokens can hold: 32 MiB.
MAX_PATTERN_MEMORY: Final = 256 * 1024

_INT64 = range(-(2**63), 2**63)
# Names that CEL resolves without a declaration: the type names.
_TYPE_NAMES: Final = frozenset(
    {"bool", "bytes", "double", "duration", "int", "list", "map", "null_type", "string"}
    | {"timestamp", "type", "uint", "dyn"}
)
# The standard macros that bind a variable; cel-python's `reduce` and `min` are left out so a
# condition stays portable to another CEL evaluator (the token service may use one).
_BINDING_MACROS: Final = frozenset({"all", "exists", "exists_one", "map", "filter"})
_FUNCTIONS: Final = frozenset(name for name in base_functions if name.isidentifier())
_BOOLEAN_METHODS: Final = frozenset(
    {"startsWith", "endsWith", "contains", "matches", "all", "exists", "exists_one"}
)
_PASSTHROUGH: Final = frozenset(
    {"expr", "conditionalor", "conditionaland", "relation", "addition", "multiplication"}
    | {"unary", "member", "primary"}
)
_RELATIONS: Final = {
    "relation_eq": "==",
    "relation_ne": "!=",
    "relation_lt": "<",
    "relation_le": "<=",
    "relation_gt": ">",
    "relation_ge": ">=",
    "relation_in": "in",
}
_OPERATORS: Final = {
    **_RELATIONS,
    "addition_add": "+",
    "addition_sub": "-",
    "multiplication_mul": "*",
    "multiplication_div": "/",
    "multiplication_mod": "%",
}
_CEL_TYPE_NAMES: Final = {
    "BoolType": "bool",
    "BytesType": "bytes",
    "DoubleType": "double",
    "IntType": "int",
    "UintType": "uint",
    "StringType": "string",
    "ListType": "list",
    "MapType": "map",
    "NoneType": "null",
    "TimestampType": "timestamp",
    "DurationType": "duration",
    "TypeType": "type",
}

# Module state: the grammar is loaded once (cel-python keeps the Lark parser as a singleton).
_ENVIRONMENT = celpy.Environment(annotations={VARIABLE: celtypes.MapType})

Tree: TypeAlias = "lark.Tree[lark.Token]"


class ConditionError(ValueError):
    """A condition that cannot be compiled: the reason and a message that points at the error."""

    reason = Reason.CONDITION_INVALID

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConditionEvaluationError(Exception):
    """A condition that could not decide on a token: a missing claim, a type error, a limit."""

    reason = Reason.CONDITION_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# -- the shape of a condition, as the guard rails read it ------------------------------------
# Only what the guard rails reason about is named; anything else is Opaque, which they treat as
# "could be true for any token".


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
        values = {VARIABLE: _to_cel(claims)}
        meter = _Meter(MAX_COST, time.monotonic() + MAX_SECONDS)
        matches = _metered_matches(meter, self.patterns)
        activation = _new_activation(functions={"matches": matches})
        evaluator = _MeteredEvaluator(self.tree, activation, meter)
        try:
            result = evaluator.evaluate(values)
        except _OutOfBudget as stop:
            raise ConditionEvaluationError(
                f"the condition could not be evaluated: it {stop.what} and was stopped"
            ) from None
        except CELEvalError as error:
            raise ConditionEvaluationError(
                f"the condition could not be evaluated: {_describe(error)}"
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
                f"the condition gave {_type_name(result)}, not true or false"
            )
        return bool(result)


def compile_condition(source: str) -> CompiledCondition:
    """Parse and check a condition; only the variable `claims` exists.

    Raises ConditionError for a syntax error (with line, column and a caret), an undeclared name
    or unknown function, a tree deeper than MAX_DEPTH, or a result known not to be a boolean.
    """
    try:
        tree = cast(Tree, _ENVIRONMENT.compile(source))
    except CELParseError as error:
        raise ConditionError(_syntax_message(source, error)) from None
    except RecursionError:
        raise ConditionError(f"{FIELD}: the condition nests too deeply") from None
    depth = _depth(tree)
    if depth > MAX_DEPTH:
        raise ConditionError(
            f"{FIELD}: the condition nests too deeply ({depth} levels in the parse tree, at"
            f" most {MAX_DEPTH}); split long chains with parentheses or use `in` with a list"
        )
    patterns: dict[str, Any] = {}
    _check_names(tree, frozenset(), patterns)
    kind = _result_kind(tree)
    if kind is not None:
        raise ConditionError(
            f"{FIELD}: the condition must be true or false, but it gives {kind};"
            ' compare it with something, as in claims.repository == "acme/api"'
        )
    return CompiledCondition(source=source, tree=tree, expression=_shape(tree), patterns=patterns)


# -- syntax errors -----------------------------------------------------------------------------

_TERMINALS: Final = {
    "RPAR": "')'",
    "RSQB": "']'",
    "RBRACE": "'}'",
    "COLON": "':'",
    "COMMA": "','",
    "IDENT": "a name",
}


def _syntax_message(source: str, error: CELParseError) -> str:
    cause = error.__context__
    line, column = error.line or 1, error.column or 1
    token = getattr(cause, "token", None)
    expected = set(getattr(cause, "expected", None) or ())
    if token is not None and token.type == "$END":
        # Lark points at the last token; a person looks for the place where text is missing.
        line, column = _end_of(source)
        what = "the condition ends too early"
        closers = sorted(_TERMINALS[name] for name in expected if name in _TERMINALS)
        if closers and len(expected) <= 3:
            what += f", expected {' or '.join(closers)}"
    elif token is not None:
        what = f"unexpected {_clip(str(token.value), 40)!r}"
    else:
        char = getattr(cause, "char", "") or ""
        if char == "=":
            what = "unexpected '=' (compare with ==)"
        elif char in "\"'":
            what = "a string is not closed"
        else:
            what = f"unexpected character {char!r}"
    return f"{FIELD}: syntax error at line {line}, column {column}: {what}\n" + _caret(
        source, line, column
    )


def _end_of(source: str) -> tuple[int, int]:
    """Line and column just after the last character that is not blank."""
    text = source.rstrip()
    lines = text.split("\n")
    return len(lines), len(lines[-1]) + 1


def _caret(source: str, line: int, column: int) -> str:
    """The offending line, clipped around the column, with a caret under the column."""
    lines = source.split("\n")
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    start = max(0, column - 1 - 50)
    shown = text[start : start + 100]
    prefix = "..." if start else ""
    suffix = "..." if start + 100 < len(text) else ""
    return f"  {prefix}{shown}{suffix}\n  {' ' * (len(prefix) + column - 1 - start)}^"


def _clip(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 3] + "..."


# -- checks on the tree ----------------------------------------------------------------------


def _depth(tree: Tree) -> int:
    """Depth without recursion: the tree may be deeper than Python's stack allows."""
    deepest = 0
    stack: list[tuple[Tree, int]] = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in _subtrees(node))
    return deepest


def _subtrees(node: Tree) -> Iterator[Tree]:
    return (child for child in node.children if isinstance(child, lark.Tree))


def _unwrap(node: Tree) -> Tree:
    """The node that gives the value: grammar levels with one child, and parentheses, skipped."""
    while True:
        children = node.children
        if node.data in _PASSTHROUGH and len(children) == 1 and isinstance(children[0], lark.Tree):
            node = children[0]
        elif node.data == "paren_expr":
            node = cast(Tree, children[0])
        else:
            return node


def _position(node: Tree | lark.Token) -> str:
    where = node if isinstance(node, lark.Token) else node.meta
    if getattr(where, "line", None) is None:
        return ""
    return f" at line {where.line}, column {where.column}"


def _name_of(node: Tree) -> str | None:
    """The identifier, when a node is a bare name (a macro's variable must be one)."""
    node = _unwrap(node)
    if node.data == "ident":
        return str(node.children[0])
    return None


def _arguments(node: Tree, index: int) -> list[Tree]:
    if len(node.children) > index:
        return list(_subtrees(cast(Tree, node.children[index])))
    return []


def _suggest(name: str, known: frozenset[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_names(node: Tree, bound: frozenset[str], patterns: dict[str, Any]) -> None:
    """Refuse names that nothing declares, unknown functions and misused macros; compile the
    literal patterns of matches() into `patterns`."""
    data = node.data
    if data == "literal":
        _literal(node)  # refuses a literal CEL cannot hold, such as an int beyond 64 bits
        return
    if data == "ident":
        name = str(node.children[0])
        if name != VARIABLE and name not in bound and name not in _TYPE_NAMES:
            variables = sorted({VARIABLE} | bound)
            only = (
                f"the only variable is {VARIABLE}"
                if not bound
                else f"the only variables here are {', '.join(variables[:-1])} and {variables[-1]}"
            )
            raise ConditionError(
                f"{FIELD}: undeclared reference to '{name}'{_position(node)}"
                f"{_suggest(name, frozenset(variables))}; {only}"
            )
        return
    if data == "dot_ident":
        name = str(node.children[0])
        if name != VARIABLE:
            raise ConditionError(
                f"{FIELD}: undeclared reference to '.{name}'{_position(node)}; the only"
                f" variable is {VARIABLE}"
            )
        return
    if data in ("dot_ident_arg", "member_object"):
        raise ConditionError(
            f"{FIELD}: {'a leading-dot call' if data == 'dot_ident_arg' else 'message creation'}"
            f"{_position(node)} is not available in a condition"
        )
    if data == "ident_arg":
        name = str(node.children[0])
        args = _arguments(node, 1)
        if name == "has":
            inner = _unwrap(args[0]) if len(args) == 1 else None
            if inner is None or inner.data != "member_dot":
                raise ConditionError(
                    f"{FIELD}: has(){_position(node)} takes one field selection, as in"
                    " has(claims.environment)"
                )
        elif name not in _FUNCTIONS and name != "dyn":
            raise ConditionError(
                f"{FIELD}: unknown function '{name}'{_position(node)}{_suggest(name, _FUNCTIONS)}"
            )
        for arg in args:
            _check_names(arg, bound, patterns)
        if name == "matches" and len(args) == 2:
            _check_pattern(args[1], node, patterns)
        return
    if data == "member_dot_arg":
        target, token = cast(Tree, node.children[0]), cast(lark.Token, node.children[1])
        method = str(token)
        args = _arguments(node, 2)
        _check_names(target, bound, patterns)
        if method in _BINDING_MACROS:
            variable = _name_of(args[0]) if len(args) == 2 else None
            if variable is None:
                raise ConditionError(
                    f"{FIELD}: {method}(){_position(token)} takes a variable name and an"
                    f' expression, as in claims.groups.{method}(g, g == "ops")'
                )
            if variable == VARIABLE:
                raise ConditionError(
                    f"{FIELD}: {method}(){_position(token)} must not name its variable"
                    f" {VARIABLE}, which would hide the token's claims"
                )
            _check_names(args[1], bound | {variable}, patterns)
            return
        if method not in _FUNCTIONS:
            raise ConditionError(
                f"{FIELD}: unknown function '{method}'{_position(token)}"
                f"{_suggest(method, _FUNCTIONS | _BINDING_MACROS)}"
            )
        for arg in args:
            _check_names(arg, bound, patterns)
        if method == "matches" and len(args) == 1:
            _check_pattern(args[0], token, patterns)
        return
    for child in _subtrees(node):
        _check_names(child, bound, patterns)


def _check_pattern(node: Tree, where: Tree | lark.Token, patterns: dict[str, Any]) -> None:
    """A literal regular expression is compiled now, so a broken one is reported when the
    trust is applied rather than at every token."""
    literal = _unwrap(node)
    if literal.data != "literal":
        return
    pattern = _literal(literal).value
    if not isinstance(pattern, str):
        return
    # Compiled as evaluation will compile it, with the same options and limits.
    try:
        patterns[pattern] = _regexp(pattern)
    except _PatternRefused as refused:
        raise ConditionError(
            f"{FIELD}: the regular expression {_clip(pattern, 40)!r} of matches()"
            f"{_position(where)} {refused.why}"
        ) from None


def _result_kind(tree: Tree) -> str | None:
    """What the expression gives when that is known not to be a boolean; None otherwise."""
    node = _unwrap(tree)
    data, children = node.data, node.children
    if data == "expr" and len(children) == 3:  # a ? b : c gives b or c
        return _result_kind(cast(Tree, children[1])) or _result_kind(cast(Tree, children[2]))
    if data in ("addition", "multiplication"):
        return f"the result of {_OPERATORS[cast(Tree, children[0]).data]}"
    if data == "unary" and cast(Tree, children[0]).data == "unary_neg":
        return "a number"
    if data == "literal":
        kind = cast(lark.Token, children[0]).type
        if kind == "BOOL_LIT":
            return None
        return {
            "NULL_LIT": "null",
            "BYTES_LIT": "bytes",
            "STRING_LIT": "a string",
            "MLSTRING_LIT": "a string",
        }.get(kind, "a number")
    if data == "list_lit":
        return "a list"
    if data == "map_lit":
        return "a map"
    if data == "ident":
        return "the map of claims" if str(children[0]) == VARIABLE else None
    if data == "member_dot_arg":
        method = str(children[1])
        if method in ("map", "filter"):
            return "a list"
        if method == "size":
            return "a number"
    if data == "ident_arg":
        function = str(children[0])
        if function in ("size", "int", "uint", "double"):
            return "a number"
        if function in ("string", "bytes", "timestamp", "duration", "type"):
            return f"a {function}" if function != "type" else "a type"
    return None


# -- the shape for the guard rails -----------------------------------------------------------


def _shape(tree: Tree) -> Node:
    node = _unwrap(tree)
    data, children = node.data, node.children
    if data == "conditionalor" and len(children) == 2:
        return Logical("||", _shape(cast(Tree, children[0])), _shape(cast(Tree, children[1])))
    if data == "conditionaland" and len(children) == 2:
        return Logical("&&", _shape(cast(Tree, children[0])), _shape(cast(Tree, children[1])))
    if data == "expr" and len(children) == 3:
        condition, then, otherwise = (_shape(cast(Tree, child)) for child in children)
        return Choice(condition, then, otherwise)
    if data == "unary" and len(children) == 2:
        if cast(Tree, children[0]).data == "unary_not":
            return Not(_shape(cast(Tree, children[1])))
        return Opaque("negation")
    if data == "relation" and len(children) == 2:
        relation = cast(Tree, children[0])
        left = _shape(cast(Tree, relation.children[0]))
        return Compare(_RELATIONS[relation.data], left, _shape(cast(Tree, children[1])))
    if data == "literal":
        return _literal(node)
    if data == "list_lit":
        items = [_shape(child) for child in _arguments(node, 0)]
        values = tuple(item for item in items if isinstance(item, Value))
        return ValueList(values) if len(values) == len(items) else Opaque("list")
    if data == "member_dot":
        target = _unwrap(cast(Tree, children[0]))
        if _is_claims(target):
            return Claim(str(children[1]))
        return Opaque("field")
    if data == "member_index":
        target = _unwrap(cast(Tree, children[0]))
        key = _shape(cast(Tree, children[1]))
        if _is_claims(target) and isinstance(key, Value) and isinstance(key.value, str):
            return Claim(key.value)
        return Opaque("index")
    if data == "member_dot_arg":
        method = str(children[1])
        if method in _BINDING_MACROS:
            return Opaque(method)
        args = tuple(_shape(arg) for arg in _arguments(node, 2))
        return Method(_shape(cast(Tree, children[0])), method, args)
    return Opaque(data)


def _is_claims(node: Tree) -> bool:
    return node.data in ("ident", "dot_ident") and str(node.children[0]) == VARIABLE


def _literal(node: Tree) -> Value:
    # cel-python decodes the literal (quotes, escapes, raw strings): the value is the one the
    # evaluation compares with, never a second reading of the source text.
    try:
        value = Evaluator(node, _new_activation()).evaluate({})
    except CELEvalError as error:
        token = cast(lark.Token, node.children[0])
        why = "it is out of range" if "overflow" in str(error.args[:1]) else _describe(error)
        raise ConditionError(
            f"{FIELD}: the literal {_clip(str(token), 40)}{_position(token)} cannot be used: {why}"
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


# -- evaluation --------------------------------------------------------------------------------


def _new_activation(functions: Mapping[str, Any] | None = None) -> Activation:
    return Activation(
        annotations=_ENVIRONMENT.annotations, package=_ENVIRONMENT.package, functions=functions
    )


# -- matches() ---------------------------------------------------------------------------------


def _re2_options() -> Any:
    options = re2.Options()
    options.max_mem = MAX_PATTERN_MEMORY
    # RE2 would log a failed pattern, which may come from a token's claim, to stderr.
    options.log_errors = False
    # matches() only says whether there is a match: no submatch tracking, which costs per group.
    options.never_capture = True
    return options


_RE2_OPTIONS: Final = _re2_options()


class _PatternRefused(Exception):
    """A pattern that RE2 does not compile, or compiles to a program beyond the limit."""

    def __init__(self, why: str, *, too_large: bool = False) -> None:
        super().__init__(why)
        self.why = why
        self.too_large = too_large


def _regexp(pattern: str) -> Any:
    """The compiled pattern (re2 caches it); _PatternRefused says why not, as a sentence end."""
    try:
        regexp = re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as error:
        cause = error.args[0] if error.args else "it does not compile"
        why = cause.decode(errors="replace") if isinstance(cause, bytes) else str(cause)
        if "pattern too large" in why:
            raise _PatternRefused(_too_large(None), too_large=True) from None
        raise _PatternRefused(f"is not valid RE2: {_clip(why, 80)}") from None
    if regexp.programsize > MAX_PATTERN_PROGRAM:
        raise _PatternRefused(_too_large(regexp.programsize), too_large=True)
    return regexp


def _too_large(size: int | None) -> str:
    size_first = f"{size} instructions, more than the" if size else "more than the"
    return (
        f"compiles to {size_first} {MAX_PATTERN_PROGRAM} instructions allowed; use fewer or"
        " shorter repetitions"
    )


def _metered_matches(meter: _Meter, compiled: Mapping[str, Any]) -> Any:
    """CEL's matches() that pays for its search, and for compiling a pattern that is not among
    the condition's `compiled` literals, before running it."""

    def matches(text: object, pattern: object) -> celtypes.BoolType:
        if not isinstance(text, celtypes.StringType) or not isinstance(
            pattern, celtypes.StringType
        ):
            raise TypeError("matches() takes two strings")  # cel-python: no such overload
        if len(text) > MAX_MATCH_CHARACTERS:
            raise _OutOfBudget(
                f"gave matches() a text of {len(text)} characters, more than the"
                f" {MAX_MATCH_CHARACTERS} characters matches() reads,"
            )
        if len(pattern) > MAX_PATTERN_CHARACTERS:
            raise _OutOfBudget(
                f"gave matches() a pattern of {len(pattern)} characters, more than the"
                f" {MAX_PATTERN_CHARACTERS} allowed,"
            )
        regexp = compiled.get(str(pattern))
        if regexp is None:
            meter.charge(1 + len(pattern) * PATTERN_STEPS_PER_CHARACTER)
        try:
            regexp = regexp or _regexp(str(pattern))
        except _PatternRefused as refused:
            # RE2's own words quote the pattern, which came from the token: not repeated here.
            why = refused.why if refused.too_large else "is not valid RE2"
            raise _OutOfBudget(f"gave matches() a regular expression that {why},") from None
        forward = regexp.programsize
        reverse = regexp.reverseprogramsize  # -1 when RE2 could not build it: it then runs forward
        per_byte = forward + (reverse if reverse > 0 else forward) + MATCH_BYTE_OVERHEAD
        size = len(str(text).encode("utf-8", "surrogatepass"))
        meter.charge(1 + size * per_byte // MATCH_UNITS_PER_STEP)
        return celtypes.BoolType(regexp.search(str(text)) is not None)

    return matches


class _OutOfBudget(BaseException):
    """Stops an evaluation. A BaseException, so that cel-python's `except Exception` clauses,
    which turn errors into CEL values or log them, cannot swallow it."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class _Meter:
    """The steps and time one evaluation may still spend."""

    __slots__ = ("deadline", "left")

    def __init__(self, steps: int, deadline: float) -> None:
        self.left = steps
        self.deadline = deadline

    def charge(self, steps: int) -> None:
        self.left -= steps
        if self.left < 0:
            raise _OutOfBudget(f"exceeded its cost limit of {MAX_COST} steps")
        if time.monotonic() > self.deadline:
            raise _OutOfBudget(f"ran longer than {MAX_SECONDS} seconds")


def _weight(value: object) -> int:
    if isinstance(value, str | bytes | list | dict):
        return 1 + len(value) // 32
    return 1


class _MeteredEvaluator(Evaluator):
    """cel-python's interpreter with every node it visits charged to a shared meter.

    Nodes are reached either through visit() (the root, and subtrees a rule visits itself) or
    through visit_children(); both are charged, and macros' nested evaluators share the meter.
    """

    def __init__(self, ast: Tree, activation: Activation, meter: _Meter) -> None:
        super().__init__(ast, activation)
        self._meter = meter

    def sub_evaluator(self, ast: Tree) -> Evaluator:
        return _MeteredEvaluator(ast, self.activation, self._meter)

    def visit(self, tree: Tree) -> Result:
        self._meter.charge(1)
        result: Result = super().visit(tree)
        self._meter.charge(_weight(result))
        return result

    def visit_children(self, tree: Tree) -> list[Result]:
        self._meter.charge(sum(1 for _ in _subtrees(tree)))
        results = super().visit_children(tree)
        self._meter.charge(sum(_weight(result) for result in results))
        return results


def _to_cel(claims: Mapping[str, Any]) -> celtypes.Value:
    """The claims as CEL values, refused when beyond the limits or not JSON-like."""
    values = characters = 0
    stack: list[tuple[object, int]] = [(claims, 1)]
    while stack:
        value, depth = stack.pop()
        values += 1
        if values > MAX_CLAIM_VALUES:
            raise _refused(f"the token's claims hold more than {MAX_CLAIM_VALUES} values")
        if depth > MAX_CLAIM_DEPTH:
            raise _refused(f"the token's claims nest deeper than {MAX_CLAIM_DEPTH} levels")
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
        if characters > MAX_CLAIM_CHARACTERS:
            raise _refused(f"the token's claims hold more than {MAX_CLAIM_CHARACTERS} characters")
    try:
        return json_to_cel(dict(claims))
    except (TypeError, ValueError) as error:
        raise _refused(f"a claim could not be read ({type(error).__name__})") from None


def _refused(why: str) -> ConditionEvaluationError:
    return ConditionEvaluationError(f"the condition was not evaluated: {why}")


def _type_name(value: object) -> str:
    name = _CEL_TYPE_NAMES.get(type(value).__name__, type(value).__name__)
    return f"a value of type {name}" if name != "null" else "null"


_OVERLOAD = re.compile(r"Token\('RULE', '(\w+)'\) applied to '\((.*)\)'")
_CLASS = re.compile(r"<class '[\w.]*?(\w+)'>")


def _describe(error: CELEvalError) -> str:
    """A sentence for a person from cel-python's error, without its dump of the activation."""
    args = error.args
    text = str(args[0]) if args else "unknown error"
    exception = args[1] if len(args) > 1 else None
    details = args[2] if len(args) > 2 else None
    if exception is KeyError or text.startswith("no such member"):
        key = details[0] if isinstance(details, tuple) and details else None
        match = re.search(r"'([^']*)'", text)
        name = str(key) if key is not None else (match.group(1) if match else "?")
        name = _clip(name, 64)
        return (
            f"the token has no claim or key '{name}'; test for it first, as in"
            f" has(claims.{name}) && ..."
            if name.isidentifier()
            else f"the token has no claim or key '{name}'"
        )
    if exception is ZeroDivisionError:
        return "division by zero"
    overload = _OVERLOAD.search(text)
    if overload is not None:
        operator = _OPERATORS.get(overload.group(1), overload.group(1))
        types = [_CEL_TYPE_NAMES.get(name, name) for name in _CLASS.findall(overload.group(2))]
        return f"no operator {operator} for {' and '.join(types)}; CEL does not convert types"
    text = text.split(" (in activation", 1)[0]
    return _clip(" ".join(text.split()), 160)
