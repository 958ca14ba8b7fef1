"""The `kube-iam` command: run the operator, and manage the local control plane."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from kubeiam.devcluster.errors import ControlPlaneError


def _run(args: argparse.Namespace) -> int:
    import kopf

    from kubeiam import runtime  # (importing it registers the handlers)
    from kubeiam.kube import kopf_bodies, kopf_toggles
    from kubeiam.settings import get_settings

    settings = get_settings()  # fail here, with the variable's name, on a bad KUBEIAM_* value
    as_json = settings.observability.log_format == "json"
    # Every line names the object it is about: a prefix in text, an `object` key in JSON.
    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if as_json else kopf.LogFormat.FULL,
        log_prefix=not as_json,
        log_refkey="object" if as_json else None,
    )
    # Before kopf.run builds its toggle sets; refuses to start against a kopf it was not
    # written for (kube/kopf_toggles.py says why it exists).
    kopf_toggles.install(enabled=settings.watching.counted_kopf_toggles)
    kopf_bodies.install(enabled=settings.watching.slim_watch_events)
    liveness = args.liveness or settings.observability.liveness_endpoint
    try:
        if args.admission_only:
            # Serves the webhook and watches nothing: no peering, every process answers.
            kopf.run(
                registry=runtime.admission_only_registry(),
                clusterwide=True,
                standalone=True,
                liveness_endpoint=liveness,
            )
        else:
            kopf.run(
                clusterwide=not args.namespace,
                namespaces=args.namespace or (),
                standalone=args.standalone or None,
                priority=args.priority,
                peering_name=args.peering,
                liveness_endpoint=liveness,
            )
    except Exception:
        # Through the log, not Python's own traceback print: in JSON, a log pipeline must
        # read the reason the operator stopped like any other line.
        logging.getLogger("kubeiam").exception("The operator stopped on an error.")
        return 1
    return 0


def _token_server(args: argparse.Namespace) -> int:
    from kubeiam.settings import get_settings
    from kubeiam.tokens import workers

    get_settings()  # fail here, with the variable's name, on a bad KUBEIAM_* value
    workers.configure_logging(args.verbose)
    return workers.run(get_settings(), verbose=args.verbose)


def _cluster(args: argparse.Namespace) -> int:
    from kubeiam.devcluster.cluster import DEFAULT_STATE_DIR, LocalCluster

    cluster = LocalCluster(Path(args.state_dir) if args.state_dir else DEFAULT_STATE_DIR)
    if args.action == "up":
        already = cluster.is_running()
        kubeconfig = cluster.up()
        print(f"Local control plane {'already running' if already else 'started'}.")
        print(f"  export KUBECONFIG={kubeconfig}")
        print(f"  {cluster.kubectl_path} get iam --all-namespaces")
        issuer = cluster.token_issuer
        if issuer is not None:
            # Where the API server looks for kube-iam's token server (docs/local-control-plane.md).
            print(
                f"The API server accepts kube-iam tokens (audience {issuer.audience}) from a token"
                f" server at {issuer.url}: KUBEIAM_TOKEN_PORT={issuer.port}"
                f" KUBEIAM_TOKEN_CERT_DIR={issuer.cert_dir}"
            )
    elif args.action == "down":
        cluster.down()
        print("Local control plane stopped.")
    elif args.action == "status":
        running = cluster.is_running()
        print("running" if running else "stopped")
        return 0 if running else 3
    return 0


def _webhook_cert(args: argparse.Namespace) -> int:
    import datetime

    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    from kubeiam.devcluster import webhook_cert

    config.load_kube_config(config_file=args.kubeconfig)  # type: ignore[no-untyped-call]
    core = client.CoreV1Api()

    def current(name: str) -> dict[str, object] | None:
        try:
            secret = core.read_namespaced_secret(name, args.namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise SystemExit(
                f"kube-iam: cannot read Secret {args.namespace}/{name}: {error.status} "
                f"{error.reason} (the CA it holds is what makes a renewal seamless)"
            ) from None
        return {"data": secret.data or {}}

    now = datetime.datetime.now(datetime.UTC)
    issued = webhook_cert.issue(
        namespace=args.namespace,
        service=args.service,
        ca_secret=current(webhook_cert.CA_SECRET),
        serving_secret=current(webhook_cert.SERVING_SECRET),
        renew=args.renew,
        now=now,
    )
    sys.stdout.write(issued.manifests)
    sys.stderr.write(webhook_cert.summary(issued, now))
    return 0


def _settings(args: argparse.Namespace) -> int:
    from kubeiam import settings

    if args.write is None:
        print(settings.markdown_table(), end="")
        return 0
    page = Path(args.write)
    page.write_text(settings.with_table(page.read_text()))
    return 0


def _crds(args: argparse.Namespace) -> int:
    from kubeiam.api import crdgen

    argv = ["--check", args.dir] if args.check else ["--out", args.dir]
    return crdgen.main(argv)


def _trust_check(args: argparse.Namespace) -> int:
    import asyncio
    import datetime

    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    from kubeiam.api import FederationTrust
    from kubeiam.kube.resources import GROUP, TRUSTS, VERSION
    from kubeiam.oidc.verify import verify
    from kubeiam.settings import get_settings

    namespace, _, name = args.trust.rpartition("/")
    if not namespace or not name:
        print("kube-iam: name the trust as <namespace>/<name>", file=sys.stderr)
        return 2
    token_source = sys.stdin if args.token == "-" else Path(args.token).open()  # noqa: SIM115
    with token_source:
        token = token_source.read().strip()
    config.load_kube_config()  # type: ignore[no-untyped-call]
    try:
        body = client.CustomObjectsApi().get_namespaced_custom_object(
            GROUP, VERSION, namespace, TRUSTS, name
        )
    except ApiException as error:
        print(
            f"kube-iam: cannot read trust {args.trust}: {error.status} {error.reason}",
            file=sys.stderr,
        )
        return 1
    trust = FederationTrust.model_validate(body)
    now = datetime.datetime.now(datetime.UTC)
    verdict = asyncio.run(verify(token, trust.spec, get_settings(), now=now))
    for check in verdict.checks:
        mark = "pass" if check.passed else f"FAIL {check.reason}"
        print(f"{mark:<28} {check.name}: {check.message}")
    print("trusted" if verdict.accepted else "not trusted")
    return 0 if verdict.accepted else 1


def _token(args: argparse.Namespace) -> int:
    import json

    from kubeiam.api.credential import DEFAULT_SECRET_KEYS
    from kubeiam.tokens import client

    try:
        ca_bundle = Path(args.cacert).read_text() if args.cacert else None
        if args.secret:
            values, names = _secret_values(args.secret, args.kubeconfig)
            where = f"Secret {args.secret}"
        else:
            directory = Path(args.dir) if args.dir else client.DEFAULT_DIRECTORY
            values, names = client.read_directory(directory), dict(DEFAULT_SECRET_KEYS)
            where = str(directory)
        credential = client.credential_from(
            values,
            where,
            names=names,
            token_url=args.token_url,
            ca_bundle=ca_bundle,
        )
        dpop_key = client.load_dpop_key(Path(args.dpop_key).read_bytes()) if args.dpop_key else None
    except (client.CredentialError, OSError) as error:
        print(f"kube-iam token: {error}", file=sys.stderr)
        return 2
    try:
        result = client.request_token(
            credential,
            client.https_post(credential.ca_bundle, args.timeout),
            scope=args.scope,
            audience=args.audience,
            dpop_key=dpop_key,
        )
    except OSError as error:  # unreachable, TLS refused, timed out: the reason names no secret
        reason = getattr(error, "reason", None) or error
        print(f"kube-iam token: cannot reach {credential.token_url}: {reason}", file=sys.stderr)
        return 1
    if isinstance(result, client.Refused):
        print(f"kube-iam token: {result.message()}", file=sys.stderr)
        return 1
    if dpop_key is not None:
        problem = client.binding_problem(result, dpop_key)
        if problem is not None:
            print(f"kube-iam token: {problem}", file=sys.stderr)
            return 1
    print(json.dumps(result.answer, indent=2) if args.json else result.token)
    return 0


def _secret_values(name: str, kubeconfig: str | None) -> tuple[dict[str, str], dict[str, str]]:
    """The credential's values from its Secret, read with the kubeconfig's identity, and the
    Secret's key names (its credential's, when it renamed them)."""
    import urllib3
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    from kubeiam.api.credential import CREDENTIAL_ANNOTATION, DEFAULT_SECRET_KEYS
    from kubeiam.kube.resources import CREDENTIALS, GROUP, VERSION
    from kubeiam.tokens.client import CredentialError, key_names, renamed, secret_values

    namespace, _, secret = name.partition("/")
    if not namespace or not secret or "/" in secret:
        raise CredentialError("name the Secret as --secret <namespace>/<name>")
    try:
        config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        read = client.CoreV1Api().read_namespaced_secret(secret, namespace)
    except ApiException as error:
        raise CredentialError(f"cannot read Secret {name}: {error.status} {error.reason}") from None
    except config.ConfigException as error:
        raise CredentialError(f"no usable kubeconfig: {error}") from None
    except urllib3.exceptions.HTTPError as error:  # the API server is not reachable
        raise CredentialError(f"cannot reach the API server: {type(error).__name__}") from None
    values = secret_values(read.data)
    annotations = (read.metadata.annotations if read.metadata else None) or {}
    credential = annotations.get(CREDENTIAL_ANNOTATION)
    if not credential or not renamed(values):
        return values, dict(DEFAULT_SECRET_KEYS)
    # Only then: the credential's spec.secretTemplate.keys says which key holds what.
    try:
        body = client.CustomObjectsApi().get_namespaced_custom_object(
            GROUP, VERSION, namespace, CREDENTIALS, credential
        )
    except ApiException:
        return values, dict(DEFAULT_SECRET_KEYS)  # the missing keys are named then
    return values, key_names(body if isinstance(body, dict) else {})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kube-iam", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the operator against the current kubeconfig")
    run.add_argument(
        "--namespace",
        "-n",
        action="append",
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    run.add_argument("--standalone", action="store_true", help="do not take part in kopf peering")
    run.add_argument("--priority", type=int, default=0, help="kopf peering priority")
    run.add_argument(
        "--peering",
        help="the ClusterKopfPeering the replicas meet in, which must then exist (default: "
        "kube-iam, as deploy/ installs it, or standalone when it does not exist)",
    )
    run.add_argument(
        "--liveness",
        help="serve kopf's health endpoint here, e.g. http://0.0.0.0:8080/healthz (default: "
        "KUBEIAM_LIVENESS_ENDPOINT)",
    )
    run.add_argument(
        "--admission-only",
        action="store_true",
        help="serve the admission webhook only, reconciling nothing (a webhook-only replica)",
    )
    run.add_argument("--verbose", "-v", action="store_true", help="more log output")
    run.set_defaults(handler=_run)

    token_server = commands.add_parser(
        "token-server",
        help="serve access tokens for credentials (https; KUBEIAM_TOKEN_* settings, "
        "docs/tokens.md)",
    )
    token_server.add_argument("--verbose", "-v", action="store_true", help="more log output")
    token_server.set_defaults(handler=_token_server)

    cluster = commands.add_parser("cluster", help="the local control plane on loopback")
    cluster.add_argument("action", choices=["up", "down", "status"])
    cluster.add_argument(
        "--state-dir", help="where the cluster keeps its files (default: .local in the repository)"
    )
    cluster.set_defaults(handler=_cluster)

    token = commands.add_parser(
        "token",
        help="print an access token for a credential, from its Secret (--secret) or its mounted "
        "files (--dir); for $(kube-iam token ...) in scripts",
    )
    source = token.add_mutually_exclusive_group()
    source.add_argument(
        "--secret",
        metavar="NAMESPACE/NAME",
        help="read the credential's generated Secret through the kubeconfig",
    )
    source.add_argument(
        "--dir",
        metavar="DIR",
        help="read client-id, client-secret, token-url and ca.crt from files in DIR, as a pod "
        "mounts the Secret (the default, at /var/run/kube-iam)",
    )
    token.add_argument("--kubeconfig", help="with --secret: the cluster (default: KUBECONFIG)")
    token.add_argument("--scope", help="space-separated roles, a subset of the credential's")
    token.add_argument("--audience", help="the audience to ask the token for")
    token.add_argument(
        "--dpop-key",
        metavar="FILE",
        help="PEM EC P-256 private key: send an RFC 9449 DPoP proof and insist on a bound token",
    )
    token.add_argument(
        "--json", action="store_true", help="print the whole answer, not only the token"
    )
    token.add_argument(
        "--token-url",
        help="post here, not to the credential's token-url (e.g. through a port-forward)",
    )
    token.add_argument(
        "--cacert",
        metavar="FILE",
        help="PEM CA bundle for the token endpoint, instead of the credential's ca.crt",
    )
    token.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    token.set_defaults(handler=_token)

    trust = commands.add_parser("trust", help="FederationTrusts")
    trust_commands = trust.add_subparsers(dest="trust_command", required=True)
    check = trust_commands.add_parser(
        "check",
        help="evaluate a token against a trust as the token service will; exit 0 if trusted",
    )
    check.add_argument("trust", metavar="NAMESPACE/NAME", help="the FederationTrust")
    check.add_argument(
        "--token", required=True, metavar="FILE", help="file holding the token (- for stdin)"
    )
    check.set_defaults(handler=_trust_check)

    cert = commands.add_parser(
        "webhook-cert",
        help="print the webhook's serving certificate and CA Secrets and the webhook "
        "configurations with the CA bundle, for `kubectl apply -f -` on a cluster without "
        "cert-manager; reads the CA the cluster holds, so running it again is idempotent",
    )
    cert.add_argument("--namespace", default="kube-iam-system")
    cert.add_argument("--service", default="kube-iam-webhook")
    cert.add_argument(
        "--renew",
        action="store_true",
        help="issue a new serving certificate even if the current one is still good (with the "
        "same CA, or a new one beside it when the CA nears its end)",
    )
    cert.add_argument("--kubeconfig", help="the cluster to read the current CA from")
    cert.set_defaults(handler=_webhook_cert)

    crds = commands.add_parser("crds", help="generate crds/ from the API models")
    crds.add_argument("--check", action="store_true", help="fail if crds/ is out of date")
    crds.add_argument("--dir", default="crds")
    crds.set_defaults(handler=_crds)

    table = commands.add_parser(
        "settings", help="print the table of every KUBEIAM_* setting (docs/settings.md's)"
    )
    table.add_argument("--write", metavar="PAGE", help="replace the table in this page instead")
    table.set_defaults(handler=_settings)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ControlPlaneError as error:
        print(f"kube-iam: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
