"""Fault injection for crash tests: die at a named point of issuance, as a killed pod would.

Off unless KUBEIAM_FAULT_POINT names a point; then the process exits at once (no cleanup, no
flush), which is what a SIGKILL or an OOM kill does to an operator mid-way.
"""

from __future__ import annotations

import os
from typing import Final

VARIABLE: Final = "KUBEIAM_FAULT_POINT"

# Issuance, in order: each point lies between two writes whose order makes it crash-safe.
ISSUANCE_POINTS: Final = (
    "after-owner-reference",  # the credential is owned by its account; no slot yet
    "after-admission",  # a slot is recorded in the account's ledger; no Secret yet
    "after-secret-generated",  # the secret exists in memory only
    "after-secret-created",  # the Secret exists; the credential's status does not say so
    "after-status-written",  # the credential is Active; the event is not posted
)


def crash_point(name: str) -> None:
    """Exit the process here if KUBEIAM_FAULT_POINT names this point."""
    if name not in ISSUANCE_POINTS:
        raise ValueError(f"unknown fault point {name!r}")
    if os.environ.get(VARIABLE) == name:
        os._exit(137)
