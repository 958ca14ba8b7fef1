"""Who may do what, through the real admission path: the API server calls the operator's webhook.

The people are told apart the way the API server tells them apart: the admin's client
certificate (system:masters), impersonation of users and groups (`kubectl --as`, which the API
server authenticates and hands to admission exactly as a real login), and a Kubernetes
ServiceAccount's token. RBAC is on; each person gets what a team would give them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kubeiam.devcluster.kubeconfig import write_token_kubeconfig
from kubeiam.devcluster.kubectl import Kubectl

from .credentials_support import credential_manifest, read_secret, sha256, wait_state
from .metrics_support import scrape
from .support import ClusterHandle, OperatorProcess, wait_for

pytestmark = pytest.mark.integration

CATALOGUE = ["compute.deployer", "storage.reader", "storage.admin"]
POLICY = {
    "KUBEIAM_ROLE_CATALOGUE": json.dumps(CATALOGUE),
    "KUBEIAM_ALLOWED_SCOPES": json.dumps(["project"]),
    # Short, so a RoleBinding added mid-test counts at once; the cache is measured below.
    "KUBEIAM_ACCESS_REVIEW_TTL": "1",
}
ADMIN = "kube-iam-admin"  # the CN of the local control plane's admin certificate


def account(name: str = "pipeline", *, roles: tuple[str, ...] = (), **spec: Any) -> str:
    body = {
        "apiVersion": "iam.kubeiam.io/v1alpha1",
        "kind": "ServiceAccount",
        "metadata": {"name": name},
        "spec": {
            "displayName": name,
            "scope": "project",
            "scopeId": "shop",
            "roles": list(roles),
            "owners": [{"kind": "User", "name": "alice"}, {"kind": "Group", "name": "team-a"}],
            **spec,
        },
    }
    body["spec"] = {key: value for key, value in body["spec"].items() if value is not None}
    return json.dumps(body)


def trust(name: str, account_name: str = "pipeline") -> str:
    body = {
        "apiVersion": "iam.kubeiam.io/v1alpha1",
        "kind": "FederationTrust",
        "metadata": {"name": name},
        "spec": {
            "serviceAccountName": account_name,
            "displayName": name,
            "issuer": "https://token.actions.githubusercontent.com",
            "audiences": ["https://github.com/acme"],
            "condition": "claims.repository == 'acme/shop'",
        },
    }
    return json.dumps(body)


class Person:
    """kubectl as one identity."""

    def __init__(self, cluster: ClusterHandle, *identity: str, kubectl: Kubectl | None = None):
        self.kubectl = kubectl or cluster.kubectl
        self.identity = identity

    def __call__(self, *args: str, input: str | None = None) -> Any:
        return self.kubectl(*args, *self.identity, input=input, check=False)

    def apply(self, manifest: str, namespace: str) -> Any:
        return self("apply", "-n", namespace, "-f", "-", input=manifest)

    def apply_once_allowed(self, manifest: str, namespace: str) -> Any:
        """Apply once a server-side dry run is admitted: an RBAC change reaches the webhook
        when its cached access review expires (KUBEIAM_ACCESS_REVIEW_TTL)."""
        wait_for(
            lambda: (
                self(
                    "apply", "--dry-run=server", "-n", namespace, "-f", "-", input=manifest
                ).returncode
                == 0
            ),
            what=f"the webhook to admit {self.identity} after an RBAC change",
        )
        return self.apply(manifest, namespace)


def refused(result: Any, *expected: str) -> None:
    assert result.returncode != 0, f"accepted: {result.stdout}"
    for text in expected:
        assert text in result.stderr, result.stderr


def allowed(result: Any) -> None:
    assert result.returncode == 0, result.stderr


@pytest.fixture
def policy_operator(
    cluster: ClusterHandle, operators: Callable[..., OperatorProcess]
) -> Iterator[OperatorProcess]:
    """The operator with this module's policy, alone on the webhook port: the session's
    webhook-only process (default policy) is stopped meanwhile, so every answer is its."""
    if cluster.webhook is None or cluster.admission is None:
        pytest.skip("no local webhook: the API server cannot call processes on this machine")
    cluster.admission.stop()
    try:
        yield operators("policy", **POLICY)
    finally:
        cluster.admission.start()


def bind(cluster: ClusterHandle, namespace: str, name: str, role: str, *subjects: str) -> None:
    """A RoleBinding, as a namespace admin writes one: `--user=alice`, `--group=team-a`."""
    # role:NAME is a namespaced Role; otherwise a ClusterRole (edit, admin, ...).
    ref = f"--role={role[5:]}" if role.startswith("role:") else f"--clusterrole={role}"
    cluster.kubectl("create", "rolebinding", name, "-n", namespace, ref, *subjects)


def rbac_role(
    cluster: ClusterHandle,
    kind: str,
    name: str,
    verb: str,
    resource: str,
    resource_name: str,
    namespace: str | None = None,
) -> None:
    """A Role or ClusterRole for a verb on one name of a kube-iam (pseudo-)resource, as a team
    writes it in YAML (`kubectl create role` refuses a resource the API does not serve)."""
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": metadata,
        "rules": [
            {
                "apiGroups": ["iam.kubeiam.io"],
                "resources": [resource],
                "resourceNames": [resource_name],
                "verbs": [verb],
            }
        ],
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(role))


def may(
    cluster: ClusterHandle, kind: str, who: str, verb: str, resource: str, name: str, namespace: str
) -> bool:
    """What the webhook asks: a SubjectAccessReview (`kubectl auth can-i` cannot name a
    resource the API does not serve, like roles.iam.kubeiam.io)."""
    spec: dict[str, Any] = {
        "resourceAttributes": {
            "group": "iam.kubeiam.io",
            "resource": resource,
            "verb": verb,
            "name": name,
            "namespace": namespace,
        }
    }
    if kind == "user":
        spec["user"] = who
    else:
        spec["user"] = "someone"
        spec["groups"] = [who]
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
    result = cluster.kubectl(
        "create", "-f", "-", "-o", "jsonpath={.status.allowed}", input=json.dumps(review)
    )
    return result.stdout.strip() == "true"


def grant_role(cluster: ClusterHandle, namespace: str, slug: str, *subjects: str) -> None:
    """What the org gives someone allowed to hand out a role: bind on roles.iam.kubeiam.io."""
    role = f"iam-role-{slug.replace('.', '-')}"
    rbac_role(cluster, "ClusterRole", role, "bind", "roles", slug)
    who = re.sub(r"[^a-z0-9]+", "-", "-".join(subjects).lower()).strip("-")
    bind(cluster, namespace, f"{role}-{who}", role, *subjects)
    for subject in subjects:
        kind, _, who = subject.removeprefix("--").partition("=")
        wait_for(
            lambda kind=kind, who=who: may(cluster, kind, who, "bind", "roles", slug, namespace),
            what=f"RBAC to let {who} bind {slug}",
        )


@pytest.fixture
def team(cluster: ClusterHandle, namespace: str) -> dict[str, Person]:
    """alice owns the account, dave is in its owner group team-a; bob and carol edit the
    namespace but own nothing; erin is the namespace's admin."""
    bind(cluster, namespace, "editors", "edit", "--user=alice", "--user=bob", "--user=carol")
    bind(cluster, namespace, "team-a", "edit", "--group=team-a")
    bind(cluster, namespace, "admins", "admin", "--user=erin")
    return {
        "admin": Person(cluster),
        "alice": Person(cluster, "--as=alice"),
        "bob": Person(cluster, "--as=bob"),
        "carol": Person(cluster, "--as=carol"),
        "dave": Person(cluster, "--as=dave", "--as-group=team-a"),
        "erin": Person(cluster, "--as=erin"),
    }


