"""Owner references from an object to its ServiceAccount: deleting the account removes it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubeiam.kube import api
from kubeiam.kube.resources import GROUP, VERSION


async def ensure_owned_by_account(
    plural: str, body: Mapping[str, Any], account_body: Mapping[str, Any]
) -> dict[str, Any]:
    """Make the account an owner of `body` (a credential or a trust) if it is not one yet.

    The garbage collector then deletes the object with its account. The write carries the
    resourceVersion that was read, so it never undoes a change made meanwhile.
    """
    metadata = body["metadata"]
    account_uid = account_body["metadata"]["uid"]
    references = list(metadata.get("ownerReferences") or [])
    if any(ref.get("uid") == account_uid for ref in references):
        return dict(body)
    references.append(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ServiceAccount",
            "name": account_body["metadata"]["name"],
            "uid": account_uid,
        }
    )
    return await api.patch_metadata(
        plural,
        metadata["namespace"],
        metadata["name"],
        metadata["resourceVersion"],
        {"ownerReferences": references},
    )
