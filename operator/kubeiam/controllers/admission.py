"""The admission webhook: who may create, change and delete accounts, credentials and trusts.

kopf serves it (its admission server, started by runtime.py on every replica, paused or not),
so each handler here is one webhook of deploy/webhook.yaml, its id the URL path. The rules are
in domain/admission.py; this module gathers their facts: the account, read fresh from the API
server (an index could lag behind an account created a moment ago in the same `kubectl apply`),
and SubjectAccessReviews, cached briefly.

A mutating webhook stamps the creator into an annotation, because a validating one cannot
write and the replica that reconciles the object may not be the one that admitted it; the
controllers copy the stamp into status.createdBy.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Literal, cast

import kopf
from kubernetes.client.exceptions import ApiException

from kubeiam.domain import admission as rules
from kubeiam.kube import access, api, metrics, ownership
from kubeiam.kube.resources import CREDENTIALS, GROUP, SERVICE_ACCOUNTS, TRUSTS, VERSION
from kubeiam.settings import Settings, get_settings

# The handler ids are the webhook URL paths deploy/webhook.yaml and the local control plane use.
KINDS = {
    SERVICE_ACCOUNTS: rules.Kind.ACCOUNT,
    CREDENTIALS: rules.Kind.CREDENTIAL,
    TRUSTS: rules.Kind.TRUST,
}
VALIDATE_IDS = {plural: f"validate-{plural}" for plural in KINDS}
STAMP_IDS = {plural: f"created-by-{plural}" for plural in KINDS}
# The kinds the garbage collector deletes with their account.
OWNED_BY_ACCOUNT = frozenset({CREDENTIALS, TRUSTS})
# Every kind answers to its account's owners on delete too (deploy/webhook.yaml registers the
# same operations; the garbage collector and the namespace controller are exempt there).
_Operation = Literal["CREATE", "UPDATE", "DELETE"]
VALIDATE_OPERATIONS: dict[str, tuple[_Operation, ...]] = {
    plural: ("CREATE", "UPDATE", "DELETE") for plural in KINDS
}

_cache: access.AccessCache | None = None


def _access_cache(settings: Settings) -> access.AccessCache:
    global _cache  # one cache a process, its TTL from the settings read at first use
    if _cache is None:
        _cache = access.AccessCache(ttl=settings.admission.access_review_ttl)
    return _cache


def _policy(settings: Settings) -> rules.Policy:
    return rules.Policy(
        role_catalogue=frozenset(settings.admission.role_catalogue),
        allowed_scopes=frozenset(settings.admission.allowed_scopes),
    )


def _spec(body: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if body is None:
        return None
    return dict(body.get("spec") or {})


def _creator(body: Mapping[str, Any] | None) -> str | None:
    annotations = ((body or {}).get("metadata") or {}).get("annotations") or {}
    value = annotations.get(rules.CREATED_BY_ANNOTATION)
    return None if value is None else str(value)


def _request(
    kind: rules.Kind,
    operation: str,
    userinfo: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
) -> rules.Request:
    body = new if new is not None else old or {}
    metadata = body.get("metadata") or {}
    return rules.Request(
        kind=kind,
        operation=rules.Operation(operation),
        namespace=str(metadata.get("namespace") or ""),
        name=str(metadata.get("name") or ""),
        requester=rules.Requester.from_userinfo(userinfo),
        new_spec=_spec(new),
        old_spec=_spec(old),
        new_creator=_creator(new),
        old_creator=_creator(old),
    )


async def _judge(request: rules.Request, settings: Settings, warnings: list[str]) -> None:
    """Raise kopf.AdmissionError with the rule's message when the request is refused."""
    planned = rules.checks(request, _policy(settings))
    if isinstance(planned, rules.Refusal):
        raise kopf.AdmissionError(str(planned), code=403)
    timeout = settings.admission.timeout
    cache = _access_cache(settings)
    fetched = None
    if planned.account is not None:
        body = await api.get_account(request.namespace, planned.account, request_timeout=timeout)
        fetched = None if body is None else rules.AccountFacts.from_body(body)
        refusal = rules.account_refusal(request, fetched)
        if refusal is not None:
            raise kopf.AdmissionError(str(refusal), code=403)
    account = rules.account_facts(request, fetched)

    async def may(verb: str) -> bool:
        return await access.may(
            cache,
            request.requester,
            verb,
            rules.ACCOUNTS_RESOURCE,
            request.namespace,
            request.account_name,
            request_timeout=timeout,
        )

    may_manage = False
    show_owners = True
    if rules.needs_owner(request) and not (
        account is not None and rules.is_owner(request.requester, account.owners)
    ):
        may_manage = await may(rules.MANAGE)
        # About to be refused: name the owners only to whoever may read the account anyway.
        show_owners = may_manage or await may(rules.READ)
    account_roles = fetched.roles if fetched is not None else ()
    bind_roles = rules.granted_roles(request, account_roles)
    may_bind: dict[str, bool] = {}
    if bind_roles:
        may_bind = await access.may_each(
            cache,
            request.requester,
            rules.BIND,
            rules.ROLES_RESOURCE,
            request.namespace,
            bind_roles,
            request_timeout=timeout,
        )
    refusal = rules.decide(
        request, fetched, may_manage=may_manage, may_bind=may_bind, show_owners=show_owners
    )
    if refusal is not None:
        raise kopf.AdmissionError(str(refusal), code=403)
    if fetched is not None:
        warnings.extend(rules.role_warnings(request, account_roles))