def test_only_owners_or_managers_may_touch_an_accounts_credentials(
    cluster: ClusterHandle,
    namespace: str,
    policy_operator: OperatorProcess,
    team: dict[str, Person],
) -> None:
    allowed(team["admin"].apply(account(roles=("compute.deployer",)), namespace))

    # A namespace editor who is not an owner: refused, told who may.
    result = team["bob"].apply(credential_manifest("bobs"), namespace)
    refused(
        result,
        'admission webhook "credentials.iam.kubeiam.io" denied the request',
        "bob may not create credentials of ServiceAccount 'pipeline': only its owners"
        " (User alice, Group team-a) or whoever holds the RBAC verb 'manage' on"
        f" serviceaccounts.iam.kubeiam.io 'pipeline' in namespace '{namespace}' may",
        "(rule: owners)",
    )
    assert cluster.get("iamcred", "bobs", namespace) is None

    # The owner, and a member of the owner group: issued, and their names recorded.
    allowed(team["alice"].apply(credential_manifest("ci"), namespace))
    allowed(team["dave"].apply(credential_manifest("deploy"), namespace))
    for name, creator in (("ci", "alice"), ("deploy", "dave")):
        body = wait_state(cluster, namespace, name, "Active")
        assert body["status"]["createdBy"] == creator
        assert body["metadata"]["annotations"]["iam.kubeiam.io/created-by"] == creator
        mounted = read_secret(cluster, namespace, body["status"]["secretName"])
        assert sha256(mounted.client_secret()) == body["status"]["secretHash"]

    # Revoking or deleting someone else's credential is refused the same way.
    revoke = ["patch", "iamcred", "ci", "-n", namespace, "--type=merge"]
    refused(
        team["bob"](*revoke, "-p", '{"spec":{"revoked":true}}'),
        "bob may not change credentials",
    )
    refused(team["bob"]("delete", "iamcred", "ci", "-n", namespace), "bob may not delete")
    # Labels are not the credential's spec: an editor (or a GitOps tool) may still set them.
    allowed(team["bob"]("label", "iamcred", "ci", "-n", namespace, "tier=ci"))

    # carol is given the verb manage on this one account, by name: now she may.
    rbac_role(
        cluster, "Role", "manage-pipeline", "manage", "serviceaccounts", "pipeline", namespace
    )
    bind(cluster, namespace, "carol-manages", "role:manage-pipeline", "--user=carol")
    wait_for(
        lambda: may(cluster, "user", "carol", "manage", "serviceaccounts", "pipeline", namespace),
        what="RBAC to let carol manage pipeline",
    )
    allowed(team["carol"](*revoke, "-p", '{"spec":{"revoked":true}}'))
    wait_state(cluster, namespace, "ci", "Revoked")

    # The creator cannot be rewritten, by anyone.
    refused(
        team["admin"]("annotate", "iamcred", "deploy", "-n", namespace,
                      "iam.kubeiam.io/created-by=mallory", "--overwrite"),
        "(rule: created-by)",
    )  # fmt: skip
    stamped = cluster.get("iamcred", "deploy", namespace)
    assert stamped is not None
    assert stamped["metadata"]["annotations"]["iam.kubeiam.io/created-by"] == "dave"
    assert stamped["status"]["createdBy"] == "dave"

    # `kubectl get iamsa -o yaml` shows who created the account.
    shown = team["admin"]("get", "iamsa", "pipeline", "-n", namespace, "-o", "yaml")
    assert f"createdBy: {ADMIN}" in shown.stdout


