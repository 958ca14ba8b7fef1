"""A serving certificate read from files (a mounted kubernetes.io/tls Secret) into one TLS
context, and read again when cert-manager renews them: new connections get the renewed pair,
open ones carry on, nothing restarts. The webhook server and the token server share it.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import ssl
from pathlib import Path

from cryptography import x509
from prometheus_client import Gauge

logger = logging.getLogger(__name__)

# How often a server looks at its certificate files; a renewal is served within this.
CHECK_SECONDS = 10.0


class ServingCertificate:
    """`cert_path` and `key_path`, loaded into a context by `load` whenever their bytes change.

    `what` names the server in log lines; `expiry` (a gauge) reports the loaded certificate's
    `notAfter`; within `warning_lead` of it, one warning a certificate says `consequence`.
    """

    def __init__(
        self,
        cert_path: Path,
        key_path: Path,
        *,
        what: str,
        expiry: Gauge,
        warning_lead: datetime.timedelta,
        consequence: str,
    ) -> None:
        self.cert_path, self.key_path = cert_path, key_path
        self.what = what
        self.expiry = expiry
        self.warning_lead = warning_lead
        self.consequence = consequence
        self._digest = b""
        self._warned_for: datetime.datetime | None = None

    def load(self, context: ssl.SSLContext) -> None:
        """Load the files into `context` if they changed; report their expiry.

        The first load raises when the files do not make a pair; a later one keeps the pair
        already served (half-renewed files: a new certificate, the old key) and says so.
        """
        try:
            cert_pem, key_pem = self.cert_path.read_bytes(), self.key_path.read_bytes()
        except OSError as error:  # mounted files mid-swap: the next check reads them
            logger.warning("Cannot read the %s certificate: %s", self.what, error.strerror)
            return
        digest = hashlib.sha256(cert_pem + b"\0" + key_pem).digest()
        if digest != self._digest:
            try:
                context.load_cert_chain(str(self.cert_path), str(self.key_path))
            except (ssl.SSLError, OSError) as error:
                if not self._digest:
                    raise
                logger.warning("The renewed %s certificate does not load yet: %s", self.what, error)
                return
            if self._digest:
                logger.info("Loaded the renewed %s certificate.", self.what)
            self._digest = digest
        not_after = x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc
        self.expiry.set(not_after.timestamp())
        self._warn_if_expiring(not_after)

    def _warn_if_expiring(self, not_after: datetime.datetime) -> None:
        left = not_after - datetime.datetime.now(datetime.UTC)
        if left > self.warning_lead or self._warned_for == not_after:
            return
        self._warned_for = not_after  # once per certificate, not every check
        logger.warning(
            "The %s's serving certificate expires at %s (in %s); %s",
            self.what,
            not_after.isoformat(),
            str(left).split(".")[0],
            self.consequence,
        )


def missing_files(cert_dir: Path) -> list[str]:
    """The serving certificate's files (`tls.crt`, `tls.key`, as a kubernetes.io/tls Secret
    mounts them) that `cert_dir` lacks."""
    return [
        str(cert_dir / name) for name in ("tls.crt", "tls.key") if not (cert_dir / name).is_file()
    ]
