"""The one way kube-iam writes status: only the fields that differ, `createdBy` on the first
write, `displayName` where the spec's is optional, and a compare-and-swap on the object's
resourceVersion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubeiam.domain.admission import with_created_by
from kubeiam.domain.conditions import changed_fields
from kubeiam.domain.credentials import display_name
from kubeiam.kube import api
from kubeiam.kube.resources import CREDENTIALS, TRUSTS

# Kinds whose spec.displayName is optional: their status shows the name listings use.
_NAMED_IN_STATUS = frozenset({CREDENTIALS, TRUSTS})


def desired_with_author(
    resource: str, body: Mapping[str, Any], desired: Mapping[str, Any]
) -> dict[str, Any]:
    """The desired status, plus who created the object when that is not recorded yet, and the
    name listings show for a kind whose displayName is optional."""
    complete = with_created_by(
        desired, body["metadata"].get("annotations"), body.get("status") or {}
    )
    if resource in _NAMED_IN_STATUS:
        complete["displayName"] = display_name(body.get("spec") or {}, body["metadata"]["name"])
    return complete


async def write(
    resource: str, body: Mapping[str, Any], desired: Mapping[str, Any]
) -> dict[str, Any]:
    """Write what differs between `body`'s status and `desired`; return the object as written,
    or `body` itself when nothing differs. `api.Conflict` if the object changed since `body`
    was read (the caller reads it again and decides again: `kube.retry.until_settled`)."""
    changes = changed_fields(body.get("status") or {}, desired_with_author(resource, body, desired))
    if not changes:
        return dict(body)
    metadata = body["metadata"]
    return await api.patch_status(
        resource, metadata["namespace"], metadata["name"], metadata["resourceVersion"], changes
    )
