"""The token server's signing key: the operator creates it at start, once across replicas."""

from __future__ import annotations

from typing import Any

import kopf

from kubeiam.kube.key_secret import KeySecretError
from kubeiam.settings import get_settings
from kubeiam.tokens import keys


@kopf.on.startup()
async def ensure_signing_key(**_: Any) -> None:
    """Create the signing key Secret if no replica has yet (one read when it exists); the token
    server waits for it. Rotation is not built yet (docs/tokens.md)."""
    try:
        await keys.ensure(get_settings().operator_namespace)
    except KeySecretError as error:
        raise kopf.PermanentError(str(error)) from None
