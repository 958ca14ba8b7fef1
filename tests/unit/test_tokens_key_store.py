"""The signing keys Secret: its format round-trips, the old format is adopted with its key, and
the compare-and-swap lets two replicas deciding at once write one ring (over a fake holding
the API server's rules that matter here: create-once names, resourceVersion preconditions,
immutable Secrets, uid preconditions on delete). The real API server: test_key_rotation.py."""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import itertools
from typing import Any

import pytest

from kubeiam.domain.key_rotation import KeyTimes, Policy
from kubeiam.kube import api, key_secret
from kubeiam.kube.key_secret import KeySecretError
from kubeiam.tokens import key_store, keys

T0 = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
S = datetime.timedelta(seconds=1)
POLICY = Policy(period=20 * S, jwks_max_age=5 * S, refresh=2 * S, token_lifetime=10 * S, margin=S)
PEMS = [keys.new_private_key_pem() for _ in range(4)]


class FakeApiServer:
    """Secrets by name, with the API server's preconditions."""

    def __init__(self) -> None:
        self.stored: dict[str, dict[str, Any]] = {}
        self.versions = itertools.count(1)
        self.writes: list[str] = []

    def _keep(self, secret: dict[str, Any]) -> None:
        kept = copy.deepcopy(secret)
        kept["metadata"]["resourceVersion"] = str(next(self.versions))
        kept["metadata"].setdefault("uid", f"uid-{kept['metadata']['resourceVersion']}")
        kept["metadata"].setdefault("creationTimestamp", "2026-11-01T00:00:00Z")
        self.stored[secret["metadata"]["name"]] = kept

    async def create_secret(self, namespace: str, secret: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)  # let another replica's read come between
        name = secret["metadata"]["name"]
        if name in self.stored:
            raise api.AlreadyExists()
        self._keep(secret)
        self.writes.append(f"create {name}")
        return {}

    async def replace_secret(self, namespace: str, name: str, secret: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        current = self.stored.get(name)
        if current is None:
            raise api.Gone("gone")
        if current.get("immutable"):
            raise api.Refused("immutable", 422)
        read = secret["metadata"].get("resourceVersion")  # none: an unconditional write
        if read is not None and read != current["metadata"]["resourceVersion"]:
            raise api.Conflict("conflict")
        replacement = copy.deepcopy(secret)
        replacement["metadata"]["uid"] = current["metadata"]["uid"]
        self._keep(replacement)
        self.writes.append(f"replace {name}")

    async def delete_secret(self, namespace: str, name: str, uid: str) -> None:
        await asyncio.sleep(0)
        current = self.stored.get(name)
        if current is not None and current["metadata"]["uid"] == uid:
            del self.stored[name]
            self.writes.append(f"delete {name}")

    async def get_own_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        await asyncio.sleep(0)
        found = self.stored.get(name)
        return None if found is None else copy.deepcopy(found)

    async def get_secret_metadata(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.stored.get(name)
        return None if found is None else copy.deepcopy(found["metadata"])


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> FakeApiServer:
    fake = FakeApiServer()
    for name in (
        "create_secret",
        "replace_secret",
        "delete_secret",
        "get_own_secret",
        "get_secret_metadata",
    ):
        monkeypatch.setattr(api, name, getattr(fake, name))
    return fake


def pem_source() -> Any:
    supply = iter(PEMS)
    return lambda: next(supply)


def legacy_secret(kid: str, pem: bytes) -> dict[str, Any]:
    body = key_secret.manifest(
        "ns", keys.SIGNING_KEY_SECRET, {key_secret.ACTIVE: kid.encode(), kid: pem}, purpose="x"
    )
    body["metadata"]["creationTimestamp"] = "2026-11-30T23:59:50Z"
    return body


def test_the_format_round_trips_ring_times_and_keys() -> None:
    ring = (
        KeyTimes("a1", T0, T0, retires=T0 + 20 * S),
        KeyTimes("b2", T0 + 12 * S, T0 + 20 * S),
    )
    body = key_store.manifest("ns", "k", ring, {"a1": PEMS[0], "b2": PEMS[1]})
    assert body["immutable"] is False
    body["metadata"]["resourceVersion"] = "7"
    stored = key_store.parse("k", body)
    assert stored.keys.ring == ring
    assert [key["kid"] for key in stored.keys.jwks()["keys"]] == ["a1", "b2"]
    assert stored.keys.active_at(T0 + 19 * S).kid == "a1"
    assert stored.keys.active_at(T0 + 20 * S).kid == "b2"
    assert stored.resource_version == "7"
    assert PEMS[0].decode() not in repr(stored)


def test_a_ring_entry_that_is_not_a_ring_is_refused_naming_the_secret_and_the_entry() -> None:
    body = key_store.manifest("ns", "k", (KeyTimes("a1", T0, T0),), {"a1": PEMS[0]})
    body["data"][key_store.RING_ENTRY] = base64.b64encode(b'{"keys": [{"kid": 1}]}').decode()
    with pytest.raises(KeySecretError, match=r"Secret 'k': its 'ring.json' entry is not") as caught:
        key_store.parse("k", body)
    assert "PRIVATE KEY" not in str(caught.value)


def test_the_format_before_rotation_is_read_with_its_key_active_since_it_was_made() -> None:
    stored = key_store.parse(keys.SIGNING_KEY_SECRET, legacy_secret("old1", PEMS[0]))
    made = datetime.datetime(2026, 11, 30, 23, 59, 50, tzinfo=datetime.UTC)
    assert stored.keys.ring == (KeyTimes("old1", made, made),)
    assert stored.immutable


def test_an_old_secret_is_adopted_with_its_key_and_kid(server: FakeApiServer) -> None:
    server._keep(legacy_secret("old1", PEMS[0]))
    old_jwk = key_store.parse("x", server.stored[keys.SIGNING_KEY_SECRET]).keys.jwks()
    adopted = asyncio.run(key_store.rotate("ns", POLICY, now=lambda: T0, new_pem=pem_source()))
    assert [key.kid for key in adopted.ring] == ["old1"]
    assert adopted.jwks() == old_jwk
    stored = server.stored[keys.SIGNING_KEY_SECRET]
    assert stored["immutable"] is False
    assert key_store.RING_ENTRY in stored["data"]
    assert key_store.HANDOVER_SECRET not in server.stored


def test_an_adoption_cut_between_delete_and_create_resumes_from_the_handover(
    server: FakeApiServer,
) -> None:
    # What a dead operator leaves: the old Secret deleted, the handover staged.
    ring = (KeyTimes("old1", T0, T0),)
    server._keep(key_store.manifest("ns", key_store.HANDOVER_SECRET, ring, {"old1": PEMS[0]}))
    resumed = asyncio.run(key_store.rotate("ns", POLICY, now=lambda: T0, new_pem=pem_source()))
    assert [key.kid for key in resumed.ring] == ["old1"]
    assert key_store.HANDOVER_SECRET not in server.stored
    assert server.writes[0] == f"create {keys.SIGNING_KEY_SECRET}"


@pytest.mark.parametrize("start", ["empty", "one key due for rotation", "old format"])
def test_two_replicas_deciding_at_once_write_one_ring(server: FakeApiServer, start: str) -> None:
    if start == "one key due for rotation":
        ring = (KeyTimes("k0", T0, T0),)
        server._keep(key_store.manifest("ns", keys.SIGNING_KEY_SECRET, ring, {"k0": PEMS[3]}))
    elif start == "old format":
        server._keep(legacy_secret("k0", PEMS[3]))
    due = T0 + POLICY.period - POLICY.lead

    async def both() -> list[keys.SigningKeys]:
        return list(
            await asyncio.gather(
                key_store.rotate("ns", POLICY, now=lambda: due, new_kid=lambda: "from-a"),
                key_store.rotate("ns", POLICY, now=lambda: due, new_kid=lambda: "from-b"),
            )
        )

    first, second = asyncio.run(both())
    stored = key_store.parse("k", server.stored[keys.SIGNING_KEY_SECRET]).keys
    assert first.jwks() == second.jwks() == stored.jwks()
    made = [key.kid for key in stored.ring if key.kid.startswith("from-")]
    assert len(made) == 1, stored.ring
    assert key_store.HANDOVER_SECRET not in server.stored


def test_a_handover_left_after_the_new_secret_was_made_is_removed_at_start(
    server: FakeApiServer,
) -> None:
    ring = (KeyTimes("old1", T0, T0),)
    for name in (keys.SIGNING_KEY_SECRET, key_store.HANDOVER_SECRET):
        server._keep(key_store.manifest("ns", name, ring, {"old1": PEMS[0]}))
    asyncio.run(key_store.clean_up_handover("ns"))
    assert list(server.stored) == [keys.SIGNING_KEY_SECRET]


def test_a_handover_beside_the_old_immutable_secret_is_left_to_the_replica_midway(
    server: FakeApiServer,
) -> None:
    server._keep(legacy_secret("old1", PEMS[0]))
    ring = (KeyTimes("old1", T0, T0),)
    server._keep(key_store.manifest("ns", key_store.HANDOVER_SECRET, ring, {"old1": PEMS[0]}))
    asyncio.run(key_store.clean_up_handover("ns"))
    assert key_store.HANDOVER_SECRET in server.stored
