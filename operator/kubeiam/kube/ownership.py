"""Owner references from an object to its ServiceAccount: deleting the account removes it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kubeiam.kube import api
from kubeiam.kube.resources import GROUP, VERSION


def account_reference(account_body: Mapping[str, Any]) -> dict[str, Any]:
    """The owner reference to an account, as the garbage collector reads it."""
    metadata = account_body["metadata"]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ServiceAccount",
        "name": metadata["name"],
        "uid": metadata["uid"],
    }


def with_reference(
    references: Sequence[Mapping[str, Any]] | None, reference: Mapping[str, Any]
) -> list[dict[str, Any]] | None:
    """`references` with `reference` added, or None when one to the same uid is there already."""
    existing = [dict(ref) for ref in references or []]
    if any(ref.get("uid") == reference["uid"] for ref in existing):
        return None
    return [*existing, dict(reference)]


async def ensure_owned_by_account(
    plural: str, body: Mapping[str, Any], account_body: Mapping[str, Any]
) -> dict[str, Any]:
    """Make the account an owner of `body` (a credential or a trust) if it is not one yet.

    The admission webhook sets it when the object is created; this covers objects created
    while it was not called. The garbage collector then deletes the object with its account.
    The write carries the resourceVersion that was read, so it never undoes a change made
    meanwhile.
    """
    metadata = body["metadata"]
    references = with_reference(metadata.get("ownerReferences"), account_reference(account_body))
    if references is None:
        return dict(body)
    return await api.patch_metadata(
        plural,
        metadata["namespace"],
        metadata["name"],
        metadata["resourceVersion"],
        {"ownerReferences": references},
    )
