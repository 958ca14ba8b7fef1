"""Trust conditions in CEL: what compiles, what a person reads when it does not, and how
evaluation treats missing claims, type errors and hostile tokens."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
import re2
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kubeiam.domain.conditions import Reason
from kubeiam.oidc.cel import limits as cel
from kubeiam.oidc.cel.condition import compile_condition
from kubeiam.oidc.cel.errors import ConditionError, ConditionEvaluationError
from kubeiam.oidc.cel.shape import Claim, Compare, Logical, Method, Not, Value, ValueList

GITHUB: dict[str, Any] = {
    "iss": "https://token.actions.githubusercontent.com",
    "sub": "repo:acme/api:ref:refs/heads/main",
    "aud": "sts.example",
    "repository": "acme/api",
    "repository_id": "123456",
    "repository_owner": "acme",
    "repository_owner_id": "7890",
    "ref": "refs/heads/main",
    "environment": "prod",
    "workflow": "deploy",
    "groups": ["dev", "ops"],
}


def evaluate(source: str, claims: dict[str, Any] | None = None) -> bool:
    return compile_condition(source).evaluate(GITHUB if claims is None else claims)


def compile_error(source: str) -> str:
    with pytest.raises(ConditionError) as caught:
        compile_condition(source)
    assert caught.value.reason is Reason.CONDITION_INVALID
    return caught.value.message


def evaluation_error(source: str, claims: dict[str, Any] | None = None) -> str:
    with pytest.raises(ConditionEvaluationError) as caught:
        evaluate(source, claims)
    assert caught.value.reason is Reason.CONDITION_ERROR
    return caught.value.message


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('claims.repository == "acme/api" && claims.ref == "refs/heads/main"', True),
        ('claims.repository == "acme/api" && claims.ref == "refs/heads/dev"', False),
        ("claims.repository_id == '123456'", True),
        ('claims["repository_owner"] == "acme"', True),
        ('"acme/api" == claims.repository', True),
        ('claims.environment in ["prod", "staging"]', True),
        ('"ops" in claims.groups', True),
        ('claims.groups.exists(g, g == "ops")', True),
        ('claims.groups.all(g, g.startsWith("d"))', False),
        ('claims.repository.startsWith("acme/")', True),
        ('claims.ref.matches("^refs/heads/(main|release/.+)$")', True),
        ('claims.sub.endsWith(":ref:refs/heads/main")', True),
        ("has(claims.environment) && !has(claims.job_workflow_ref)", True),
        ('has(claims.job_workflow_ref) ? claims.job_workflow_ref == "x" : true', True),
        ("size(claims.groups) == 2 && claims.ref.size() > 4", True),
        ("int(claims.repository_id) > 100000", True),
        ('.claims.workflow == "deploy"', True),
        ('type(claims.ref) == string && dyn(claims.ref) != ""', True),
        ('// a comment\nclaims.repository == "acme/api"', True),
        ("true", True),
        ("false", False),
    ],
)
def test_conditions_read_the_claims(source: str, expected: bool) -> None:
    assert evaluate(source) is expected


def test_a_compiled_condition_keeps_its_source_and_is_equal_by_it() -> None:
    source = 'claims.repository == "acme/api"'
    assert compile_condition(source).source == source
    assert compile_condition(source) == compile_condition(source)


def test_a_syntax_error_names_line_and_column_and_shows_the_line() -> None:
    message = compile_error('claims.repository == "acme/api" && claims.ref = "refs/heads/main"')
    assert message.startswith("spec.condition: syntax error at line 1, column 47:")
    assert "==" in message  # the hint for a single =
    source_line, caret = message.splitlines()[1:3]
    assert source_line.strip().startswith("claims.repository")
    assert caret.index("^") == source_line.index("claims") + 46


def test_a_condition_that_stops_short_points_where_text_is_missing() -> None:
    message = compile_error('claims.repository == "acme/api" &&\n  claims.ref ==')
    assert "syntax error at line 2, column 16: the condition ends too early" in message
    assert message.splitlines()[-1].index("^") == message.splitlines()[-2].index("==") + 2


def test_an_unclosed_parenthesis_says_what_is_expected() -> None:
    message = compile_error('(claims.repository == "acme/api"')
    assert "ends too early, expected ')'" in message


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ('claims.repository == "unterminated', "a string is not closed"),
        ("claims..repository", "unexpected '.'"),
        ("claims.repository == 'a' @ 1", "unexpected character '@'"),
        ("", "ends too early"),
    ],
)
def test_syntax_errors_read_as_sentences(source: str, fragment: str) -> None:
    assert fragment in compile_error(source)


def test_a_long_line_is_clipped_around_the_error() -> None:
    source = " && ".join(f'claims.c{i} == "v"' for i in range(40)) + " &&& true"
    message = compile_error(source)
    shown, caret = message.splitlines()[1:3]
    assert len(shown) < 120
    assert shown[caret.index("^")] == "&"


def test_an_unknown_variable_is_an_error_at_compile_time() -> None:
    message = compile_error('claim.repository == "acme/api"')
    assert message == (
        "spec.condition: undeclared reference to 'claim' at line 1, column 1 (did you mean"
        " 'claims'?); the only variable is claims"
    )


def test_a_name_bound_by_a_macro_exists_only_inside_it() -> None:
    assert evaluate('claims.groups.exists(g, g == "ops")')
    message = compile_error('claims.groups.exists(g, g == "ops") && g == "dev"')
    assert "undeclared reference to 'g' at line 1, column 40" in message
    inner = compile_error('claims.groups.exists(g, h == "ops")')
    assert "the only variables here are claims and g" in inner


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ('claims.repository.startswith("acme/")', "unknown function 'startswith' at line 1,"),
        ('lower(claims.repository) == "x"', "unknown function 'lower'"),
        ('claims.groups.reduce(a, b, "", a + b) == ""', "unknown function 'reduce'"),
        ("claims.groups.exists(1, true)", "takes a variable name and an expression"),
        ("claims.groups.exists(claims, true)", "must not name its variable claims"),
        ("has(claims)", "has() at line 1, column 1 takes one field selection"),
        ('.repository == "x"', "undeclared reference to '.repository'"),
        ("google.protobuf.Duration{seconds: 1} == duration('1s')", "message creation"),
    ],
)
def test_unknown_functions_and_misused_macros_are_errors_at_compile_time(
    source: str, fragment: str
) -> None:
    assert fragment in compile_error(source)


def test_the_suggestion_for_a_mistyped_function() -> None:
    assert "(did you mean 'startsWith'?)" in compile_error('claims.ref.startswith("refs/")')


@pytest.mark.parametrize(
    ("source", "gives"),
    [
        ("claims.repository_id + 1", "the result of +"),
        ('"acme/api"', "a string"),
        ("42", "a number"),
        ("[true]", "a list"),
        ("{'a': true}", "a map"),
        ("claims", "the map of claims"),
        ("size(claims.groups)", "a number"),
        ('claims.groups.map(g, g == "x")', "a list"),
        ('has(claims.x) ? true : "no"', "a string"),
        ("null", "null"),
    ],
)
def test_a_result_known_not_to_be_boolean_is_an_error_at_compile_time(
    source: str, gives: str
) -> None:
    message = compile_error(source)
    assert f"the condition must be true or false, but it gives {gives}" in message


def test_a_result_that_turns_out_not_boolean_is_an_evaluation_error() -> None:
    message = evaluation_error("claims.repository")
    assert message == "the condition gave a value of type string, not true or false"


def test_a_missing_claim_is_an_evaluation_error_that_suggests_has() -> None:
    message = evaluation_error('claims.job_workflow_ref == "x"')
    assert "the token has no claim or key 'job_workflow_ref'" in message
    assert "has(claims.job_workflow_ref)" in message


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("claims.repository_id + 1 == 2", "no operator + for string and int"),
        ("claims.repository_id == 123456", "no operator == for string and int"),
        ("claims.groups[5] == 'x'", "could not be evaluated"),
        ("1 / (size(claims.groups) - 2) == 1", "division by zero"),
    ],
)
def test_type_errors_are_evaluation_errors_in_plain_words(source: str, fragment: str) -> None:
    message = evaluation_error(source)
    assert fragment in message
    assert "activation" not in message  # cel-python's dump of every variable stays out


def test_conditions_nested_deeper_than_the_limit_are_refused_at_compile_time() -> None:
    message = compile_error("(" * 40 + "true" + ")" * 40)
    assert "nests too deeply" in message
    chain = " && ".join(["true"] * 130)
    assert evaluate(chain)
    assert "nests too deeply" in compile_error(" && ".join(["true"] * 400))


def test_a_quadratic_macro_is_stopped_by_the_cost_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # The step budget, not the wall-clock backstop, must stop it: on a loaded machine the
    # backstop could trip first, so it is moved out of the way (it has a test of its own).
    monkeypatch.setattr(cel, "MAX_SECONDS", 600.0)
    claims = {"groups": [str(i) for i in range(3000)]}
    message = evaluation_error(
        "claims.groups.all(a, claims.groups.all(b, a == b || a != b))", claims
    )
    assert f"exceeded its cost limit of {cel.MAX_COST} steps" in message


def test_copying_a_large_claim_in_a_loop_costs_what_it_weighs() -> None:
    claims = {"groups": list(range(5000)), "blob": "x" * 50_000}
    message = evaluation_error("claims.groups.map(g, claims.blob + claims.blob).size() > 0", claims)
    assert "cost limit" in message


def test_the_deadline_stops_what_the_budget_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cel, "MAX_SECONDS", 0.0)
    message = evaluation_error('claims.groups.exists(g, g == "ops")')
    assert "ran longer than 0.0 seconds" in message


def test_a_macro_over_a_realistic_group_list_fits_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cel, "MAX_SECONDS", 600.0)  # the step budget is what is tested here
    claims = {"groups": [f"group-{i}" for i in range(1000)]}
    assert evaluate('claims.groups.exists(g, g == "group-999")', claims)


@pytest.mark.parametrize(
    ("claims", "fragment"),
    [
        ({"a": [[[[[[[[[[[[[[[[[[[[["deep"]]]]]]]]]]]]]]]]]]]]]}, "nest deeper than"),
        ({"groups": list(range(20_000))}, "more than 10000 values"),
        ({"blob": "x" * (300 * 1024)}, "characters"),
        ({"n": 2**64}, "64-bit range"),
        ({"n": float("nan")}, "not finite"),
        ({"when": object()}, "which JSON does not have"),
    ],
)
def test_hostile_claims_are_refused_before_evaluation(
    claims: dict[str, Any], fragment: str
) -> None:
    message = evaluation_error("true", claims)
    assert fragment in message


def test_regular_expressions_take_linear_time_on_hostile_input() -> None:
    # A backtracking engine needs about 2**4000 steps here, RE2 one pass: the bound tells
    # the two apart by astronomical orders of magnitude, so a loaded machine cannot trip it.
    claims = {"ref": "a" * (cel.MAX_MATCH_CHARACTERS - 1) + "!"}
    started = time.monotonic()
    assert not evaluate('claims.ref.matches("^(a+)+$")', claims)
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    "source",
    [
        "claims.ref.matches('refs/heads/(main')",
        "matches(claims.ref, '[main')",
        "claims.ref.matches(r'a{1001}')",
    ],
)
def test_a_literal_regular_expression_that_does_not_compile_is_refused_at_compile_time(
    source: str,
) -> None:
    message = compile_error(source)
    assert "regular expression" in message
    assert "is not valid RE2" in message


def test_a_regular_expression_read_from_a_claim_is_left_to_evaluation() -> None:
    assert compile_condition("claims.ref.matches(claims.sub)")


def outcome(
    source: str, claims: dict[str, Any]
) -> bool | ConditionError | ConditionEvaluationError:
    """What a condition does with these claims: its value, or the error a person would read."""
    try:
        return compile_condition(source).evaluate(claims)
    except (ConditionError, ConditionEvaluationError) as error:
        return error


@given(st.text(max_size=200))
def test_any_text_compiles_or_is_refused_with_a_condition_error(source: str) -> None:
    result = outcome(source, GITHUB)
    if isinstance(result, ConditionError):
        assert result.message.startswith("spec.condition: ")
    elif isinstance(result, ConditionEvaluationError):
        assert result.message


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


@given(st.dictionaries(st.text(max_size=12), json_values, max_size=8))
def test_any_json_claims_give_a_boolean_or_an_evaluation_error(claims: dict[str, Any]) -> None:
    result = outcome(
        'has(claims.repository) && claims.repository == "acme/api" || "x" in claims', claims
    )
    assert isinstance(result, bool | ConditionEvaluationError)


def test_the_shape_names_claims_compared_with_literals() -> None:
    shape = compile_condition(
        '(claims.repository == "acme/api" || claims["repository_id"] in ["1", "2"])'
        ' && !claims.repository_owner.startsWith("acme/")'
    ).expression
    assert shape == Logical(
        "&&",
        Logical(
            "||",
            Compare("==", Claim("repository"), Value("acme/api")),
            Compare("in", Claim("repository_id"), ValueList((Value("1"), Value("2")))),
        ),
        Not(Method(Claim("repository_owner"), "startsWith", (Value("acme/"),))),
    )


def test_the_shape_reads_literals_as_cel_decodes_them() -> None:
    shape = compile_condition(r'claims.repository == "acme\x2fapi"').expression
    assert shape == Compare("==", Claim("repository"), Value("acme/api"))


def test_a_literal_beyond_64_bits_is_an_error_at_compile_time() -> None:
    message = compile_error("claims.n in [1, 99999999999999999999999]")
    assert message == (
        "spec.condition: the literal 99999999999999999999999 at line 1, column 17 cannot be"
        " used: it is out of range"
    )


# -- matches(): one RE2 search is charged before it runs ---------------------------------------
# RE2 is linear in the text, but the factor is the compiled program: when its DFA runs out of
# memory it falls back to an NFA that visits every instruction for every byte. The review's
# attack: a ~22 KB claim and a 91-character pattern ran 2.4 s in one step, past the deadline
# that is only checked between steps.


def hostile_pattern(atom: str, width: int, blocks: int) -> str:
    """A pattern whose program grows with width * blocks and whose DFA explodes on `ab` text."""
    return f"{atom}{{{width}}}" * blocks + "c"


def hostile_text(alphabet: str, length: int, seed: int = 0) -> str:
    chooser = random.Random(seed)  # noqa: S311 - reproducible test text, not a secret
    return "".join(chooser.choice(alphabet) for _ in range(length))


class RE2Work:
    """Every RE2 search that actually runs, weighed as the cost model weighs it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.units = 0
        self.searches = 0
        search = re2._Regexp.search

        def weighed(regexp: Any, text: str, *args: Any) -> Any:
            program = regexp.programsize
            reverse = regexp.reverseprogramsize
            self.units += len(text.encode("utf-8", "surrogatepass")) * (
                program + (reverse if reverse > 0 else program) + cel.MATCH_BYTE_OVERHEAD
            )
            self.searches += 1
            return search(regexp, text, *args)

        monkeypatch.setattr(re2._Regexp, "search", weighed)


