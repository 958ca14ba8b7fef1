"""The exactly-once Secret writer: one create with a deterministic name, never an update.

Issuance is crash-safe because the Secret's name is fixed by the credential and a create never
overwrites: after a crash the next attempt's create meets the first one's Secret (409), reads
only its metadata, and adopts its hash if the credential owns it. A Secret the credential does
not own is never touched.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubeiam.api.credential import (
    ACCOUNT_ANNOTATION,
    ACCOUNT_LABEL,
    CREDENTIAL_ANNOTATION,
    CREDENTIAL_ID_ANNOTATION,
    CREDENTIAL_LABEL,
    CREDENTIAL_UID_ANNOTATION,
    HASH_ANNOTATION,
    MANAGED_BY_LABEL,
)
from kubeiam.domain.conditions import format_time
from kubeiam.domain.secret_format import generate, secret_hash
from kubeiam.kube import api, faults
from kubeiam.kube.resources import GROUP, VERSION

SECRET_TYPE = "iam.kubeiam.io/client-credentials"
# The keys are the API's (api/credential.py), which refuses them in a template.
MANAGED_BY = {MANAGED_BY_LABEL: "kube-iam"}


@dataclass(frozen=True)
class SecretRequest:
    """Everything the Secret of one credential is made from, except the secret itself."""

    namespace: str
    name: str
    credential: str
    credential_uid: str
    credential_id: str
    account: str
    client_id: str
    token_url: str
    expires_at: datetime.datetime
    keys: Mapping[str, str]
    labels: Mapping[str, str]
    annotations: Mapping[str, str]


@dataclass(frozen=True)
class Written:
    """This call wrote the Secret, or adopted the one an earlier attempt wrote."""

    secret_hash: str


@dataclass(frozen=True)
class Taken:
    """A Secret of that name exists and is not this credential's."""

    owner: str


def _owned_by(metadata: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in metadata.get("ownerReferences") or [])


def _left_by_predecessor(metadata: Mapping[str, Any], credential: str) -> bool:
    """Owned by a credential of this name but another UID: one deleted and created again."""
    return bool(metadata.get("deletionTimestamp")) or any(
        ref.get("kind") == "ServiceAccountCredential" and ref.get("name") == credential
        for ref in metadata.get("ownerReferences") or []
    )


def _describe_owner(metadata: Mapping[str, Any]) -> str:
    owners = [
        f"{ref.get('kind')} {ref.get('name')!r}" for ref in metadata.get("ownerReferences") or []
    ]
    return ", ".join(owners) if owners else "no owner (created by someone else)"


def _manifest(request: SecretRequest, client_secret: str, digest: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": SECRET_TYPE,
        "immutable": True,
        "metadata": {
            "name": request.name,
            "namespace": request.namespace,
            "labels": {
                **request.labels,
                **MANAGED_BY,
                CREDENTIAL_LABEL: request.credential,
                ACCOUNT_LABEL: request.account,
            },
            "annotations": {
                **request.annotations,
                CREDENTIAL_ANNOTATION: request.credential,
                CREDENTIAL_UID_ANNOTATION: request.credential_uid,
                ACCOUNT_ANNOTATION: request.account,
                CREDENTIAL_ID_ANNOTATION: request.credential_id,
                HASH_ANNOTATION: digest,
            },
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "ServiceAccountCredential",
                    "name": request.credential,
                    "uid": request.credential_uid,
                    "controller": True,
                }
            ],
        },
        "stringData": {
            request.keys["clientId"]: request.client_id,
            request.keys["clientSecret"]: client_secret,
            request.keys["tokenUrl"]: request.token_url,
            request.keys["expiresAt"]: format_time(request.expires_at),
        },
    }


async def write_once(
    request: SecretRequest, *, random_bytes: Callable[[int], bytes] = os.urandom
) -> Written | Taken:
    """Generate the client secret and write it into its Secret, unless that was done before."""
    client_secret = generate(request.credential_id, random_bytes)
    digest = secret_hash(client_secret)
    faults.crash_point("after-secret-generated")
    try:
        await api.create_secret(request.namespace, _manifest(request, client_secret, digest))
        return Written(digest)
    except api.AlreadyExists:
        pass
    finally:
        # The only reference: from here on, the secret exists in the Secret or nowhere.
        del client_secret
    metadata = await api.get_secret_metadata(request.namespace, request.name)
    if metadata is None:
        # Deleted between our create and our read: the next attempt creates it.
        raise api.Conflict(f"Secret {request.name!r} vanished while being adopted")
    if _owned_by(metadata, request.credential_uid):
        annotations = metadata.get("annotations") or {}
        digest = str(annotations.get(HASH_ANNOTATION, ""))
        if digest.startswith("sha256:"):
            return Written(digest)
    elif _left_by_predecessor(metadata, request.credential):
        # A deleted credential of the same name owned it; the garbage collector removes it.
        raise api.Conflict(f"Secret {request.name!r} still belongs to a deleted credential")
    return Taken(_describe_owner(metadata))


async def secret_state(namespace: str, name: str, credential_uid: str) -> str:
    """`present` (ours), `absent`, or `foreign` (someone else's Secret has the name)."""
    metadata = await api.get_secret_metadata(namespace, name)
    if metadata is None:
        return "absent"
    return "present" if _owned_by(metadata, credential_uid) else "foreign"


async def delete_owned(namespace: str, name: str, credential_uid: str) -> bool:
    """Delete the credential's own Secret, never another's. True if one was deleted."""
    metadata = await api.get_secret_metadata(namespace, name)
    if metadata is None or not _owned_by(metadata, credential_uid):
        return False
    await api.delete_secret(namespace, name, str(metadata.get("uid")))
    return True
