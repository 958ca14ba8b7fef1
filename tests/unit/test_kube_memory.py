"""The C heap helpers (kube/memory.py) and what the indices keep of each credential: the memory
the operator holds per object (docs/performance.md, "Memory")."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kopf
import pytest

from kubeiam import cli
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


def test_allocator_is_chosen_only_where_the_environment_chose_none() -> None:
    expected = None if memory._glibc() is None else "malloc"
    assert memory.allocator_to_choose({}) == expected
    assert memory.allocator_to_choose({"PYTHONMALLOC": ""}) == expected
    assert memory.allocator_to_choose({"PYTHONMALLOC": "pymalloc"}) is None
    assert memory.allocator_to_choose({"PYTHONMALLOC": "malloc"}) is None


# Prints its pid and PYTHONMALLOC before and after asking for glibc's malloc, then Python's
# allocator statistics, which only pymalloc has ("Small block threshold").
_PROBE = """
import os, sys
print("start", os.getpid(), os.environ.get("PYTHONMALLOC"), flush=True)
from kubeiam.kube import memory
memory.use_system_malloc()
print("running", os.getpid(), os.environ.get("PYTHONMALLOC"), flush=True)
sys._debugmallocstats()
"""


def _probe(**env: str) -> tuple[list[list[str]], str]:
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONMALLOC"} | env
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], env=environ, capture_output=True, text=True, check=True
    )
    return [line.split() for line in done.stdout.splitlines()], done.stderr


@glibc_only
def test_the_process_starts_again_in_place_with_python_objects_in_glibc_malloc() -> None:
    lines, stats = _probe()
    pid = lines[0][1]
    assert lines == [["start", pid, "None"], ["start", pid, "malloc"], ["running", pid, "malloc"]]
    assert "Small block threshold" not in stats


def test_an_allocator_the_environment_chose_is_kept() -> None:
    lines, stats = _probe(PYTHONMALLOC="pymalloc")
    pid = lines[0][1]
    assert lines == [["start", pid, "pymalloc"], ["running", pid, "pymalloc"]]
    assert "Small block threshold" in stats


def test_kube_iam_run_asks_for_glibc_malloc_before_anything_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Asked(Exception):
        pass

    def ask() -> None:
        raise Asked

    def run(**_: Any) -> None:
        raise AssertionError("kopf ran before the allocator was asked for")

    monkeypatch.setattr(memory, "use_system_malloc", ask)
    monkeypatch.setattr(kopf, "run", run)
    with pytest.raises(Asked):
        cli.main(["run", "--standalone"])