def test_granting_a_role_needs_bind_on_it(
    cluster: ClusterHandle,
    namespace: str,
    policy_operator: OperatorProcess,
    team: dict[str, Person],
) -> None:
    # erin administers the namespace (RBAC lets her create accounts) but holds no role. She
    # lists herself as an owner, or only the other owners could change the account later.
    reports = {"owners": [{"kind": "User", "name": "erin"}]}
    result = team["erin"].apply(account("reports", roles=("storage.reader",), **reports), namespace)
    refused(
        result,
        'admission webhook "accounts.iam.kubeiam.io" denied the request',
        "spec.roles[0]: erin may grant only roles they hold: granting 'storage.reader' needs the"
        " RBAC verb 'bind' on roles.iam.kubeiam.io with that role as resource name in"
        f" namespace '{namespace}' (rule: scope-down)",
    )
    grant_role(cluster, namespace, "storage.reader", "--user=erin")
    allowed(
        team["erin"].apply_once_allowed(
            account("reports", roles=("storage.reader",), **reports), namespace
        )
    )
    body = wait_for(
        lambda: (
            (cluster.get("iamsa", "reports", namespace) or {}).get("status", {}).get("createdBy")
        ),
        what="the account's createdBy",
    )
    assert body == "erin"
    # Adding a role she does not hold is refused; removing one needs nothing.
    refused(
        team["erin"].apply(
            account("reports", roles=("storage.reader", "storage.admin"), **reports), namespace
        ),
        "granting 'storage.admin'",
    )
    allowed(team["erin"].apply(account("reports", roles=(), **reports), namespace))

    # Credentials narrow with scopedRoles, and naming a role there needs bind too.
    allowed(team["admin"].apply(account(roles=("compute.deployer", "storage.reader")), namespace))
    refused(
        team["alice"].apply(
            credential_manifest("narrow", scopedRoles=["compute.deployer"]), namespace
        ),
        "spec.scopedRoles[0]: alice may grant only roles they hold",
    )
    grant_role(cluster, namespace, "compute.deployer", "--user=alice")
    result = team["alice"].apply_once_allowed(
        credential_manifest("narrow", scopedRoles=["compute.deployer"]), namespace
    )
    allowed(result)
    body = wait_state(cluster, namespace, "narrow", "Active")
    assert body["status"]["effectiveRoles"] == ["compute.deployer"]

    # Trusts answer to the same two rules.
    refused(
        team["bob"].apply(trust("gh"), namespace), "bob may not create trusts", "(rule: owners)"
    )
    allowed(team["alice"].apply(trust("gh"), namespace))
    wait_for(
        lambda: (cluster.get("iamtrust", "gh", namespace) or {}).get("status", {}).get("createdBy"),
        what="the trust's createdBy",
    )