def test_one_matches_over_a_large_claim_is_refused_before_it_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    work = RE2Work(monkeypatch)
    pattern = hostile_pattern("[ab]", 1000, 9)
    assert len(pattern) == 91  # the review's length
    claims = {"blob": hostile_text("ab", 22_000)}
    message = evaluation_error(f'claims.blob.matches("{pattern}")', claims)
    assert f"more than the {cel.MAX_MATCH_CHARACTERS} characters matches() reads" in message
    assert work.searches == 0


def test_matches_is_charged_text_times_program_before_it_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cel, "MAX_SECONDS", 600.0)  # the step budget must stop it, not the clock
    work = RE2Work(monkeypatch)
    claims = {
        "ref": hostile_text("ab", cel.MAX_MATCH_CHARACTERS),
        "p": hostile_pattern("[ab]", 1000, 9),
    }
    message = evaluation_error("claims.ref.matches(claims.p)", claims)
    assert f"exceeded its cost limit of {cel.MAX_COST} steps" in message
    assert work.searches == 0


def test_a_regular_expression_with_a_large_program_is_refused_at_compile_time() -> None:
    pattern = hostile_pattern("[ab]", 1000, 11)
    message = compile_error(f'claims.ref.matches("{pattern}")')
    assert message.startswith("spec.condition: the regular expression '[ab]{1000}")
    assert f"{cel.MAX_PATTERN_PROGRAM} instructions allowed" in message


