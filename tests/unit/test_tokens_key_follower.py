"""The token server follows its signing keys: it waits for them, takes each new ring, keeps the
one it holds when a read fails or finds nothing, signs with the key the clock makes active, and
reports that key's age."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient

from kubeiam.domain.key_rotation import KeyTimes
from kubeiam.settings import Settings, TokenSettings
from kubeiam.tokens import keys
from kubeiam.tokens.cache import Cache
from kubeiam.tokens.keys import SigningKeys
from kubeiam.tokens.server import TokenService, _follow_keys

from .test_tokens_server import FORM, run, service

T0 = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
S = datetime.timedelta(seconds=1)
PEMS = {"k1": keys.new_private_key_pem(), "k2": keys.new_private_key_pem()}
ONE = keys.from_pems((KeyTimes("k1", T0, T0),), PEMS)
TWO = keys.from_pems(
    (KeyTimes("k1", T0, T0, retires=T0 + 20 * S), KeyTimes("k2", T0 + 12 * S, T0 + 20 * S)),
    PEMS,
)


def test_the_follower_takes_new_rings_and_keeps_its_ring_when_a_read_fails() -> None:
    now = [T0]
    service = TokenService(
        Settings(tokens=TokenSettings(issuer="https://iam.example.test")),
        Cache(),
        clock=lambda: now[0],
    )
    reads: list[SigningKeys | Exception | None] = [None, ONE, RuntimeError("503"), None, TWO]
    held: list[SigningKeys | None] = []
    read_all = asyncio.Event()

    async def load(namespace: str) -> SigningKeys | None:
        held.append(service.keys)
        if not reads:
            read_all.set()
        answer = reads.pop(0) if reads else TWO
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def main() -> None:
        loaded = asyncio.Event()
        task = asyncio.create_task(_follow_keys(service, "ns", load, 0.001, loaded))
        await asyncio.wait_for(loaded.wait(), 5)
        assert service.keys is ONE
        await asyncio.wait_for(read_all.wait(), 5)  # every answer given, TWO taken since
        task.cancel()

    asyncio.run(main())
    # Nothing, then ONE, kept through a failed read and an empty one, then TWO.
    assert held[:5] == [None, None, ONE, ONE, ONE]
    assert service.keys is TWO

    now[0] = T0 + 19 * S
    assert service.keys.active_at(now[0]).kid == "k1"
    assert service.signing_key_age() == 19.0
    now[0] = T0 + 20 * S
    assert service.keys.active_at(now[0]).kid == "k2"
    assert service.signing_key_age() == 0.0


@pytest.mark.parametrize(("moment", "kid"), [(T0 + 19 * S, "k1"), (T0 + 20 * S, "k2")])
def test_the_token_endpoint_signs_with_the_key_the_clock_makes_active(
    moment: datetime.datetime, kid: str
) -> None:
    made = service()
    made.keys = TWO
    made.clock = lambda: moment
    kids: list[str] = []

    async def call(client: TestClient[Any, Any]) -> None:
        answer = await client.post("/prefix/oauth2/token", data=FORM)
        assert answer.status == 200
        token = (await answer.json())["access_token"]
        kids.append(jwt.get_unverified_header(token)["kid"])

    run(made, call)
    assert kids == [kid]