def test_org_policy_the_catalogue_and_scopes(
    cluster: ClusterHandle,
    namespace: str,
    policy_operator: OperatorProcess,
    team: dict[str, Person],
) -> None:
    refused(
        team["admin"].apply(account(roles=("compute.deployr",)), namespace),
        "spec.roles[0]: role 'compute.deployr' is not in the organisation's role catalogue;"
        " did you mean 'compute.deployer'? (rule: role-catalogue)",
    )
    refused(
        team["admin"].apply(account(scope="organization", scopeId=None), namespace),
        "spec.scope: scope 'organization' is not allowed by organisation policy"
        " (allowed: project) (rule: allowed-scopes)",
    )
    assert cluster.get("iamsa", "pipeline", namespace) is None


def test_a_missing_account_is_refused_at_once(
    cluster: ClusterHandle,
    namespace: str,
    policy_operator: OperatorProcess,
    team: dict[str, Person],
) -> None:
    for manifest, webhook in (
        (credential_manifest("ci", account="ghost"), "credentials"),
        (trust("gh", account_name="ghost"), "trusts"),
    ):
        refused(
            team["alice"].apply(manifest, namespace),
            f'admission webhook "{webhook}.iam.kubeiam.io" denied the request',
            f"spec.serviceAccountName: ServiceAccount 'ghost' does not exist in namespace"
            f" '{namespace}'; create the account first (rule: account-exists)",
        )