def test_regular_expressions_that_compile_are_refused_when_read_from_a_claim_too() -> None:
    claims = {"ref": "main", "p": hostile_pattern("[ab]", 1000, 11)}
    message = evaluation_error("claims.ref.matches(claims.p)", claims)
    assert f"{cel.MAX_PATTERN_PROGRAM} instructions allowed" in message


def compiled_patterns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every pattern RE2 is asked to compile from now on."""
    compiled: list[str] = []
    compile_pattern = re2.compile

    def counted(pattern: str, *args: Any) -> Any:
        compiled.append(pattern)
        return compile_pattern(pattern, *args)

    monkeypatch.setattr(re2, "compile", counted)
    return compiled


def test_a_pattern_read_from_a_claim_pays_for_its_compilation_before_it_is_compiled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Compiling a 4 KB pattern of Unicode classes takes RE2 up to half a second, whatever the
    # text; a token that brings a new one each time must not get that for free.
    monkeypatch.setattr(cel, "MAX_SECONDS", 600.0)
    compiled = compiled_patterns(monkeypatch)
    claims = {"ref": "main", "p": "\\PL" * 1365}
    message = evaluation_error("claims.ref.matches(claims.p)", claims)
    assert f"exceeded its cost limit of {cel.MAX_COST} steps" in message
    assert claims["p"] not in compiled


def test_a_literal_pattern_is_compiled_once_with_its_condition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    condition = compile_condition('claims.ref.matches("^refs/heads/(main|release/.+)$")')
    compiled = compiled_patterns(monkeypatch)
    for _ in range(3):
        assert condition.evaluate({"ref": "refs/heads/main"})
    assert compiled == []


def test_re2_errors_are_not_written_to_the_log(capfd: pytest.CaptureFixture[str]) -> None:
    # RE2 logs a failed compile with the pattern, which may come from a token's claim.
    claims = {"ref": "main", "p": "secret-looking-(" + "x" * 20}
    evaluation_error("claims.ref.matches(claims.p)", claims)
    evaluation_error("claims.ref.matches(claims.p)", {"ref": "x", "p": r"\pL{1000}"})
    assert "secret-looking" not in capfd.readouterr().err
    assert "pattern" not in capfd.readouterr().err.lower()


def test_matches_on_a_realistic_ref_costs_little() -> None:
    condition = compile_condition(
        'claims.ref.matches("^refs/heads/(main|release/v[0-9]+\\\\.[0-9]+)$")'
    )
    assert condition.evaluate({"ref": "refs/heads/release/v1.2"})
    assert not condition.evaluate({"ref": "refs/heads/feature"})


_ATOMS = {"ab": "[ab]", "aé": "[aé]", "a\U0001d51f": "[a\U0001d51f]", "any": "."}


@st.composite
def hostile_conditions(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A condition of at most the schema's length that calls matches() as often as it fits,
    with DFA-hostile patterns over claims within the caps (multi-byte letters weigh more in
    RE2's UTF-8)."""
    alphabet = draw(st.sampled_from(["ab", "aé", "a\U0001d51f"]))
    atom = draw(st.sampled_from([_ATOMS[alphabet], ".", "\\pL", "\\w"]))
    pattern = hostile_pattern(atom, draw(st.integers(1, 1000)), draw(st.integers(1, 12)))
    text = hostile_text(
        alphabet, draw(st.integers(1, cel.MAX_MATCH_CHARACTERS)), draw(st.integers())
    )
    if draw(st.booleans()):
        call = f'claims.t.matches("{pattern}")'
        claims = {"t": text}
    else:
        call = "claims.t.matches(claims.p)"
        claims = {"t": text, "p": pattern}
    calls = max(1, min(draw(st.integers(1, 200)), (MAX_CONDITION_LENGTH + 4) // (len(call) + 4)))
    return " || ".join([call] * calls), claims


MAX_CONDITION_LENGTH = 4096  # FederationTrust.spec.condition's maxLength in the schema


@example(
    (
        " || ".join([f'claims.t.matches("{hostile_pattern("[ab]", 1000, 9)}")'] * 34),
        {"t": hostile_text("ab", 4096)},
    )
)
@settings(max_examples=40, deadline=None)
@given(hostile_conditions())
def test_no_condition_within_the_schema_runs_past_the_budget(
    case: tuple[str, dict[str, Any]],
) -> None:
    source, claims = case
    assert len(source) <= MAX_CONDITION_LENGTH
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cel, "MAX_SECONDS", 600.0)  # only the step budget may stop it here
        work = RE2Work(patch)
        result = outcome(source, claims)
    if isinstance(result, ConditionEvaluationError):
        assert "seconds" not in result.message
    assert work.units <= cel.MAX_COST * cel.MATCH_UNITS_PER_STEP


def test_the_costliest_search_the_budget_admits_ends_well_within_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The one wall-clock assertion of the cost model, a generous backstop: the search below is
    # the largest a budget admits (tens of milliseconds), held to the whole deadline.
    monkeypatch.setattr(cel, "MAX_SECONDS", 600.0)
    work = RE2Work(monkeypatch)
    pattern = hostile_pattern("[ab]", 1000, 9)
    regexp = re2.compile(pattern)
    per_byte = regexp.programsize + regexp.reverseprogramsize + cel.MATCH_BYTE_OVERHEAD
    claims = {"t": hostile_text("ab", (cel.MAX_COST - 200) * cel.MATCH_UNITS_PER_STEP // per_byte)}
    started = time.monotonic()
    assert not evaluate(f'claims.t.matches("{pattern}")', claims)
    elapsed = time.monotonic() - started
    assert work.units > 0.9 * cel.MAX_COST * cel.MATCH_UNITS_PER_STEP
    assert elapsed < cel.MAX_SECONDS
