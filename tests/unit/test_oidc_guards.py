"""Guard rails on conditions: a trust on a shared issuer must pin its tenant, preferably by id."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeiam.domain.conditions import Reason
from kubeiam.oidc.cel.condition import compile_condition
from kubeiam.oidc.guards import Finding, is_pinned, review_condition
from kubeiam.settings import MULTI_TENANT_ISSUERS, TENANT_CLAIMS

GITHUB = "https://token.actions.githubusercontent.com"
GITLAB = "https://gitlab.com"
PRIVATE = "https://issuer.example.com"


def review(source: str, issuer: str = GITHUB) -> list[Finding]:
    return review_condition(
        compile_condition(source),
        issuer=issuer,
        multi_tenant_issuers=MULTI_TENANT_ISSUERS,
        tenant_claims=TENANT_CLAIMS,
    )


def refusals(source: str, issuer: str = GITHUB) -> list[Finding]:
    return [finding for finding in review(source, issuer) if finding.refuses]


def pinned(source: str) -> bool:
    return is_pinned(compile_condition(source), TENANT_CLAIMS)


@pytest.mark.parametrize(
    "source",
    [
        'claims.repository_id == "123456"',
        '"123456" == claims.repository_id',
        'claims["repository_owner_id"] == "7890"',
        'claims.repository_id in ["1", "2"]',
        "claims.repository_owner_id == 7890",
        'claims.repository.startsWith("acme/")',
        'claims.repository.startsWith("acme/api")',
        'claims.ref == "refs/heads/main" && claims.repository_owner_id == "7890"',
        'claims.repository_owner_id == "7890" && claims.ref == "refs/heads/main"',
        'claims.repository_id == "1" || claims.repository_owner_id == "2"',
        '(claims.repository_id == "1" || claims.repository_id == "2") && has(claims.ref)',
        'claims.environment == "prod" ? claims.repository_id == "1" : claims.repository_id == "2"',
        'claims.repository_id == "1" ? true : claims.repository_owner_id == "2"',
        'false || claims.repository_id == "1"',
        "false",
        'claims.repository_id in [] || claims.repository_id == "1"',
        '(((claims.repository_id == "1")))',
    ],
)
def test_conditions_that_pin_a_tenant_claim(source: str) -> None:
    assert pinned(source)
    assert not refusals(source)


@pytest.mark.parametrize(
    "source",
    [
        "true",
        'claims.ref == "refs/heads/main"',
        'claims.repository_id != "1"',
        "has(claims.repository_id)",
        'claims.repository.matches("^acme/.*$")',
        'claims.repository.matches(".*")',
        'claims.repository.endsWith("/api")',
        'claims.repository.contains("acme")',
        'claims.repository.startsWith("acme")',
        'claims.repository.startsWith("/")',
        'claims.repository.startsWith("")',
        'claims.repository == ""',
        "claims.repository_id == claims.ref",
        "claims.repository_owner_id == true",
        'true || claims.repository_id == "1"',
        'claims.repository_id == "1" || claims.ref == "refs/heads/main"',
        '!(claims.repository_id == "1")',
        '!(claims.repository_id != "1")',
        'claims.repository_id in ["1", claims.ref]',
        'claims.groups.exists(g, claims.repository_id == "1")',
        'claims.repository_id == "1" ? true : true',
        'claims.environment == "prod" ? claims.repository_id == "1" : true',
        'claims.workflow == "acme/api"',
    ],
)
def test_conditions_that_do_not_pin(source: str) -> None:
    assert not pinned(source)


def test_an_unpinned_condition_on_github_is_refused_with_the_claims_that_would_pin_it() -> None:
    (finding,) = refusals('claims.ref == "refs/heads/main"')
    assert finding.reason is Reason.CONDITION_TOO_BROAD
    assert finding.refuses
    assert finding.message == (
        "spec.condition: https://token.actions.githubusercontent.com issues tokens to every"
        " GitHub repository; the condition must require one of the claims repository,"
        " repository_id, repository_owner, repository_owner_id to equal a fixed value (found"
        ' none), as in claims.repository_id == "123456".'
    )


def test_the_message_says_when_a_tenant_is_pinned_on_some_ways_only() -> None:
    (finding,) = refusals('claims.repository_id == "1" || claims.ref == "refs/heads/main"')
    assert "it compares repository_id to a fixed value, but not on every way it can be true" in (
        finding.message
    )


def test_gitlab_and_terraform_name_their_own_claims() -> None:
    (gitlab,) = refusals("true", "https://gitlab.com")
    assert "every project on gitlab.com" in gitlab.message
    assert "project_path, project_id, namespace_path, namespace_id" in gitlab.message
    (terraform,) = refusals("true", "https://app.terraform.io/")
    assert "terraform_organization_id" in terraform.message
    assert not refusals('claims.project_id == "42"', "https://gitlab.com")


@pytest.mark.parametrize(
    ("issuer", "audience", "claims", "pinning"),
    [
        (
            "https://accounts.google.com",
            "every Google account",
            "sub, hd",
            ['claims.sub == "113059226118543260398"', 'claims.hd == "acme.com"'],
        ),
        (
            "https://agent.buildkite.com",
            "every Buildkite organisation",
            "organization_slug, organization_id",
            [
                'claims.organization_slug == "acme"',
                'claims.organization_id == "0b5e0d2f-5d4c-4a6b-9d3e-2f1c8a7b6e5d"',
                'claims.sub.startsWith("organization:acme:pipeline:deploy:ref:refs/")',
            ],
        ),
    ],
)
def test_google_and_buildkite_are_shared_issuers_by_default(
    issuer: str, audience: str, claims: str, pinning: list[str]
) -> None:
    # Not pinned: the claims any tenant's token can carry (Google's client and email, which an
    # unverified account may claim; a Buildkite pipeline slug, unique only in its organisation).
    for broad in (
        "true",
        'claims.email == "ci@acme.com" && claims.azp == "1234.apps.googleusercontent.com"',
        'claims.pipeline_slug == "deploy" && claims.build_branch == "main"',
    ):
        (finding,) = refusals(broad, issuer)
        assert finding.reason is Reason.CONDITION_TOO_BROAD
        assert f"issues tokens to {audience}; the condition must require one of the claims" in (
            finding.message
        )
        assert f"the claims {claims} to equal" in finding.message
    for condition in pinning:
        assert not refusals(condition, issuer)


def test_github_subjects_do_not_pin_a_repository() -> None:
    # An organisation may customise its subject to leave the repository out.
    assert refusals('claims.sub == "repo:acme/api:ref:refs/heads/main"')
    assert not refusals('claims.sub == "project_path:acme/api:ref_type:branch:ref:main"', GITLAB)


def test_issuers_are_compared_without_trailing_slash_or_case_in_the_host() -> None:
    for issuer in (GITHUB + "/", "https://Token.Actions.GitHubUserContent.com"):
        assert refusals("true", issuer)


def test_an_issuer_that_is_not_shared_needs_no_pin() -> None:
    assert review("true", PRIVATE) == []
    assert review('claims.sub == "system:serviceaccount:ci:deployer"', PRIVATE) == []


def test_the_configured_lists_decide() -> None:
    condition = compile_condition('claims.team == "platform"')
    shared = review_condition(
        condition,
        issuer=PRIVATE,
        multi_tenant_issuers=[PRIVATE],
        tenant_claims=["tenant"],
    )
    assert [finding.reason for finding in shared] == [Reason.CONDITION_TOO_BROAD]
    assert "many tenants alike" in shared[0].message
    assert "the claims tenant" in shared[0].message
    assert not review_condition(
        condition,
        issuer=PRIVATE,
        multi_tenant_issuers=[PRIVATE],
        tenant_claims=["team"],
    )


def test_pinning_a_name_without_its_id_warns_and_names_the_id() -> None:
    (finding,) = review('claims.repository == "acme/api"')
    assert finding.reason is Reason.RENAMEABLE_CLAIM
    assert not finding.refuses
    assert "a renamed repository, or one deleted and created again" in finding.message
    assert "require claims.repository_id to equal its id as well" in finding.message


@pytest.mark.parametrize(
    ("name", "twin"),
    [
        ("repository", "repository_id"),
        ("repository_owner", "repository_owner_id"),
        ("project_path", "project_id"),
        ("namespace_path", "namespace_id"),
        ("terraform_organization_name", "terraform_organization_id"),
        ("organization_slug", "organization_id"),  # Buildkite
    ],
)
def test_each_renameable_name_has_its_id_twin(name: str, twin: str) -> None:
    warned = review(f'claims.{name} == "acme"', PRIVATE)
    assert [finding.reason for finding in warned] == [Reason.RENAMEABLE_CLAIM]
    assert f"claims.{twin}" in warned[0].message
    assert review(f'claims.{name} == "acme" && claims.{twin} == "1"', PRIVATE) == []


def test_a_path_prefix_pins_the_owner_and_asks_for_the_owners_id() -> None:
    (warning,) = review('claims.repository.startsWith("acme/")')
    assert "claims.repository_owner is a name that can change hands" in warning.message
    assert "require claims.repository_owner_id" in warning.message
    assert (
        review('claims.repository.startsWith("acme/") && claims.repository_owner_id == "7"') == []
    )
    (gitlab,) = review('claims.project_path.startsWith("acme/infra/")', "https://gitlab.com")
    assert "require claims.namespace_id" in gitlab.message


def test_the_warning_looks_at_each_way_the_condition_can_be_true() -> None:
    both = 'claims.repository == "acme/api" && claims.repository_id == "1"'
    assert review(both) == []
    assert review(f'({both}) || claims.repository_owner_id == "7"') == []
    partly = review(f'({both}) || claims.repository == "acme/web"')
    assert [finding.reason for finding in partly] == [Reason.RENAMEABLE_CLAIM]


def test_a_github_style_condition_that_is_tight_passes_clean() -> None:
    source = (
        'claims.repository == "acme/api" && claims.repository_id == "123456"'
        ' && claims.repository_owner == "acme" && claims.repository_owner_id == "7890"'
        ' && claims.ref == "refs/heads/main"'
    )
    assert review(source) == []


# -- properties --------------------------------------------------------------------------------
# A condition is drawn as a small tree, rendered to CEL, and judged twice: by the guard rails on
# the compiled condition, and by the rules as the module docstring states them, on the tree.

PINNING = [
    'claims.repository == "acme/api"',
    '"123456" == claims.repository_id',
    'claims["repository_owner"] == "acme"',
    'claims.repository_owner_id in ["1", "2"]',
    'claims.repository.startsWith("acme/")',
    "false",
]
NOT_PINNING = [
    "true",
    'claims.ref == "refs/heads/main"',
    'claims.repository != "acme/api"',
    "has(claims.repository)",
    'claims.repository.matches(".*")',
    'claims.repository.startsWith("acme")',
    'claims.repository == ""',
    'claims.groups.exists(g, g == "ops")',
]

Tree = Any  # ("atom", text, pins) | ("not", tree) | ("and"|"or", a, b) | ("if", c, a, b)

atoms = st.sampled_from([("atom", text, True) for text in PINNING]) | st.sampled_from(
    [("atom", text, False) for text in NOT_PINNING]
)


def nesting(tree: Tree) -> int:
    return 0 if tree[0] == "atom" else 1 + max(nesting(part) for part in tree[1:])


# At most 8 levels, so the rendered condition stays within the compiler's depth limit.
trees = st.recursive(
    atoms,
    lambda inner: (
        st.tuples(st.just("not"), inner)
        | st.tuples(st.sampled_from(["and", "or"]), inner, inner)
        | st.tuples(st.just("if"), inner, inner, inner)
    ),
    max_leaves=12,
).filter(lambda tree: nesting(tree) <= 8)


def render(tree: Tree) -> str:
    kind = tree[0]
    if kind == "atom":
        return str(tree[1])
    if kind == "not":
        return f"!({render(tree[1])})"
    if kind == "if":
        return f"(({render(tree[1])}) ? ({render(tree[2])}) : ({render(tree[3])}))"
    operator = "&&" if kind == "and" else "||"
    return f"({render(tree[1])} {operator} {render(tree[2])})"


def oracle(tree: Tree) -> bool:
    kind = tree[0]
    if kind == "atom":
        return bool(tree[2])
    if kind == "not":
        return False
    if kind == "and":
        return oracle(tree[1]) or oracle(tree[2])
    if kind == "or":
        return oracle(tree[1]) and oracle(tree[2])
    return (oracle(tree[1]) or oracle(tree[2])) and oracle(tree[3])


@given(trees)
def test_the_guard_rails_follow_the_stated_rules(tree: Tree) -> None:
    assert pinned(render(tree)) is oracle(tree)


@given(trees)
def test_requiring_a_fixed_repository_always_pins(tree: Tree) -> None:
    assert pinned(f'({render(tree)}) && claims.repository == "x"')
    assert not refusals(f'({render(tree)}) && claims.repository == "x"')


@given(trees, st.sampled_from([text for text in NOT_PINNING]))
def test_an_alternative_that_pins_nothing_unpins_any_condition(tree: Tree, other: str) -> None:
    assert not pinned(f"({render(tree)}) || {other}")
    assert refusals(f"({render(tree)}) || {other}")


@given(trees)
def test_pinning_the_id_beside_the_name_silences_the_rename_warning(tree: Tree) -> None:
    source = f'({render(tree)}) && claims.repository == "x" && claims.repository_id == "1"'
    assert "claims.repository is" not in " ".join(finding.message for finding in review(source))
