"""deploy/ as a user installs it: it applies cleanly, and the workload is locked down."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeiam.devcluster import install, webhook
from kubeiam.devcluster.binaries import REPO_ROOT
from kubeiam.settings import Settings, variables

from .support import ClusterHandle, wait_for


def _objects(cluster: ClusterHandle) -> dict[str, dict[str, Any]]:
    return {
        f"{doc['kind']}/{doc['metadata']['name']}": doc for doc in install.render(cluster.kubectl)
    }


def test_applying_deploy_again_changes_nothing(cluster: ClusterHandle) -> None:
    """The session installed deploy/ the way docs/install.md says; the live objects match it."""
    if cluster.operator_kubeconfig is None:
        pytest.skip("the cluster runs an overlay of deploy/ (another image and settings)")
    objects = install.render(cluster.kubectl)
    if cluster.webhook is not None:
        # The local control plane points deploy/'s webhook configurations at loopback (its
        # clientConfig); everything else in them is deploy/'s.
        local = {doc["kind"]: doc for doc in webhook.configurations(cluster.webhook)}
        for doc in objects:
            if doc["kind"] in local:
                live = cluster.get(doc["kind"].lower(), doc["metadata"]["name"], "")
                assert live is not None
                for ours, theirs in zip(
                    live["webhooks"], local[doc["kind"]]["webhooks"], strict=True
                ):
                    assert ours["clientConfig"] == theirs["clientConfig"]
                    assert ours["rules"] == doc["webhooks"][live["webhooks"].index(ours)]["rules"]
        objects = [doc for doc in objects if doc["kind"] not in local]
    diff = cluster.kubectl("diff", "-f", "-", input=yaml.safe_dump_all(objects), check=False)
    if cluster.get("deployment", "kube-iam", install.NAMESPACE) is None:
        # Installed without the workload (a cluster with nodes): only the Deployment differs.
        assert "kind: Deployment" in diff.stdout, diff.stderr
        return
    assert diff.returncode == 0, diff.stdout + diff.stderr


def test_the_deployments_are_locked_down_and_probed(cluster: ClusterHandle) -> None:
    objects = _objects(cluster)
    deployments = {
        install.SERVICE_ACCOUNT: objects["Deployment/kube-iam"],
        install.WEBHOOK_SERVICE_ACCOUNT: objects["Deployment/kube-iam-webhook"],
        install.TOKEN_SERVER_SERVICE_ACCOUNT: objects["Deployment/kube-iam-token-server"],
    }
    for service_account, deployment in deployments.items():
        spec = deployment["spec"]
        pod = spec["template"]["spec"]
        assert spec["replicas"] == 2
        assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        # Each runs as its own ServiceAccount: the webhook parses what callers send and holds
        # no right to Secrets.
        assert pod["serviceAccountName"] == service_account
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        (container,) = pod["containers"]
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        for kind in ("requests", "limits"):
            assert set(container["resources"][kind]) == {"cpu", "memory"}
        assert container["envFrom"] == [{"configMapRef": {"name": install.SETTINGS_CONFIGMAP}}]
        assert re.fullmatch(r"kube-iam:\d+\.\d+\.\d+", container["image"])
        # The token server serves /healthz on its https port; the others on a health port.
        probed = (
            {"path": "/healthz", "port": "https", "scheme": "HTTPS"}
            if service_account == install.TOKEN_SERVER_SERVICE_ACCOUNT
            else {"path": "/healthz", "port": "health"}
        )
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"] == probed, probe
        # A drain evicts one replica of each at a time.
        budgets = [
            doc["spec"]
            for doc in objects.values()
            if doc["kind"] == "PodDisruptionBudget" and doc["spec"]["selector"] == spec["selector"]
        ]
        assert [budget["minAvailable"] for budget in budgets] == [1]

    # The operator reconciles and serves no webhook; the webhook admits and watches nothing,
    # so a burst of reconciling never delays an admission answer.
    (operator,) = deployments[install.SERVICE_ACCOUNT]["spec"]["template"]["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in operator["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    command = " ".join(operator["command"] + operator["args"])
    assert "kube-iam run --liveness=http://0.0.0.0:8080/healthz" in command
    assert "--standalone" not in command
    assert {"name": "KUBEIAM_WEBHOOK_PORT", "value": "0"} in operator["env"]

    webhook_deployment = deployments[install.WEBHOOK_SERVICE_ACCOUNT]
    (webhook_container,) = webhook_deployment["spec"]["template"]["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in webhook_container["ports"]}
    assert ports == {"webhook": 9443, "health": 8080, "metrics": 9090}
    assert webhook_container["command"] == [
        "kube-iam",
        "run",
        "--admission-only",
        "--liveness=http://0.0.0.0:8080/healthz",
    ]
    mounts = {m["name"]: m["mountPath"] for m in webhook_container["volumeMounts"]}
    settings = objects[f"ConfigMap/{install.SETTINGS_CONFIGMAP}"]["data"]
    assert mounts["webhook-tls"] == settings["KUBEIAM_WEBHOOK_CERT_DIR"]
    # The Service sends the API server's calls to the webhook's pods only.
    service = objects["Service/kube-iam-webhook"]["spec"]
    assert [p["targetPort"] for p in service["ports"]] == ["webhook"]
    assert service["selector"] == webhook_deployment["spec"]["selector"]["matchLabels"]

    # The token server: its own process, certificate and Service; nothing but tokens.
    token_deployment = deployments[install.TOKEN_SERVER_SERVICE_ACCOUNT]
    (token_container,) = token_deployment["spec"]["template"]["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in token_container["ports"]}
    assert ports == {"https": int(settings["KUBEIAM_TOKEN_PORT"]), "metrics": 9090}
    assert token_container["command"] == ["kube-iam", "token-server"]
    mounts = {m["name"]: m["mountPath"] for m in token_container["volumeMounts"]}
    assert mounts["token-server-tls"] == settings["KUBEIAM_TOKEN_CERT_DIR"]
    volumes = {v["name"]: v for v in token_deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["token-server-tls"]["secret"]["secretName"] == "kube-iam-token-server-tls"
    token_service = objects["Service/kube-iam-token-server"]["spec"]
    assert [(p["port"], p["targetPort"]) for p in token_service["ports"]] == [(443, "https")]
    assert token_service["selector"] == token_deployment["spec"]["selector"]["matchLabels"]


def test_the_network_policies_admit_only_the_api_server_and_scrapers(
    cluster: ClusterHandle, tmp_path: Path
) -> None:
    """deploy/network-policy, used from an overlay as the README says: the webhook port only
    from the API server's addresses, /metrics only from labelled namespaces, nothing else."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # kustomize takes paths relative to the overlay only.
                "resources": [os.path.relpath(REPO_ROOT / "deploy", overlay)],
                "components": [os.path.relpath(REPO_ROOT / "deploy" / "network-policy", overlay)],
                "patches": [
                    {
                        "target": {"kind": "NetworkPolicy", "name": "kube-iam-webhook"},
                        "patch": yaml.safe_dump(
                            [
                                {
                                    "op": "replace",
                                    "path": "/spec/ingress/0/from",
                                    "value": [{"ipBlock": {"cidr": "10.0.0.10/32"}}],
                                }
                            ]
                        ),
                    }
                ],
            }
        )
    )
    rendered = {
        f"{doc['kind']}/{doc['metadata']['name']}": doc
        for doc in install.render(cluster.kubectl, overlay)
    }
    webhook_pods = rendered["Deployment/kube-iam-webhook"]["spec"]["selector"]["matchLabels"]
    operator_pods = rendered["Deployment/kube-iam"]["spec"]["selector"]["matchLabels"]
    webhook_policy = rendered["NetworkPolicy/kube-iam-webhook"]["spec"]
    operator_policy = rendered["NetworkPolicy/kube-iam-operator"]["spec"]
    assert webhook_policy["podSelector"]["matchLabels"] == webhook_pods
    assert operator_policy["podSelector"]["matchLabels"] == operator_pods
    scrapers = [{"namespaceSelector": {"matchLabels": {"kube-iam.io/metrics-scraper": "true"}}}]
    assert webhook_policy["ingress"] == [
        {
            "from": [{"ipBlock": {"cidr": "10.0.0.10/32"}}],
            "ports": [{"port": "webhook", "protocol": "TCP"}],
        },
        {"from": scrapers, "ports": [{"port": "metrics", "protocol": "TCP"}]},
    ]
    assert operator_policy["ingress"] == [
        {"from": scrapers, "ports": [{"port": "metrics", "protocol": "TCP"}]}
    ]
    for policy in (webhook_policy, operator_policy):
        assert policy["policyTypes"] == ["Ingress"]
    # The API server accepts them as they are.
    cluster.kubectl(
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        input=yaml.safe_dump_all(
            [doc for doc in rendered.values() if doc["kind"] == "NetworkPolicy"]
        ),
    )