def test_a_kubernetes_service_account_can_own_an_account(
    cluster: ClusterHandle,
    namespace: str,
    policy_operator: OperatorProcess,
    team: dict[str, Person],
    tmp_path: Path,
) -> None:
    """A CI bot with a real token (no impersonation): it owns the account and rotates it."""
    bot = f"system:serviceaccount:{namespace}:ci-bot"
    cluster.kubectl("create", "serviceaccount", "ci-bot", "-n", namespace)
    bind(cluster, namespace, "bot-edits", "edit", f"--serviceaccount={namespace}:ci-bot")
    owners = [{"kind": "User", "name": bot}]
    allowed(team["admin"].apply(account(owners=owners), namespace))
    token = cluster.kubectl("create", "token", "ci-bot", "-n", namespace).stdout.strip()
    raw = cluster.kubectl("config", "view", "--raw", "--minify", "--flatten", "-o", "json").stdout
    entry = json.loads(raw)["clusters"][0]["cluster"]
    kubeconfig = write_token_kubeconfig(tmp_path / "bot.kubeconfig", entry, bot, token)
    as_bot = Person(cluster, kubectl=Kubectl(cluster.kubectl.binary, kubeconfig))
    allowed(as_bot.apply(credential_manifest("rotated"), namespace))
    body = wait_state(cluster, namespace, "rotated", "Active")
    assert body["status"]["createdBy"] == bot
    refused(team["bob"].apply(credential_manifest("other"), namespace), f"(User {bot})")


def test_with_no_webhook_serving_writes_are_refused_and_nothing_is_half_done(
    cluster: ClusterHandle,
    namespace: str,
    policy_operator: OperatorProcess,
    team: dict[str, Person],
) -> None:
    allowed(team["admin"].apply(account(), namespace))
    policy_operator.stop()  # the only process serving the webhook now
    for manifest in (credential_manifest("ci"), trust("gh"), account("other")):
        refused(team["admin"].apply(manifest, namespace), "failed calling webhook")
    assert cluster.kubectl("get", "iam", "-n", namespace, "-o", "name").stdout.split() == [
        "serviceaccount.iam.kubeiam.io/pipeline"
    ]
    secrets = cluster.kubectl("get", "secrets", "-n", namespace, "-o", "name").stdout.split()
    assert secrets == []
    # Back up: the same apply goes through and is issued.
    policy_operator.start()
    allowed(team["alice"].apply(credential_manifest("ci"), namespace))
    wait_state(cluster, namespace, "ci", "Active")


def test_a_paused_replica_answers_admission(
    cluster: ClusterHandle,
    namespace: str,
    policy_operator: OperatorProcess,
    team: dict[str, Person],
) -> None:
    """Peering pauses a replica's reconciling, not its webhook: with the active replica dead,
    the paused one alone admits the next credential (and then takes over and issues it)."""
    policy_operator.stop()
    older = OperatorProcess(
        cluster, name="admission-older", env={**POLICY}, args=("--priority", "1")
    )
    newer = OperatorProcess(
        cluster, name="admission-newer", env={**POLICY}, args=("--priority", "2")
    )
    older.start()
    newer.start()
    try:
        wait_for(lambda: scrape(older).value("kubeiam_peering_paused") == 1, what="older to pause")
        allowed(team["admin"].apply(account(), namespace))
        newer.kill()
        result = wait_for(
            lambda: (
                (r := team["alice"].apply(credential_manifest("ci"), namespace)).returncode == 0
                and r
            ),
            what="the paused replica to admit",
        )
        allowed(result)
        page = scrape(older)
        assert page.value("kubeiam_peering_paused") == 1
        admitted = page.value(
            "kubeiam_admission_seconds_count",
            kind="ServiceAccountCredential",
            operation="CREATE",
            verdict="allowed",
        )
        assert admitted >= 1
        body = cluster.get("iamcred", "ci", namespace)
        assert body is not None
        assert body["metadata"]["annotations"]["iam.kubeiam.io/created-by"] == "alice"
    finally:
        older.stop()
        newer.stop()
        policy_operator.start()


# -- issue 15: the sequences an attacker composes ------------------------------------------------


def _patch(person: Person, kind: str, name: str, namespace: str, ops: list[Any]) -> Any:
    return person("patch", kind, name, "-n", namespace, "--type=json", "-p", json.dumps(ops))


def _without_display_name(manifest: str) -> str:
    body = json.loads(manifest)
    del body["spec"]["displayName"]
    return json.dumps(body)


