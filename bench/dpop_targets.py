"""vegeta targets for the DPoP scenario: one request over and over, each copy with a fresh proof.

    python -m bench.dpop_targets --base targets.json            # endless, for vegeta -lazy
    python -m bench.dpop_targets --base targets.json --count N  # N lines, then stop

Reads one vegeta JSON target (the 0600 file bench.peers.Vegeta writes) and writes it to stdout
line after line, each with a `DPoP` header holding a new proof (RFC 9449 §4.2: typ dpop+jwt, the
public key in the header, a new jti, htm and htu of the request, iat now) signed by one ES256 key
made at start. vegeta reads the stream with `-lazy`, one line a request; when the pipe is full
the writer waits, so a proof is at most a pipe's worth of requests older than its request, far
inside the token server's proof window (KUBEIAM_TOKEN_DPOP_MAX_AGE). Nothing is printed but the
targets: they hold the client secret, and only vegeta reads them.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from kubeiam.tokens import dpop

ALGORITHM = "ES256"


@dataclass
class Prover:
    """A client's DPoP key and the proofs it signs for one request (method and URL)."""

    method: str
    url: str
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()), repr=False
    )

    def __post_init__(self) -> None:
        public = ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        self._header = {"typ": dpop.TYPE, "jwk": public}

    def proof(self, now: float) -> str:
        claims = {
            "jti": secrets.token_urlsafe(16),
            "htm": self.method,
            "htu": self.url,
            "iat": int(now),
        }
        return jwt.encode(claims, self.key, algorithm=ALGORITHM, headers=self._header)


def with_proof(target: dict[str, Any], proof: str) -> dict[str, Any]:
    """The vegeta JSON target `target` with `proof` as its one DPoP header."""
    return {**target, "header": {**target.get("header", {}), dpop.HEADER: [proof]}}


def write(base: dict[str, Any], out: Any, count: int | None) -> int:
    """Lines of `base`, each with a fresh proof, to `out` (`count` of them, or until the reader
    goes away); how many were written."""
    prover = Prover(base["method"], base["url"])
    written = 0
    try:
        while count is None or written < count:
            out.write(json.dumps(with_proof(base, prover.proof(time.time()))) + "\n")
            written += 1
        out.flush()
    except BrokenPipeError:  # vegeta finished its attack and closed the pipe
        pass
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dpop_targets", description=__doc__)
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--count", type=int, default=None)
    args = parser.parse_args(argv)
    base = json.loads(args.base.read_text().splitlines()[0])
    write(base, sys.stdout, args.count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
