"""Whether kopf's peering has paused this process: a paused replica neither watches nor handles.

kopf keeps its pause toggle to itself and announces each decision in its peering log, so this
module listens to that log. A paused replica's in-memory indices stop following the cluster:
metrics computed from them are withheld and background work waits while it is paused, and
both resume with the watches (kopf lists every object again then).
"""

from __future__ import annotations

import logging
import threading

PEERING_LOGGER = "kopf._core.engines.peering"
# The beginnings of kopf's own messages when it pauses or resumes this process; the replica
# tests fail if a kopf upgrade changes them (a paused replica would not say so).
_PAUSING = ("Pausing operations in favour of", "Pausing all operators, including self")
_RESUMING = ("Resuming operations after the pause",)


class PeeringState(logging.Handler):
    """Follows kopf's pause and resume decisions for this process."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self._paused = threading.Event()

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    def emit(self, record: logging.LogRecord) -> None:
        message = str(record.msg)
        if message.startswith(_PAUSING):
            self._paused.set()
        elif message.startswith(_RESUMING):
            self._paused.clear()


STATE = PeeringState()


def follow() -> None:
    """Start listening to kopf's peering log; idempotent."""
    logger = logging.getLogger(PEERING_LOGGER)
    if STATE not in logger.handlers:
        logger.addHandler(STATE)
    # kopf announces pauses at INFO: make sure they reach the handler even at a quieter level.
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)


def paused() -> bool:
    """True while kopf's peering has paused this process (never in standalone mode)."""
    return STATE.paused