def test_nobody_makes_themselves_an_owner(
    cluster: ClusterHandle,
    namespace: str,
    policy_operator: OperatorProcess,
    team: dict[str, Person],
) -> None:
    """erin administers the namespace (RBAC lets her patch and delete accounts) but neither
    owns the account nor may bind its role: adding herself to its owners, to then create a
    credential with that role, is refused at the first step; so is deleting the account."""
    allowed(team["admin"].apply(account(roles=("compute.deployer",)), namespace))
    add_erin = [{"op": "add", "path": "/spec/owners/-", "value": {"kind": "User", "name": "erin"}}]
    refused(
        _patch(team["erin"], "iamsa", "pipeline", namespace, add_erin),
        'admission webhook "accounts.iam.kubeiam.io" denied the request',
        "erin may not change ServiceAccount 'pipeline': only its owners (User alice, Group"
        " team-a) or whoever holds the RBAC verb 'manage' on serviceaccounts.iam.kubeiam.io"
        f" 'pipeline' in namespace '{namespace}' may (rule: owners)",
    )
    refused(team["erin"].apply(credential_manifest("erins"), namespace), "(rule: owners)")
    refused(
        team["erin"]("delete", "iamsa", "pipeline", "-n", namespace),
        "erin may not delete ServiceAccount 'pipeline'",
    )
    body = cluster.get("iamsa", "pipeline", namespace)
    assert body is not None
    assert body["metadata"].get("deletionTimestamp") is None
    assert {"kind": "User", "name": "erin"} not in body["spec"]["owners"]

    # An owner whom RBAC lets patch accounts changes it (owners included) and deletes it; the
    # garbage collector still removes its credentials, and the namespace controller the rest.
    bind(cluster, namespace, "team-a-admins", "admin", "--group=team-a")
    can_i = ["auth", "can-i", "patch", "serviceaccounts.iam.kubeiam.io", "-n", namespace]
    wait_for(lambda: team["dave"](*can_i).returncode == 0, what="RBAC to let dave patch accounts")
    allowed(team["alice"].apply(credential_manifest("ci"), namespace))
    wait_state(cluster, namespace, "ci", "Active")
    add_carol = [
        {"op": "add", "path": "/spec/owners/-", "value": {"kind": "User", "name": "carol"}}
    ]
    allowed(_patch(team["dave"], "iamsa", "pipeline", namespace, add_carol))
    allowed(team["admin"].apply(account("other"), namespace))
    allowed(team["dave"]("delete", "iamsa", "pipeline", "-n", namespace, "--wait=false"))
    wait_for(
        lambda: cluster.get("iamcred", "ci", namespace) is None,
        what="the garbage collector to delete the account's credential",
    )
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")
    wait_for(
        lambda: cluster.kubectl("get", "namespace", namespace, check=False).returncode != 0,
        what="the namespace controller to delete the namespace and its account",
    )


def test_an_empty_scoped_roles_grants_no_role(
    cluster: ClusterHandle,
    namespace: str,
    policy_operator: OperatorProcess,
    team: dict[str, Person],
) -> None:
    allowed(team["admin"].apply(account(roles=("compute.deployer", "storage.reader")), namespace))
    allowed(team["alice"].apply(credential_manifest("none", scopedRoles=[]), namespace))
    body = wait_state(cluster, namespace, "none", "Active")
    assert body["status"]["effectiveRoles"] == []
    with_trust = json.loads(trust("gh"))
    with_trust["spec"]["scopedRoles"] = []
    allowed(team["alice"].apply(json.dumps(with_trust), namespace))

    def trust_roles() -> tuple[list[str]] | None:
        status = (cluster.get("iamtrust", "gh", namespace) or {}).get("status") or {}
        return (status["effectiveRoles"],) if "effectiveRoles" in status else None

    assert wait_for(trust_roles, what="the trust's effectiveRoles") == ([],)


