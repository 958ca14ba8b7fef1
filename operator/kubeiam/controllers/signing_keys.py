"""The token server's signing keys: created at start, then rotated on schedule, once across
replicas (tokens/key_store.py writes with a compare-and-swap; the rule is
domain/key_rotation.py).

A plain task, not a kopf timer: kopf's timers and daemons belong to an object of a watched
kind, and the operator may not watch Secrets (deploy/rbac.yaml). Every replica runs it, paused
by peering or not: two that decide at once write one ring, because the API server accepts only
the first write over the version both read.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any

import kopf

from kubeiam.kube.key_secret import KeySecretError
from kubeiam.settings import get_settings
from kubeiam.tokens import key_store

logger = logging.getLogger(__name__)

_task: asyncio.Task[None] | None = None


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


async def _keep_rotating(namespace: str, every: float) -> None:
    policy = get_settings().tokens.rotation_policy()
    while True:
        await asyncio.sleep(every)
        try:
            await key_store.rotate(namespace, policy, now=_now)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the API server restarting: the next pass tries again
            logger.warning("Cannot check the signing keys now (%s).", type(error).__name__)


@kopf.on.startup()
async def ensure_signing_keys(**_: Any) -> None:
    """Create the signing keys if no replica has yet (the token server waits for them), adopt a
    Secret of the format before rotation, and start checking the ring every refresh interval."""
    global _task  # one rotation task a process
    settings = get_settings()
    namespace = settings.operator_namespace
    try:
        await key_store.clean_up_handover(namespace)
        await key_store.rotate(namespace, settings.tokens.rotation_policy(), now=_now)
    except KeySecretError as error:
        raise kopf.PermanentError(str(error)) from None
    every = settings.tokens.key_refresh_interval.total_seconds()
    _task = asyncio.create_task(_keep_rotating(namespace, every), name="kube-iam key rotation")


@kopf.on.cleanup()
async def stop_rotating(**_: Any) -> None:
    if _task is not None:
        _task.cancel()
