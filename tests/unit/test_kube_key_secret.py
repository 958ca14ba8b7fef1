"""The create-once key Secret: one create wins, every replica reads the same keys."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from kubeiam.kube import api, key_secret


class FakeSecrets:
    """The API server's one rule that matters here: a second create of a name is a 409."""

    def __init__(self) -> None:
        self.stored: dict[str, dict[str, Any]] = {}
        self.creates = 0

    async def create_secret(self, namespace: str, secret: dict[str, Any]) -> dict[str, Any]:
        self.creates += 1
        name = secret["metadata"]["name"]
        if name in self.stored:
            raise api.AlreadyExists()
        self.stored[name] = secret
        return {"uid": "u"}

    async def get_secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        found = self.stored.get(name)
        return None if found is None else dict(found["data"])


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeSecrets:
    fake = FakeSecrets()
    monkeypatch.setattr(api, "create_secret", fake.create_secret)
    monkeypatch.setattr(api, "get_secret_data", fake.get_secret_data)
    return fake


def test_two_replicas_starting_together_hold_the_same_key(fake: FakeSecrets) -> None:
    async def both() -> list[key_secret.KeyRing]:
        return list(
            await asyncio.gather(
                key_secret.load_or_create("ns", "keys", purpose="test"),
                key_secret.load_or_create("ns", "keys", purpose="test"),
            )
        )

    first, second = asyncio.run(both())
    assert first.active == second.active
    assert first.keys == second.keys
    assert len(first.keys[first.active]) == key_secret.KEY_BYTES
    assert list(fake.stored) == ["keys"]
    written = fake.stored["keys"]
    assert written["immutable"] is True
    assert written["type"] == key_secret.KEY_SECRET_TYPE


def test_the_key_never_shows_in_its_repr(fake: FakeSecrets) -> None:
    ring = asyncio.run(key_secret.load_or_create("ns", "keys", purpose="test"))
    assert base64.b64encode(ring.keys[ring.active]).decode() not in repr(ring)
    assert repr(ring.keys[ring.active]) not in repr(ring)


def test_a_key_secret_without_a_usable_key_is_refused_by_name(fake: FakeSecrets) -> None:
    fake.stored["keys"] = {"data": {"active-key-id": base64.b64encode(b"k9").decode()}}
    with pytest.raises(key_secret.KeySecretError, match="'keys'"):
        asyncio.run(key_secret.load_or_create("ns", "keys", purpose="test"))


def test_both_found_absent_one_create_wins_and_the_other_reads_it(
    fake: FakeSecrets, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race the first read cannot close: both read nothing, both create, the 409 reads."""
    absent = [True, True]

    async def get(namespace: str, name: str) -> dict[str, str] | None:
        if absent:
            absent.pop()
            return None
        return await fake.get_secret_data(namespace, name)

    monkeypatch.setattr(api, "get_secret_data", get)
    one = asyncio.run(key_secret.load_or_create("ns", "keys", purpose="test"))
    two = asyncio.run(key_secret.load_or_create("ns", "keys", purpose="test"))
    assert fake.creates == 2
    assert one.keys == two.keys


def test_a_start_over_an_existing_key_writes_nothing(fake: FakeSecrets) -> None:
    first = asyncio.run(key_secret.load_or_create("ns", "keys", purpose="test"))
    creates = fake.creates
    again = asyncio.run(key_secret.load_or_create("ns", "keys", purpose="test"))
    assert fake.creates == creates
    assert again.keys == first.keys
