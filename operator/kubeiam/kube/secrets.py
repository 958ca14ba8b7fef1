"""The exactly-once Secret writer: one create with a deterministic name, never an update.

Issuance is crash-safe because the Secret's name is fixed by the credential and a create never
overwrites: after a crash the next attempt's create meets the first one's Secret (409), and
adopts it only if the operator can prove it wrote it (domain/secret_proof.py: a MAC with a key
only the operator holds, `immutable`, its type and label). Any other Secret of that name is
never adopted and never touched.
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
    CA_BUNDLE_KEY,
    CREDENTIAL_ANNOTATION,
    CREDENTIAL_ID_ANNOTATION,
    CREDENTIAL_LABEL,
    CREDENTIAL_UID_ANNOTATION,
    HASH_ANNOTATION,
    MANAGED_BY_LABEL,
    PROOF_ANNOTATION,
)
from kubeiam.domain import secret_proof
from kubeiam.domain.conditions import format_time
from kubeiam.domain.secret_format import generate, secret_hash
from kubeiam.kube import api, faults
from kubeiam.kube.key_secret import KeyRing
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
    # The token endpoint's CA bundle (PEM), written under ca.crt; None writes no such key.
    ca_bundle: str | None = None


def secret_data(request: SecretRequest, client_secret: str) -> dict[str, str]:
    """What a pod that mounts the Secret reads: the four keys, and the CA bundle if any."""
    data = {
        request.keys["clientId"]: request.client_id,
        request.keys["clientSecret"]: client_secret,
        request.keys["tokenUrl"]: request.token_url,
        request.keys["expiresAt"]: format_time(request.expires_at),
    }
    if request.ca_bundle is not None:
        data[CA_BUNDLE_KEY] = request.ca_bundle
    return data


# What a write comes to, as domain/secret_proof.py names it: written or adopted (Ours), a
# Secret on its way out (Leftover), or someone else's (Foreign).
Outcome = secret_proof.Ours | secret_proof.Leftover | secret_proof.Foreign


def _expected(request: SecretRequest) -> secret_proof.Expected:
    return secret_proof.Expected(
        credential=request.credential,
        credential_uid=request.credential_uid,
        secret_name=request.name,
        secret_type=SECRET_TYPE,
        managed_by=MANAGED_BY,
        hash_annotation=HASH_ANNOTATION,
        proof_annotation=PROOF_ANNOTATION,
    )


def _manifest(
    request: SecretRequest, client_secret: str, digest: str, keys: KeyRing
) -> dict[str, Any]:
    key = secret_proof.SigningKey(keys.active, keys.keys[keys.active])
    proof = secret_proof.sign(
        key, credential_uid=request.credential_uid, secret_name=request.name, secret_hash=digest
    )
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
                PROOF_ANNOTATION: proof,
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
        "stringData": secret_data(request, client_secret),
    }


async def write_once(
    request: SecretRequest,
    keys: KeyRing,
    *,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> Outcome:
    """Generate the client secret and write it into its Secret, unless that was done before."""
    client_secret = generate(request.credential_id, random_bytes)
    digest = secret_hash(client_secret)
    faults.crash_point("after-secret-generated")
    try:
        created = await api.create_secret(
            request.namespace, _manifest(request, client_secret, digest, keys)
        )
        return secret_proof.Ours(digest, str(created.get("uid", "")))
    except api.AlreadyExists:
        pass
    finally:
        # The only reference: from here on, the secret exists in the Secret or nowhere.
        del client_secret
    # A full read, for `immutable` and `type`; its data is dropped inside the API call.
    existing = await api.get_secret_shape(request.namespace, request.name)
    if existing is None:
        # Deleted between our create and our read: the next attempt creates it.
        raise api.Conflict(f"Secret {request.name!r} vanished while being adopted")
    return secret_proof.judge_existing(existing, _expected(request), keys.keys)


@dataclass(frozen=True)
class Issued:
    """What the credential's status recorded of its Secret at issuance."""

    namespace: str
    name: str
    credential_uid: str
    secret_uid: str | None
    secret_hash: str


async def secret_state(issued: Issued, keys: KeyRing) -> secret_proof.IssuedState:
    """`present` (the one kube-iam wrote), `absent`, or `replaced` (another under its name).

    One metadata-only GET: the data never reaches the operator."""
    metadata = await api.get_secret_metadata(issued.namespace, issued.name)
    return _judge(metadata, issued, keys)


def _judge(
    metadata: Mapping[str, Any] | None, issued: Issued, keys: KeyRing
) -> secret_proof.IssuedState:
    return secret_proof.judge_issued(
        metadata,
        credential_uid=issued.credential_uid,
        secret_name=issued.name,
        secret_uid=issued.secret_uid,
        secret_hash=issued.secret_hash,
        keys=keys.keys,
        hash_annotation=HASH_ANNOTATION,
        proof_annotation=PROOF_ANNOTATION,
    )


async def delete_owned(issued: Issued, keys: KeyRing) -> bool:
    """Delete the Secret kube-iam wrote for the credential, never another of that name (a UID
    precondition makes the API server refuse a swap after the read). True if one was deleted."""
    metadata = await api.get_secret_metadata(issued.namespace, issued.name)
    if metadata is None:
        return False
    if issued.secret_hash:
        ours = _judge(metadata, issued, keys) == "present"
    else:
        # Never recorded (a revocation overtook the status write): only the proof can tell.
        annotations = metadata.get("annotations") or {}
        digest = str(annotations.get(HASH_ANNOTATION, ""))
        ours = secret_proof.verify(
            keys.keys,
            annotations.get(PROOF_ANNOTATION),
            credential_uid=issued.credential_uid,
            secret_name=issued.name,
            secret_hash=digest,
        )
    if not ours:
        return False
    await api.delete_secret(issued.namespace, issued.name, str(metadata.get("uid")))
    return True
