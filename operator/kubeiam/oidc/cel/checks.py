"""The checks a condition passes when compiled: names, functions, macros, depth, literal regexes."""

from __future__ import annotations

from typing import Any, Final, cast

import lark
from celpy.evaluation import base_functions

from kubeiam.oidc.cel import limits
from kubeiam.oidc.cel.errors import ConditionError
from kubeiam.oidc.cel.messages import clip, suggest
from kubeiam.oidc.cel.regex import PatternRefused, regexp
from kubeiam.oidc.cel.shape import literal
from kubeiam.oidc.cel.tree import (
    BINDING_MACROS,
    FIELD,
    OPERATORS,
    VARIABLE,
    Tree,
    arguments,
    name_of,
    position,
    subtrees,
    unwrap,
)

__all__ = ["check_depth", "check_names", "check_result"]

# Names that CEL resolves without a declaration: the type names.
_TYPE_NAMES: Final = frozenset(
    {"bool", "bytes", "double", "duration", "int", "list", "map", "null_type", "string"}
    | {"timestamp", "type", "uint", "dyn"}
)
_FUNCTIONS: Final = frozenset(name for name in base_functions if name.isidentifier())


def check_depth(tree: Tree) -> None:
    """Refuse a tree deeper than MAX_DEPTH, which keeps evaluation far from the recursion limit."""
    depth = _depth(tree)
    if depth > limits.MAX_DEPTH:
        raise ConditionError(
            f"{FIELD}: the condition nests too deeply ({depth} levels in the parse tree, at"
            f" most {limits.MAX_DEPTH}); split long chains with parentheses or use `in` with a"
            " list"
        )


def check_result(tree: Tree) -> None:
    """Refuse a condition whose result is known not to be a boolean."""
    kind = _result_kind(tree)
    if kind is not None:
        raise ConditionError(
            f"{FIELD}: the condition must be true or false, but it gives {kind};"
            ' compare it with something, as in claims.repository == "acme/api"'
        )


def _depth(tree: Tree) -> int:
    """Depth without recursion: the tree may be deeper than Python's stack allows."""
    deepest = 0
    stack: list[tuple[Tree, int]] = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in subtrees(node))
    return deepest


def check_names(node: Tree, bound: frozenset[str], patterns: dict[str, Any]) -> None:
    """Refuse names that nothing declares, unknown functions and misused macros; compile the
    literal patterns of matches() into `patterns`."""
    data = node.data
    if data == "literal":
        literal(node)  # refuses a literal CEL cannot hold, such as an int beyond 64 bits
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
                f"{FIELD}: undeclared reference to '{name}'{position(node)}"
                f"{suggest(name, frozenset(variables))}; {only}"
            )
        return
    if data == "dot_ident":
        name = str(node.children[0])
        if name != VARIABLE:
            raise ConditionError(
                f"{FIELD}: undeclared reference to '.{name}'{position(node)}; the only"
                f" variable is {VARIABLE}"
            )
        return
    if data in ("dot_ident_arg", "member_object"):
        raise ConditionError(
            f"{FIELD}: {'a leading-dot call' if data == 'dot_ident_arg' else 'message creation'}"
            f"{position(node)} is not available in a condition"
        )
    if data == "ident_arg":
        name = str(node.children[0])
        args = arguments(node, 1)
        if name == "has":
            inner = unwrap(args[0]) if len(args) == 1 else None
            if inner is None or inner.data != "member_dot":
                raise ConditionError(
                    f"{FIELD}: has(){position(node)} takes one field selection, as in"
                    " has(claims.environment)"
                )
        elif name not in _FUNCTIONS and name != "dyn":
            raise _unknown_function(name, node, _FUNCTIONS)
        _check_call(name, node, args, args[1] if len(args) == 2 else None, bound, patterns)
        return
    if data == "member_dot_arg":
        target, token = cast(Tree, node.children[0]), cast(lark.Token, node.children[1])
        method = str(token)
        args = arguments(node, 2)
        check_names(target, bound, patterns)
        if method in BINDING_MACROS:
            variable = name_of(args[0]) if len(args) == 2 else None
            if variable is None:
                raise ConditionError(
                    f"{FIELD}: {method}(){position(token)} takes a variable name and an"
                    f' expression, as in claims.groups.{method}(g, g == "ops")'
                )
            if variable == VARIABLE:
                raise ConditionError(
                    f"{FIELD}: {method}(){position(token)} must not name its variable"
                    f" {VARIABLE}, which would hide the token's claims"
                )
            check_names(args[1], bound | {variable}, patterns)
            return
        if method not in _FUNCTIONS:
            raise _unknown_function(method, token, _FUNCTIONS | BINDING_MACROS)
        _check_call(method, token, args, args[0] if len(args) == 1 else None, bound, patterns)
        return
    for child in subtrees(node):
        check_names(child, bound, patterns)


def _unknown_function(name: str, where: Tree | lark.Token, known: frozenset[str]) -> ConditionError:
    return ConditionError(
        f"{FIELD}: unknown function '{name}'{position(where)}{suggest(name, known)}"
    )


def _check_call(
    name: str,
    where: Tree | lark.Token,
    args: list[Tree],
    pattern: Tree | None,
    bound: frozenset[str],
    patterns: dict[str, Any],
) -> None:
    """A call's arguments checked; `pattern`, the argument matches() reads as one, compiled."""
    for arg in args:
        check_names(arg, bound, patterns)
    if name == "matches" and pattern is not None:
        _check_pattern(pattern, where, patterns)


def _check_pattern(node: Tree, where: Tree | lark.Token, patterns: dict[str, Any]) -> None:
    """A literal regular expression is compiled now, so a broken one is reported when the
    trust is applied rather than at every token."""
    found = unwrap(node)
    if found.data != "literal":
        return
    pattern = literal(found).value
    if not isinstance(pattern, str):
        return
    # Compiled as evaluation will compile it, with the same options and limits.
    try:
        patterns[pattern] = regexp(pattern)
    except PatternRefused as refused:
        raise ConditionError(
            f"{FIELD}: the regular expression {clip(pattern, 40)!r} of matches()"
            f"{position(where)} {refused.why}"
        ) from None


def _result_kind(tree: Tree) -> str | None:
    """What the expression gives when that is known not to be a boolean; None otherwise."""
    node = unwrap(tree)
    data, children = node.data, node.children
    if data == "expr" and len(children) == 3:  # a ? b : c gives b or c
        return _result_kind(cast(Tree, children[1])) or _result_kind(cast(Tree, children[2]))
    if data in ("addition", "multiplication"):
        return f"the result of {OPERATORS[cast(Tree, children[0]).data]}"
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
