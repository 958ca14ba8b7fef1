"""FederationTrusts as users meet them, against the real control plane and a real local issuer."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubeiam.devcluster.binaries import REPO_ROOT
from kubeiam.settings import MULTI_TENANT_ISSUERS

from .conftest import ORGANIZATION
from .credentials_support import account_manifest, many
from .oidc_issuer import LocalIssuer
from .support import ClusterHandle, OperatorProcess, admitted_before_the_webhook, wait_for

AUDIENCE = "sts.kubeiam.test"
PINNED = "claims.repository == 'acme/api' && claims.ref == 'refs/heads/main'"
# Issuers the module's operator is told about before it starts: a GitHub-Actions-like one
# (multi-tenant, so its trusts must pin a repository) and one per test that breaks an issuer.
SPARE_ISSUERS = 8
EXAMPLE_ISSUERS = (
    "https://token.actions.githubusercontent.com",
    "https://oidc.prod-cluster.example.com",
)


@pytest.fixture(scope="module")
def issuers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LocalIssuer]]:
    ca_dir = tmp_path_factory.mktemp("issuer-ca")
    started = [LocalIssuer(ca_dir=ca_dir).start() for _ in range(SPARE_ISSUERS + 1)]
    try:
        yield started
    finally:
        for issuer in started:
            issuer.stop()


@pytest.fixture(scope="module")
def issuer_env(issuers: list[LocalIssuer]) -> dict[str, str]:
    """The settings a platform team would give: the test CA trusted (never verification off),
    loopback allowed explicitly, an allowed-issuers list, and quick retries for the tests."""
    return {
        "KUBEIAM_ORGANIZATION": ORGANIZATION,
        "KUBEIAM_ISSUER_CA_BUNDLE": str(issuers[0].ca_bundle),
        "KUBEIAM_ISSUER_ALLOWED_NETWORKS": json.dumps(["127.0.0.0/8", "::1/128"]),
        "KUBEIAM_ALLOWED_ISSUERS": json.dumps(
            [issuer.url for issuer in issuers]
            + ["https://cluster.example.internal", *EXAMPLE_ISSUERS, *MULTI_TENANT_ISSUERS]
        ),
        # The default shared issuers (GitHub among them), and the local GitHub-like one.
        "KUBEIAM_MULTI_TENANT_ISSUERS": json.dumps([issuers[0].url, *MULTI_TENANT_ISSUERS]),
        "KUBEIAM_MAX_TRUSTS_PER_ACCOUNT": "3",
        "KUBEIAM_ISSUER_RETRY_MIN": "1",
        "KUBEIAM_ISSUER_RETRY_MAX": "2",
        "KUBEIAM_ISSUER_REFRESH_MIN": "1",
        # Longer than any wait here: a held-open request stays open while a test looks.
        "KUBEIAM_ISSUER_READ_TIMEOUT": "60",
    }


@pytest.fixture
def github(issuers: list[LocalIssuer], trust_operator: OperatorProcess) -> LocalIssuer:
    return issuers[0]


@pytest.fixture(scope="module")
def spares(issuers: list[LocalIssuer]) -> Iterator[LocalIssuer]:
    """Each test that breaks an issuer gets one of its own, so no cached check carries over."""
    return iter(issuers[1:])


@pytest.fixture
def spare(spares: Iterator[LocalIssuer], trust_operator: OperatorProcess) -> Iterator[LocalIssuer]:
    issuer = next(spares)
    yield issuer
    issuer.up()


def trust_manifest(name: str, issuer: str, condition: str = PINNED, **spec: Any) -> str:
    body = {
        "apiVersion": "iam.kubeiam.io/v1alpha1",
        "kind": "FederationTrust",
        "metadata": {"name": name},
        "spec": {
            "serviceAccountName": "pipeline",
            "displayName": f"{name} trust",
            "issuer": issuer,
            "audiences": [AUDIENCE],
            "condition": condition,
            **spec,
        },
    }
    return json.dumps(body)


def ready_of(obj: dict[str, Any] | None) -> dict[str, Any]:
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Ready"), {})


def wait_ready(
    cluster: ClusterHandle, namespace: str, name: str, status: str, reason: str, timeout: float = 60
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = cluster.get("iamtrust", name, namespace)
        ready = ready_of(obj)
        return obj if (ready.get("status"), ready.get("reason")) == (status, reason) else None

    try:
        return wait_for(probe, timeout=timeout, what=f"trust {name} Ready={status} ({reason})")
    except AssertionError as error:
        raise AssertionError(
            f"{error}; Ready now: {ready_of(cluster.get('iamtrust', name, namespace))}"
        ) from None


def trust_check(
    cluster: ClusterHandle, env: dict[str, str], target: str, token: str, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    """`kube-iam trust check` as a user runs it. The token goes through a file, never argv."""
    token_file = tmp_path / f"token-{os.urandom(4).hex()}"
    token_file.write_text(token)
    return subprocess.run(
        [sys.executable, "-m", "kubeiam.cli", "trust", "check", target, "--token", str(token_file)],
        env=dict(os.environ, KUBECONFIG=str(cluster.kubeconfig), **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_github_style_trust_becomes_ready_and_a_minted_token_passes_trust_check(
    cluster: ClusterHandle,
    namespace: str,
    github: LocalIssuer,
    issuer_env: dict[str, str],
    tmp_path: Path,
) -> None:
    manifest = trust_manifest(
        "deploy-main",
        github.url,
        PINNED + " && claims.repository_id == '4242'",
        scopedRoles=["compute.deployer", "billing.admin"],
    )
    cluster.apply(many([account_manifest(), manifest]), namespace)
    obj = wait_ready(cluster, namespace, "deploy-main", "True", "Ready")
    status = obj["status"]
    assert status["effectiveRoles"] == ["compute.deployer"]
    assert sorted(status["jwksKeyIds"]) == sorted(github.key_ids())
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert status["lastCheckedAt"]
    owners = obj["metadata"].get("ownerReferences") or []
    assert [o["kind"] for o in owners] == ["ServiceAccount"]
    cluster.assert_no_drift(
        "iamtrust", "deploy-main", namespace, manifest, "kubectl-client-side-apply"
    )

    for alg in ("RS256", "ES256"):
        token = github.mint(github.github_claims(repository_id="4242"), alg=alg)
        result = trust_check(cluster, issuer_env, f"{namespace}/deploy-main", token, tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "condition" in result.stdout
        assert token not in result.stdout + result.stderr


def test_a_syntax_error_names_its_position_and_fixing_it_makes_the_trust_ready(
    cluster: ClusterHandle, namespace: str, github: LocalIssuer
) -> None:
    broken = "claims.repository == 'acme/api' && (claims.ref == "
    cluster.apply(many([account_manifest(), trust_manifest("t", github.url, broken)]), namespace)
    ready = ready_of(wait_ready(cluster, namespace, "t", "False", "ConditionInvalid"))
    assert "spec.condition" in ready["message"]
    assert "column" in ready["message"]
    cluster.apply(trust_manifest("t", github.url), namespace)
    wait_ready(cluster, namespace, "t", "True", "Ready")


def test_an_unknown_variable_is_refused_when_the_trust_is_applied_not_when_a_token_comes(
    cluster: ClusterHandle, namespace: str, github: LocalIssuer
) -> None:
    condition = "claim.repository == 'acme/api'"
    cluster.apply(many([account_manifest(), trust_manifest("t", github.url, condition)]), namespace)
    ready = ready_of(wait_ready(cluster, namespace, "t", "False", "ConditionInvalid"))
    assert "'claim'" in ready["message"]


def test_a_multi_tenant_issuer_needs_a_pinned_repository_and_a_name_pin_gets_a_warning(
    cluster: ClusterHandle, namespace: str, github: LocalIssuer
) -> None:
    broad = "claims.ref == 'refs/heads/main'"
    cluster.apply(many([account_manifest(), trust_manifest("broad", github.url, broad)]), namespace)
    ready = ready_of(wait_ready(cluster, namespace, "broad", "False", "ConditionTooBroad"))
    assert "repository" in ready["message"]

    cluster.apply(trust_manifest("by-name", github.url, PINNED), namespace)
    wait_ready(cluster, namespace, "by-name", "True", "Ready")

    def warning() -> str | None:
        listed = cluster.kubectl(
            "get",
            "events",
            "-n",
            namespace,
            "-o",
            "json",
            "--field-selector",
            "involvedObject.name=by-name,reason=RenameableClaim",
        )
        items = json.loads(listed.stdout)["items"]
        return items[0]["message"] if items else None

    message = wait_for(warning, timeout=30, what="a RenameableClaim warning")
    assert "repository_id" in message


@pytest.mark.parametrize(
    ("issuer", "pinned"),
    [
        ("https://accounts.google.com", "claims.sub == '113059226118543260398'"),
        ("https://agent.buildkite.com", "claims.organization_id == '0b5e0d2f-5d4c-4a6b'"),
    ],
)
def test_a_trust_on_google_or_buildkite_must_pin_the_tenant(
    cluster: ClusterHandle,
    namespace: str,
    trust_operator: OperatorProcess,
    issuer: str,
    pinned: str,
) -> None:
    # Disabled, so the issuer is never contacted (the test cluster has no internet); the
    # condition is reviewed all the same, and its refusal comes first.
    broad = "claims.email_verified == true && claims.pipeline_slug == 'deploy'"
    cluster.apply(
        many([account_manifest(), trust_manifest("broad", issuer, broad, disabled=True)]),
        namespace,
    )
    ready = ready_of(wait_ready(cluster, namespace, "broad", "False", "ConditionTooBroad"))
    assert issuer in ready["message"]
    cluster.apply(trust_manifest("pinned", issuer, pinned, disabled=True), namespace)
    wait_ready(cluster, namespace, "pinned", "False", "Disabled")


def test_an_issuer_that_is_down_makes_the_trust_unready_until_it_comes_back(
    cluster: ClusterHandle, namespace: str, spare: LocalIssuer
) -> None:
    spare.down()
    cluster.apply(many([account_manifest(), trust_manifest("t", spare.url)]), namespace)
    ready = ready_of(wait_ready(cluster, namespace, "t", "False", "IssuerUnreachable"))
    assert spare.url in ready["message"]
    spare.up()
    wait_ready(cluster, namespace, "t", "True", "Ready", timeout=30)


@pytest.mark.parametrize(
    ("knob", "reason", "words"),
    [
        ("issuer_override", "IssuerMismatch", "https://impostor.example.com"),
        ("oversize_jwks", "JwksInvalid", "cap"),
        ("redirect_to", "IssuerUnreachable", "another host"),
    ],
)
def test_an_issuer_that_misbehaves_is_refused_with_the_cause(
    cluster: ClusterHandle, namespace: str, spare: LocalIssuer, knob: str, reason: str, words: str
) -> None:
    if knob == "issuer_override":
        spare.issuer_override = "https://impostor.example.com"
    elif knob == "oversize_jwks":
        spare.oversize_jwks = True
    else:
        spare.redirect_to = (
            spare.url.replace("localhost", "127.0.0.1") + "/.well-known/openid-configuration"
        )
    try:
        cluster.apply(many([account_manifest(), trust_manifest("t", spare.url)]), namespace)
        ready = ready_of(wait_ready(cluster, namespace, "t", "False", reason))
        assert words in ready["message"]
    finally:
        spare.issuer_override = None
        spare.oversize_jwks = False
        spare.redirect_to = None


def test_an_issuer_outside_the_allowed_list_is_refused_and_never_contacted(
    cluster: ClusterHandle, namespace: str, trust_operator: OperatorProcess
) -> None:
    cluster.apply(
        many([account_manifest(), trust_manifest("t", "https://unlisted.example.com")]), namespace
    )
    ready = ready_of(wait_ready(cluster, namespace, "t", "False", "IssuerNotAllowed"))
    assert "KUBEIAM_ALLOWED_ISSUERS" in ready["message"]


def test_keys_rotated_at_the_issuer_are_picked_up_and_old_tokens_refused(
    cluster: ClusterHandle,
    namespace: str,
    spare: LocalIssuer,
    issuer_env: dict[str, str],
    tmp_path: Path,
) -> None:
    spare.cache_control = "max-age=1"
    cluster.apply(many([account_manifest(), trust_manifest("t", spare.url)]), namespace)
    before = wait_ready(cluster, namespace, "t", "True", "Ready")["status"]["jwksKeyIds"]
    old_token = spare.mint(spare.github_claims())
    spare.rotate()
    new_kids = sorted(spare.key_ids())
    assert not set(new_kids) & set(before)
    wait_for(
        lambda: (
            sorted((cluster.get("iamtrust", "t", namespace) or {})["status"]["jwksKeyIds"])
            == new_kids
        ),
        timeout=30,
        what="the rotated keys in status.jwksKeyIds",
    )
    target = f"{namespace}/t"
    refused = trust_check(cluster, issuer_env, target, old_token, tmp_path)
    assert refused.returncode == 1
    assert "UnknownKeyId" in refused.stdout
    accepted = trust_check(cluster, issuer_env, target, spare.mint(spare.github_claims()), tmp_path)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    spare.cache_control = None


def test_a_slow_issuer_does_not_hold_up_another_trusts_refresh(
    cluster: ClusterHandle,
    namespace: str,
    spares: Iterator[LocalIssuer],
    trust_operator: OperatorProcess,
) -> None:
    # A hostile issuer answers every refresh as slowly as the read timeout allows: the other
    # issuers' trusts must go on being refreshed meanwhile.
    slow, fast = next(spares), next(spares)
    for issuer in (slow, fast):
        issuer.cache_control = "max-age=1"
    cluster.apply(
        many(
            [
                account_manifest(),
                trust_manifest("slow", slow.url),
                trust_manifest("fast", fast.url),
            ]
        ),
        namespace,
    )
    wait_ready(cluster, namespace, "slow", "True", "Ready")
    wait_ready(cluster, namespace, "fast", "True", "Ready")
    held = len(slow.requests) + 1
    slow.response_delay = 120.0  # answered only when the issuer goes down, below
    try:
        wait_for(
            lambda: len(slow.requests) >= held,
            timeout=30,
            what="the slow issuer's next refresh to reach it",
        )
        fast.rotate()
        rotated = sorted(fast.key_ids())
        wait_for(
            lambda: (
                sorted((cluster.get("iamtrust", "fast", namespace) or {})["status"]["jwksKeyIds"])
                == rotated
            ),
            timeout=30,
            what="the fast issuer's rotated keys while the slow issuer's request is held open",
        )
        # Still held: its trust has neither been refreshed nor timed out.
        assert ready_of(cluster.get("iamtrust", "slow", namespace))["reason"] == "Ready"
        assert len(slow.requests) == held
    finally:
        slow.response_delay = 0.0
        slow.down()  # releases the held request
        slow.up()


def test_trust_check_refuses_each_bad_token_with_its_reason(
    cluster: ClusterHandle,
    namespace: str,
    github: LocalIssuer,
    issuer_env: dict[str, str],
    tmp_path: Path,
) -> None:
    cluster.apply(many([account_manifest(), trust_manifest("t", github.url)]), namespace)
    wait_ready(cluster, namespace, "t", "True", "Ready")
    good = github.github_claims()
    hour = datetime.timedelta(hours=1)
    cases = {
        "alg none": (github.mint_none(good), "AlgorithmNotAllowed"),
        "HS256 keyed with the public key": (
            github.mint_hs256_with_public_key(good),
            "AlgorithmNotAllowed",
        ),
        "expired": (github.mint(good, lifetime=-hour), "TokenExpired"),
        "wrong audience": (github.mint({**good, "aud": "someone-else"}), "AudienceMismatch"),
        "wrong issuer": (
            github.mint({**good, "iss": "https://evil.example.com"}),
            "IssuerMismatch",
        ),
        "unknown kid": (github.mint(good, kid="no-such-key"), "UnknownKeyId"),
        "condition false": (
            github.mint(github.github_claims(repository="acme/other")),
            "ConditionFalse",
        ),
    }
    for case, (token, reason) in cases.items():
        result = trust_check(cluster, issuer_env, f"{namespace}/t", token, tmp_path)
        assert result.returncode == 1, f"{case}: {result.stdout}{result.stderr}"
        assert reason in result.stdout, f"{case}: expected {reason} in\n{result.stdout}"
        assert token not in result.stdout + result.stderr


def test_a_trust_with_inline_keys_for_an_unreachable_cluster_issuer_is_ready(
    cluster: ClusterHandle,
    namespace: str,
    spare: LocalIssuer,
    issuer_env: dict[str, str],
    tmp_path: Path,
) -> None:
    # Another cluster's service account issuer, which this cluster cannot reach: its keys are
    # given inline and nothing is fetched.
    issuer = "https://cluster.example.internal"
    condition = "claims['kubernetes.io']['namespace'] == 'ci'"
    manifest = trust_manifest("other-cluster", issuer, condition, jwks=spare.public_jwks())
    cluster.apply(many([account_manifest(), manifest]), namespace)
    obj = wait_ready(cluster, namespace, "other-cluster", "True", "Ready")
    assert sorted(obj["status"]["jwksKeyIds"]) == sorted(spare.key_ids())
    claims = {
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": "system:serviceaccount:ci:builder",
        "kubernetes.io": {"namespace": "ci", "serviceaccount": {"name": "builder"}},
    }
    result = trust_check(
        cluster, issuer_env, f"{namespace}/other-cluster", spare.mint(claims), tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_trusts_beyond_the_limit_wait_and_deleting_one_makes_room(
    cluster: ClusterHandle, namespace: str, github: LocalIssuer
) -> None:
    names = [f"t{i}" for i in range(1, 5)]
    cluster.apply(account_manifest(), namespace)
    for name in names:  # one by one, so the creation order is the name order
        cluster.apply(trust_manifest(name, github.url), namespace)
        wait_for(
            lambda n=name: ready_of(cluster.get("iamtrust", n, namespace)), what=f"{name} status"
        )
    for name in names[:3]:
        wait_ready(cluster, namespace, name, "True", "Ready")
    ready = ready_of(wait_ready(cluster, namespace, "t4", "False", "TooManyTrusts"))
    assert "3" in ready["message"]
    cluster.kubectl("delete", "iamtrust", "t1", "-n", namespace)
    wait_ready(cluster, namespace, "t4", "True", "Ready")


def test_deleting_the_account_removes_its_trusts(
    cluster: ClusterHandle, namespace: str, github: LocalIssuer
) -> None:
    cluster.apply(many([account_manifest(), trust_manifest("t", github.url)]), namespace)
    wait_ready(cluster, namespace, "t", "True", "Ready")
    cluster.kubectl("delete", "iamsa", "pipeline", "-n", namespace)
    wait_for(
        lambda: cluster.get("iamtrust", "t", namespace) is None,
        what="the garbage collector to delete the trust with its account",
    )


def test_a_trust_for_a_missing_account_says_so_and_follows_the_account(
    cluster: ClusterHandle, namespace: str, github: LocalIssuer
) -> None:
    with admitted_before_the_webhook(cluster):
        cluster.apply(trust_manifest("t", github.url), namespace)
    wait_ready(cluster, namespace, "t", "False", "AccountMissing")
    cluster.apply(account_manifest(), namespace)
    obj = wait_ready(cluster, namespace, "t", "True", "Ready")
    assert obj["status"]["effectiveRoles"] == ["compute.deployer", "storage.reader"]
    cluster.apply(account_manifest(roles="storage.reader"), namespace)
    wait_for(
        lambda: (
            (cluster.get("iamtrust", "t", namespace) or {})["status"]["effectiveRoles"]
            == ["storage.reader"]
        ),
        what="effectiveRoles to follow the account's roles",
    )
    cluster.apply(trust_manifest("t", github.url, disabled=True), namespace)
    wait_ready(cluster, namespace, "t", "False", "Disabled")


def test_the_example_trusts_apply_and_pass_every_check_the_cluster_can_make(
    cluster: ClusterHandle, namespace: str, trust_operator: OperatorProcess
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(REPO_ROOT / "examples" / "account.yaml"))
    cluster.kubectl("apply", "-n", namespace, "-f", str(REPO_ROOT / "examples" / "trusts"))
    obj = wait_ready(cluster, namespace, "prod-cluster-ci-builder", "True", "Ready")
    assert obj["status"]["jwksKeyIds"] == ["prod-cluster-2026-11"]
    assert obj["status"]["effectiveRoles"]

    # The GitHub example passes the account, policy, condition and guard-rail checks; what is
    # left is GitHub itself, which a machine without internet access cannot reach.
    def past_the_spec() -> dict[str, Any] | None:
        ready = ready_of(cluster.get("iamtrust", "github-acme-api-main", namespace))
        return ready if ready.get("reason") in ("Ready", "IssuerUnreachable") else None

    wait_for(past_the_spec, timeout=90, what="the GitHub example to reach the issuer check")
    warnings = cluster.kubectl(
        "get", "events", "-n", namespace, "--field-selector", "reason=RenameableClaim", "-o", "name"
    )
    assert warnings.stdout.strip() == "", "the example pins ids, so it needs no rename warning"


def test_a_restart_over_settled_trusts_writes_nothing(
    cluster: ClusterHandle, namespace: str, github: LocalIssuer, trust_operator: OperatorProcess
) -> None:
    accounts = [f"acct-{i}" for i in range(4)]
    manifests = [account_manifest(name) for name in accounts]
    for account in accounts:
        for n in range(3):
            body = json.loads(trust_manifest(f"{account}-t{n}", github.url))
            body["spec"]["serviceAccountName"] = account
            manifests.append(json.dumps(body))
    cluster.apply(many(manifests), namespace)

    def versions() -> dict[str, str]:
        listed = cluster.kubectl("get", "iamtrust", "-n", namespace, "-o", "json")
        return {
            o["metadata"]["name"]: o["metadata"]["resourceVersion"]
            for o in json.loads(listed.stdout)["items"]
        }

    def all_ready() -> dict[str, str] | None:
        listed = json.loads(
            cluster.kubectl("get", "iamtrust", "-n", namespace, "-o", "json").stdout
        )
        ready = [ready_of(o).get("reason") == "Ready" for o in listed["items"]]
        return versions() if len(ready) == 12 and all(ready) else None

    before = wait_for(all_ready, timeout=90, what="12 trusts Ready")
    log = trust_operator.log_path
    assert log is not None
    marker = f"[{namespace}/"

    def resumed() -> int:
        lines = log.read_text(errors="replace").splitlines()
        return sum(1 for line in lines if marker in line and "'trust_resumed' succeeded" in line)

    already = resumed()
    trust_operator.stop()
    trust_operator.start()
    wait_for(lambda: resumed() >= already + 12, what="the restarted operator to resume 12 trusts")
    assert versions() == before, "a restart over settled trusts wrote to them"


def test_the_trusts_gauge_counts_every_trust_by_its_ready_reason(
    cluster: ClusterHandle, namespace: str, github: LocalIssuer, trust_operator: OperatorProcess
) -> None:
    broad = trust_manifest("broad", github.url, "claims.ref == 'refs/heads/main'")
    cluster.apply(many([account_manifest(), trust_manifest("ok", github.url), broad]), namespace)
    wait_ready(cluster, namespace, "ok", "True", "Ready")
    wait_ready(cluster, namespace, "broad", "False", "ConditionTooBroad")

    def as_kubectl_sees_it() -> dict[str, float]:
        listed = json.loads(cluster.kubectl("get", "iamtrust", "-A", "-o", "json").stdout)
        counts: dict[str, float] = {}
        for item in listed["items"]:
            reason = ready_of(item).get("reason") or "Unknown"
            counts[reason] = counts.get(reason, 0) + 1
        return counts

    def as_scraped() -> dict[str, float]:
        found = {}
        for line in trust_operator.scrape().splitlines():
            if line.startswith("kubeiam_trusts{"):
                labels, value = line.rsplit(" ", 1)
                found[labels.split('reason="', 1)[1].split('"', 1)[0]] = float(value)
        return found

    def agree() -> dict[str, float] | None:
        scraped = as_scraped()
        return scraped if scraped == as_kubectl_sees_it() else None

    scraped = wait_for(agree, what="kubeiam_trusts to agree with kubectl")
    assert scraped["Ready"] >= 1
    assert scraped["ConditionTooBroad"] >= 1