def test_removing_or_widening_scoped_roles_needs_bind_on_what_it_adds_back(
    cluster: ClusterHandle,
    namespace: str,
    policy_operator: OperatorProcess,
    team: dict[str, Person],
) -> None:
    """alice owns the account and may bind compute.deployer only: a credential or trust she
    narrowed cannot be widened back to the account's other role by dropping scopedRoles."""
    allowed(team["admin"].apply(account(roles=("compute.deployer", "storage.reader")), namespace))
    grant_role(cluster, namespace, "compute.deployer", "--user=alice")
    narrow = credential_manifest("narrow", scopedRoles=["compute.deployer"])
    allowed(team["alice"].apply_once_allowed(narrow, namespace))
    wait_state(cluster, namespace, "narrow", "Active")
    drop = [{"op": "remove", "path": "/spec/scopedRoles"}]
    refused(
        _patch(team["alice"], "iamcred", "narrow", namespace, drop),
        "spec.scopedRoles: alice may grant only roles they hold: granting 'storage.reader'"
        " needs the RBAC verb 'bind'",
        "(rule: scope-down)",
    )
    # Narrowing to nothing needs nothing; widening from nothing to what she holds is fine.
    allowed(
        _patch(team["alice"], "iamcred", "narrow", namespace,
               [{"op": "replace", "path": "/spec/scopedRoles", "value": []}])
    )  # fmt: skip
    refused(_patch(team["alice"], "iamcred", "narrow", namespace, drop), "'storage.reader'")
    body = cluster.get("iamcred", "narrow", namespace)
    assert body is not None
    assert body["spec"]["scopedRoles"] == []

    with_trust = json.loads(trust("gh"))
    with_trust["spec"]["scopedRoles"] = ["compute.deployer"]
    allowed(team["alice"].apply(json.dumps(with_trust), namespace))
    refused(
        _patch(team["alice"], "iamtrust", "gh", namespace, drop),
        'admission webhook "trusts.iam.kubeiam.io" denied the request',
        "granting 'storage.reader'",
    )
    # Whoever may bind every role the account holds may drop the narrowing.
    grant_role(cluster, namespace, "storage.reader", "--user=alice")
    wait_for(
        lambda: _patch(team["alice"], "iamtrust", "gh", namespace, drop).returncode == 0,
        what="the webhook to let alice widen once she may bind storage.reader",
    )


def test_a_kube_system_identity_is_judged_like_anyone_else(
    cluster: ClusterHandle,
    namespace: str,
    policy_operator: OperatorProcess,
    team: dict[str, Person],
) -> None:
    """A ServiceAccount in kube-system that is neither the garbage collector nor the namespace
    controller, given edit in the namespace, owns nothing and may not forge who created what."""
    bot = "system:serviceaccount:kube-system:mallory"
    bind(cluster, namespace, "mallory-edits", "edit", "--serviceaccount=kube-system:mallory")
    as_bot = Person(cluster, f"--as={bot}")
    allowed(team["admin"].apply(account(), namespace))
    allowed(team["alice"].apply(credential_manifest("ci"), namespace))
    refused(
        as_bot.apply(credential_manifest("bots"), namespace),
        f"{bot} may not create credentials of ServiceAccount 'pipeline'",
        "(rule: owners)",
    )
    forged = json.loads(credential_manifest("bots"))
    forged["metadata"]["annotations"] = {"iam.kubeiam.io/created-by": "alice"}
    refused(as_bot.apply(json.dumps(forged), namespace), "(rule: created-by)")
    refused(
        as_bot("patch", "iamcred", "ci", "-n", namespace, "--type=merge",
               "-p", '{"spec":{"revoked":true}}'),
        f"{bot} may not change credentials",
    )  # fmt: skip
    assert cluster.get("iamcred", "bots", namespace) is None