def test_every_setting_in_the_configmap_is_one_the_operator_reads(
    cluster: ClusterHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _objects(cluster)[f"ConfigMap/{install.SETTINGS_CONFIGMAP}"]["data"]
    known = {variable.name for variable in variables()}
    assert set(data) <= known, set(data) - known
    for name, value in data.items():
        monkeypatch.setenv(name, value)
    Settings()  # a bad value would stop the operator at start


def test_the_workload_pods_are_admitted_under_restricted_pod_security(
    cluster: ClusterHandle,
) -> None:
    """The namespace enforces the restricted profile; the ReplicaSet's pods are accepted.

    No kubelet runs on the local control plane, so they stay Pending: accepted is the point.
    """
    if cluster.get("deployment", "kube-iam", install.NAMESPACE) is None:
        pytest.skip("deploy/ was installed without its workload")
    namespace = cluster.get("namespace", install.NAMESPACE, "")
    assert namespace is not None
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"

    def pods() -> list[dict[str, Any]] | None:
        listed = json.loads(
            cluster.kubectl(
                "get",
                "pods",
                "-n",
                install.NAMESPACE,
                "--selector=app.kubernetes.io/name=kube-iam",
                "-o",
                "json",
            ).stdout
        )["items"]
        return listed if len(listed) >= 4 else None

    assert len(wait_for(pods, what="both Deployments' two pods to be created")) >= 4


def test_the_dockerfile_is_multi_stage_pinned_and_non_root() -> None:
    text = (REPO_ROOT / "deploy" / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    assert len(stages) >= 2, "a build stage and a final stage"
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, flags=re.MULTILINE)
    assert base is not None
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base.group(1))
    assert "uv sync --frozen" in stages[0]
    final = stages[-1]
    assert re.search(r"^USER \d+:\d+$", final, flags=re.MULTILINE), "a numeric non-root user"
    assert not re.search(r"^USER (0|root)\b", final, flags=re.MULTILINE)
    for tool in ("uv ", "pip install", "apt-get"):
        assert tool not in final, f"the final stage installs nothing ({tool.strip()})"
