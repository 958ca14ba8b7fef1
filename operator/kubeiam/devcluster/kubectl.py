"""Run kubectl against one cluster, with its output captured for the caller to read."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from kubeiam.devcluster.errors import ControlPlaneError


@dataclass(frozen=True)
class Kubectl:
    """A kubectl binary bound to a kubeconfig."""

    binary: Path | str
    kubeconfig: Path

    def __call__(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        # A discovery cache of its own: ports are reused by later clusters, and a shared cache
        # keyed by host and port would describe an earlier cluster's API.
        cache = self.kubeconfig.parent / ".kube-cache"
        result = subprocess.run(
            [str(self.binary), f"--kubeconfig={self.kubeconfig}", f"--cache-dir={cache}", *args],
            input=input,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise ControlPlaneError(
                f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result