async def validate(
    resource: kopf.Resource,
    operation: str,
    userinfo: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
    warnings: list[str],
    **_: Any,
) -> None:
    """Allow the request, or refuse it with the first rule it breaks."""
    kind = KINDS[resource.plural]
    started = time.perf_counter()
    verdict = "allowed"
    try:
        await _judge(_request(kind, operation, userinfo, old, new), get_settings(), warnings)
    except kopf.AdmissionError:
        verdict = "refused"
        raise
    except (ApiException, api.Refused, TimeoutError, OSError) as error:
        # Fail closed, with a message that says why and what to do; never the response body.
        verdict = "error"
        status = getattr(error, "status", None) or type(error).__name__
        raise kopf.AdmissionError(
            f"kube-iam could not check this request: the API server did not answer ({status});"
            " nothing was changed, try again",
            code=503,
        ) from None
    finally:
        metrics.ADMISSION_SECONDS.labels(str(kind), operation, verdict).observe(
            time.perf_counter() - started
        )


async def stamp(
    resource: kopf.Resource,
    operation: str,
    userinfo: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
    patch: kopf.Patch,
    **_: Any,
) -> None:
    """Record who created the object, and keep that record as it was on every update.

    A credential or a trust is also made owned by its account here, so that the operator does
    not have to write it afterwards; an update that drops that reference gets it back.
    """
    new_metadata = (new or {}).get("metadata") or {}
    old_metadata = (old or {}).get("metadata") or {}
    write, value = rules.stamped_annotation(
        rules.Operation(operation),
        rules.Requester.from_userinfo(userinfo),
        new_metadata.get("annotations"),
        old_metadata.get("annotations"),
    )
    if write:
        patch.metadata.annotations[rules.CREATED_BY_ANNOTATION] = value
    if resource.plural in OWNED_BY_ACCOUNT and new is not None:
        reference = await _account_reference(operation, new, old)
        if reference is not None:
            references = ownership.with_reference(new_metadata.get("ownerReferences"), reference)
            if references is not None:
                patch.metadata["ownerReferences"] = references


async def _account_reference(
    operation: str, new: Mapping[str, Any], old: Mapping[str, Any] | None
) -> Mapping[str, Any] | None:
    """The owner reference to the object's account: the old object's, or one read now."""
    account = str((new.get("spec") or {}).get("serviceAccountName") or "")
    if operation != "CREATE":
        kept = [
            ref
            for ref in ((old or {}).get("metadata") or {}).get("ownerReferences") or []
            if ref.get("kind") == "ServiceAccount" and ref.get("name") == account
        ]
        return kept[0] if kept else None
    if not account:
        return None
    namespace = str(new.get("metadata", {}).get("namespace") or "")
    try:
        body = await api.get_account(
            namespace, account, request_timeout=get_settings().admission.timeout
        )
    except (ApiException, api.Refused, TimeoutError, OSError):
        # The validating webhook refuses or fails the request with the reason; if it lets it
        # through, the operator writes the reference when it first handles the object.
        return None
    return None if body is None else ownership.account_reference(body)


def register(registry: kopf.OperatorRegistry) -> None:
    """Put the webhook handlers into `registry`: the operator's, or an admission-only one."""
    for plural in KINDS:
        kopf.on.validate(
            GROUP,
            VERSION,
            plural,
            id=VALIDATE_IDS[plural],
            operations=VALIDATE_OPERATIONS[plural],
            registry=registry,
        )(cast(Any, validate))
        kopf.on.mutate(
            GROUP,
            VERSION,
            plural,
            id=STAMP_IDS[plural],
            operations=("CREATE", "UPDATE"),
            registry=registry,
        )(cast(Any, stamp))
