"""The C heap helpers (kube/memory.py) and what the indices keep of each credential: the memory
the operator holds per object (docs/performance.md, "Memory")."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import pytest

from kubeiam.controllers.credentials.views import issued_secret_of, view_of
from kubeiam.kube import memory

glibc_only = pytest.mark.skipif(memory._glibc() is None, reason="glibc's malloc only")


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


@glibc_only
def test_trim_hands_back_to_the_os_what_a_burst_freed_inside_the_heap() -> None:
    libc = memory._glibc()
    assert libc is not None
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    # 64 MB in small blocks (below the mmap threshold: inside the heap), touched, then freed
    # but for a block at the top, which keeps free() itself from shrinking the heap.
    blocks = [libc.malloc(16 * 1024) for _ in range(4096)]
    assert all(blocks)
    for block in blocks:
        ctypes.memset(block, 1, 16 * 1024)
    pin = libc.malloc(64)
    for block in blocks:
        libc.free(block)
    held = _rss_kb()
    assert memory.trim()
    after = _rss_kb()
    libc.free(pin)
    # Most of the 64 MB was held by the process and given back by the trim.
    assert held - after > 32 * 1024, (held, after)


@glibc_only
def test_arenas_are_limited_only_when_a_limit_is_set() -> None:
    assert memory.limit_arenas(0) is False
    assert memory.limit_arenas(64) is True


def _body(namespace: str, name: str) -> dict[str, Any]:
    return {
        "metadata": {"namespace": namespace, "name": name, "uid": f"uid-{name}"},
        "spec": {"serviceAccountName": "".join(["acct", "-1"])},
        "status": {
            "state": "".join(["Act", "ive"]),
            "secretHash": "sha256:00",
            "conditions": [{"type": "Ready", "status": "True", "reason": "".join(["Iss", "ued"])}],
        },
    }


def test_index_values_share_the_texts_every_credential_repeats() -> None:
    # Texts built at run time, as a JSON parser gives each body its own copies.
    first = view_of(_body("".join(["team", "-a"]), "cred-1"))
    second = view_of(_body("".join(["team", "-a"]), "cred-2"))
    for field in ("namespace", "account", "state", "reason"):
        assert getattr(first, field) is getattr(second, field), field
    one = issued_secret_of(_body("".join(["team", "-a"]), "cred-1"))
    other = issued_secret_of(_body("".join(["team", "-a"]), "cred-2"))
    assert one is not None
    assert other is not None
    assert one.namespace is other.namespace is first.namespace


def test_index_values_carry_no_dict_of_their_own() -> None:
    view = view_of(_body("team-a", "cred-1"))
    issued = issued_secret_of(_body("team-a", "cred-1"))
    for value in (view, issued):
        assert not hasattr(value, "__dict__"), type(value).__name__
