"""The shared issuer key store: one fetch for many trusts, backoff while down, no polling unused."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

from kubeiam.domain.conditions import Reason
from kubeiam.oidc.fetch import IssuerDocuments, IssuerError
from kubeiam.oidc.http import FetchPolicy
from kubeiam.oidc.keystore import IssuerKey, KeyStore, Schedule

from .test_oidc_jwks import rsa_jwk

ISSUER: IssuerKey = ("https://issuer.example.com", None)
POLICY = FetchPolicy(
    ca_bundle=None,
    allowed_networks=(),
    connect_timeout=1,
    read_timeout=1,
    max_response_bytes=65536,
)
SCHEDULE = Schedule(
    refresh_min=datetime.timedelta(seconds=60),
    refresh_max=datetime.timedelta(seconds=3600),
    retry_min=datetime.timedelta(seconds=0.05),
    retry_max=datetime.timedelta(seconds=0.1),
)


class FakeIssuer:
    """Answers fetches like an issuer that can be taken down; counts what it was asked."""

    def __init__(self) -> None:
        self.up = True
        self.fetches = 0
        self.kid = "k1"
        self.retried = asyncio.Event()  # set at the third fetch: the first and two retries

    async def __call__(self, issuer: str, *, jwks_uri: str | None, policy: Any) -> IssuerDocuments:
        self.fetches += 1
        if self.fetches >= 3:
            self.retried.set()
        await asyncio.sleep(0.01)  # let concurrent callers pile up on the first fetch
        if not self.up:
            raise IssuerError(Reason.ISSUER_UNREACHABLE, f"{issuer} refused the connection.")
        return IssuerDocuments(
            jwks_uri=f"{issuer}/keys", jwks={"keys": [rsa_jwk(kid=self.kid)]}, max_age=None
        )


def store(fake: FakeIssuer, refreshed: list[IssuerKey]) -> KeyStore:
    async def on_refreshed(key: IssuerKey) -> None:
        refreshed.append(key)

    return KeyStore(
        POLICY, SCHEDULE, max_keys=5, on_refreshed=on_refreshed, concurrency=8, fetch=fake
    )


def test_many_trusts_of_one_issuer_cost_one_fetch() -> None:
    fake, refreshed = FakeIssuer(), []

    async def scenario() -> None:
        keys = store(fake, refreshed)
        results = await asyncio.gather(*(keys.check(ISSUER, f"trust-{i}") for i in range(20)))
        assert {check.key_ids for check, _ in results} == {("k1",)}

    asyncio.run(scenario())
    assert fake.fetches == 1


def test_an_issuer_that_is_down_is_retried_with_backoff_and_its_trusts_told_when_it_is_back() -> (
    None
):
    fake, refreshed = FakeIssuer(), []
    fake.up = False

    async def scenario() -> None:
        keys = store(fake, refreshed)
        check, found = await keys.check(ISSUER, "trust")
        assert check.problem is not None
        assert check.problem.reason == Reason.ISSUER_UNREACHABLE
        assert found is None
        runner = asyncio.create_task(keys.run())
        # Down until it has been retried (the first check was fetch 1), however slow the loop.
        await asyncio.wait_for(fake.retried.wait(), timeout=30)
        fake.up = True
        for _ in range(100):
            await asyncio.sleep(0.02)
            check, found = await keys.check(ISSUER, "trust")
            if check.problem is None:
                break
        runner.cancel()
        assert check.problem is None
        assert found is not None
        assert found.key_ids == ("k1",)

    asyncio.run(scenario())
    assert fake.fetches >= 3, "the issuer was retried while down"
    assert ISSUER in refreshed


def test_an_issuer_nobody_uses_any_more_is_not_polled() -> None:
    fake, refreshed = FakeIssuer(), []
    fake.up = False

    async def scenario() -> None:
        keys = store(fake, refreshed)
        await keys.check(ISSUER, "trust")
        keys.release("trust")
        runner = asyncio.create_task(keys.run())
        await asyncio.sleep(0.4)
        runner.cancel()

    asyncio.run(scenario())
    assert fake.fetches == 1
    assert refreshed == []


def test_inline_keys_are_checked_like_fetched_ones() -> None:
    keys = store(FakeIssuer(), [])
    now = datetime.datetime(2026, 11, 23, tzinfo=datetime.UTC)
    check, found = keys.parse_inline({"keys": [rsa_jwk(kid="inline")]}, now=now)
    assert check.key_ids == ("inline",)
    assert found is not None
    check, found = keys.parse_inline({"keys": []}, now=now)
    assert check.problem is not None
    assert check.problem.reason == Reason.JWKS_INVALID


def test_no_more_issuers_are_fetched_at_once_than_the_bound() -> None:
    gate, full = asyncio.Event(), asyncio.Event()
    in_flight, most = 0, 0

    async def gated(issuer: str, *, jwks_uri: str | None, policy: Any) -> IssuerDocuments:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        if in_flight == 2:
            full.set()
        await gate.wait()
        in_flight -= 1
        return IssuerDocuments(jwks_uri=f"{issuer}/keys", jwks={"keys": [rsa_jwk()]}, max_age=None)

    async def scenario() -> None:
        async def on_refreshed(key: IssuerKey) -> None:
            pass

        keys = KeyStore(
            POLICY, SCHEDULE, max_keys=5, on_refreshed=on_refreshed, concurrency=2, fetch=gated
        )
        checks = [
            asyncio.create_task(keys.check((f"https://issuer-{i}.example.com", None), f"t{i}"))
            for i in range(5)
        ]
        await full.wait()
        for _ in range(20):  # every other check gets its turn to try to start a fetch
            await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(*checks)

    asyncio.run(scenario())
    assert most == 2
