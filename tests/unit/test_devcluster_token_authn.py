"""The AuthenticationConfiguration the local API server is started with (devcluster/token_authn)."""

from __future__ import annotations

import pytest

from kubeiam.devcluster.token_authn import (
    API_VERSION,
    ROLE_GROUP_PREFIX,
    UID_EXPRESSION,
    USERNAME_PREFIX,
    authentication_config,
    groups_expression,
)

ISSUER = "https://127.0.0.1:8443"
AUDIENCE = ISSUER + "/kubernetes"
CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_one_jwt_authenticator_names_the_issuer_its_audience_and_its_ca() -> None:
    document = authentication_config(ISSUER, AUDIENCE, CA)
    assert document["apiVersion"] == API_VERSION == "apiserver.config.k8s.io/v1"
    assert document["kind"] == "AuthenticationConfiguration"
    (jwt,) = document["jwt"]
    assert jwt["issuer"] == {"url": ISSUER, "audiences": [AUDIENCE], "certificateAuthority": CA}


def test_the_username_is_the_prefixed_subject_and_groups_are_the_prefixed_roles() -> None:
    mappings = authentication_config(ISSUER, AUDIENCE, CA)["jwt"][0]["claimMappings"]
    assert mappings["username"] == {"claim": "sub", "prefix": USERNAME_PREFIX}
    assert mappings["groups"] == {"expression": groups_expression()}
    assert mappings["uid"] == {"expression": UID_EXPRESSION}
    assert "kubeiam.io/credential_id" in UID_EXPRESSION
    assert "kubeiam.io/trust_uid" in UID_EXPRESSION
    assert {extra["key"] for extra in mappings["extra"]} == {
        "kubeiam.io/namespace",
        "kubeiam.io/account",
    }


def test_prefixes_keep_kube_iam_identities_out_of_system_names() -> None:
    assert USERNAME_PREFIX == "kube-iam:"
    assert ROLE_GROUP_PREFIX.startswith(USERNAME_PREFIX)
    assert not USERNAME_PREFIX.startswith("system:")


def test_the_groups_expression_splits_the_scope_and_skips_empty_parts() -> None:
    expression = groups_expression("p:")
    assert expression == (
        "has(claims.scope) ? claims.scope.split(' ').filter(r, r != '').map(r, 'p:' + r) : []"
    )


@pytest.mark.parametrize("prefix", ["a'b", "a\\b"])
def test_a_prefix_that_would_break_the_cel_literal_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="CEL string literal"):
        groups_expression(prefix)
