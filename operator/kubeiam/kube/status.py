"""Status writes: only changed fields go into kopf's patch, so a settled object costs no write."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from kubeiam.domain.conditions import changed_fields


def stage_status(patch: kopf.Patch, current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Put the changed top-level status fields into `patch`; say whether anything changed.

    kopf sends the patch once the handler returns, to the status subresource.
    """
    changes = changed_fields(current, desired)
    for key, value in changes.items():
        patch.status[key] = value
    return bool(changes)
