"""Messages for a person: syntax errors with a caret, cel-python's errors as sentences."""

from __future__ import annotations

import difflib
import re
from typing import Final

from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError

from kubeiam.oidc.cel.tree import FIELD, OPERATORS

_TERMINALS: Final = {
    "RPAR": "')'",
    "RSQB": "']'",
    "RBRACE": "'}'",
    "COLON": "':'",
    "COMMA": "','",
    "IDENT": "a name",
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
_OVERLOAD = re.compile(r"Token\('RULE', '(\w+)'\) applied to '\((.*)\)'")
_CLASS = re.compile(r"<class '[\w.]*?(\w+)'>")


def syntax_message(source: str, error: CELParseError) -> str:
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
        what = f"unexpected {clip(str(token.value), 40)!r}"
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


def clip(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 3] + "..."


def suggest(name: str, known: frozenset[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def type_name(value: object) -> str:
    name = _CEL_TYPE_NAMES.get(type(value).__name__, type(value).__name__)
    return f"a value of type {name}" if name != "null" else "null"


def describe(error: CELEvalError) -> str:
    """A sentence for a person from cel-python's error, without its dump of the activation."""
    args = error.args
    text = str(args[0]) if args else "unknown error"
    exception = args[1] if len(args) > 1 else None
    details = args[2] if len(args) > 2 else None
    if exception is KeyError or text.startswith("no such member"):
        key = details[0] if isinstance(details, tuple) and details else None
        match = re.search(r"'([^']*)'", text)
        name = str(key) if key is not None else (match.group(1) if match else "?")
        name = clip(name, 64)
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
        operator = OPERATORS.get(overload.group(1), overload.group(1))
        types = [_CEL_TYPE_NAMES.get(name, name) for name in _CLASS.findall(overload.group(2))]
        return f"no operator {operator} for {' and '.join(types)}; CEL does not convert types"
    text = text.split(" (in activation", 1)[0]
    return clip(" ".join(text.split()), 160)