def test_a_forged_creator_is_refused(
    cluster: ClusterHandle,
    namespace: str,
    policy_operator: OperatorProcess,
    team: dict[str, Person],
) -> None:
    allowed(team["admin"].apply(account(), namespace))
    forged = json.loads(credential_manifest("ci"))
    forged["metadata"]["annotations"] = {"iam.kubeiam.io/created-by": "bob"}
    refused(
        team["alice"].apply(json.dumps(forged), namespace),
        'admission webhook "credentials.iam.kubeiam.io" denied the request',
        "metadata.annotations[iam.kubeiam.io/created-by]: kube-iam records here who created the"
        " object; alice may not set it to 'bob'",
        "(rule: created-by)",
    )
    # Stating one's own name is no forgery; leaving it out is the usual way.
    honest = json.loads(credential_manifest("ci"))
    honest["metadata"]["annotations"] = {"iam.kubeiam.io/created-by": "alice"}
    allowed(team["alice"].apply(json.dumps(honest), namespace))
    refused(
        team["admin"]("annotate", "iamcred", "ci", "-n", namespace,
                      "iam.kubeiam.io/created-by=mallory", "--overwrite"),
        "may not change it from 'alice' to 'mallory'",
        "(rule: created-by)",
    )  # fmt: skip
    # A GitOps apply that omits it keeps it.
    allowed(team["alice"]("annotate", "iamcred", "ci", "-n", namespace, "tier=ci"))
    allowed(
        team["alice"]("annotate", "iamcred", "ci", "-n", namespace, "iam.kubeiam.io/created-by-")
    )
    body = wait_state(cluster, namespace, "ci", "Active")
    assert body["metadata"]["annotations"]["iam.kubeiam.io/created-by"] == "alice"
    assert body["status"]["createdBy"] == "alice"


def test_owners_are_named_only_to_who_may_read_the_account(
    cluster: ClusterHandle,
    namespace: str,
    policy_operator: OperatorProcess,
    team: dict[str, Person],
) -> None:
    """frank may create credentials in the namespace but not read its accounts: a refusal
    tells him the rule, not who the owners are."""
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "request-credentials", "namespace": namespace},
        "rules": [
            {
                "apiGroups": ["iam.kubeiam.io"],
                "resources": ["serviceaccountcredentials"],
                "verbs": ["get", "create", "patch"],
            }
        ],
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(role))
    bind(cluster, namespace, "frank-requests", "role:request-credentials", "--user=frank")
    allowed(team["admin"].apply(account(), namespace))
    result = Person(cluster, "--as=frank").apply(credential_manifest("franks"), namespace)
    refused(
        result,
        "frank may not create credentials of ServiceAccount 'pipeline': only its owners or"
        " whoever holds the RBAC verb 'manage' on serviceaccounts.iam.kubeiam.io 'pipeline'"
        f" in namespace '{namespace}' may (rule: owners)",
    )
    assert "alice" not in result.stderr
    assert "team-a" not in result.stderr


def test_display_name_is_optional_and_listings_show_the_name(
    cluster: ClusterHandle,
    namespace: str,
    policy_operator: OperatorProcess,
    team: dict[str, Person],
) -> None:
    allowed(team["admin"].apply(account(), namespace))
    allowed(team["alice"].apply(_without_display_name(credential_manifest("ci")), namespace))
    allowed(team["alice"].apply(credential_manifest("named", displayName="Nightly CI"), namespace))
    allowed(team["alice"].apply(_without_display_name(trust("gh")), namespace))

    def listed(kind: str) -> dict[str, str]:
        lines = cluster.kubectl("get", kind, "-n", namespace).stdout.splitlines()
        start = lines[0].index("DISPLAY NAME")
        return {line.split()[0]: line[start:].split("  ")[0].strip() for line in lines[1:]}

    wait_for(
        lambda: listed("iamcred") == {"ci": "ci", "named": "Nightly CI"},
        what="kubectl get iamcred to show each credential's display name",
    )
    wait_for(
        lambda: listed("iamtrust") == {"gh": "gh"},
        what="kubectl get iamtrust to show the trust's name as its display name",
    )
    allowed(team["alice"]("patch", "iamcred", "named", "-n", namespace, "--type=json",
                          "-p", '[{"op":"remove","path":"/spec/displayName"}]'))  # fmt: skip
    wait_for(
        lambda: listed("iamcred") == {"ci": "ci", "named": "named"},
        what="a removed display name to give way to the name",
    )
