"""kube/indices.py: kube-iam's indices, fed from kopf's watch, prefilled a page at a time at
start, and holding back kopf until every indexed kind is prefilled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import kopf
import pytest
from kopf._cogs.clients import watching

from kubeiam.kube import indices, kopf_bodies
from kubeiam.kube.indices import Indices
from kubeiam.kube.resources import CREDENTIALS, GROUP, SERVICE_ACCOUNTS, VERSION

CREDENTIAL_KIND = kopf.Resource(GROUP, VERSION, CREDENTIALS, namespaced=True)
ACCOUNT_KIND = kopf.Resource(GROUP, VERSION, SERVICE_ACCOUNTS, namespaced=True)


def credential(name: str, account: str, *, uid: str = "", namespace: str = "team") -> Any:
    return {
        "metadata": {"namespace": namespace, "name": name, "uid": uid or f"uid-{name}"},
        "spec": {"serviceAccountName": account},
    }


def made() -> tuple[Indices, indices.Index[tuple[str, str], str]]:
    """Indices with one index: credentials' names by account, none for an account "-"."""
    found = Indices()

    @found.index(CREDENTIALS)
    def names_by_account(body: kopf.Body) -> dict[tuple[str, str], str]:
        account = body["spec"]["serviceAccountName"]
        return {} if account == "-" else {(body.metadata.namespace, account): body.metadata.name}

    return found, names_by_account


def event(kind: str | None, body: Any) -> dict[str, Any]:
    return {"type": kind, "object": body}


SCOPE = (CREDENTIALS, None)


def test_an_index_keeps_each_objects_values_under_its_current_keys() -> None:
    found, by_account = made()
    found.feed(SCOPE, event("ADDED", credential("a", "ci")))
    found.feed(SCOPE, event("ADDED", credential("b", "ci")))
    assert sorted(by_account[("team", "ci")]) == ["a", "b"]
    # Moved to another account: gone from the first key, under the second.
    found.feed(SCOPE, event("MODIFIED", credential("a", "deploy")))
    assert list(by_account[("team", "ci")]) == ["b"]
    assert list(by_account[("team", "deploy")]) == ["a"]
    # Stored under no key at all: an empty key disappears from the mapping, as kopf's does.
    found.feed(SCOPE, event("MODIFIED", credential("a", "-")))
    assert ("team", "deploy") not in by_account
    with pytest.raises(KeyError):
        by_account[("team", "deploy")]
    found.feed(SCOPE, event("DELETED", credential("b", "ci")))
    assert len(by_account) == 0


def test_a_listing_drops_the_objects_it_no_longer_shows() -> None:
    found, by_account = made()
    for name in ("a", "b", "c"):
        found.feed(SCOPE, event("ADDED", credential(name, "ci")))
    # kopf lists again (a restart of its watch after "410 Gone"): b was deleted unseen.
    found.feed(SCOPE, event(None, credential("a", "ci")))
    found.feed(SCOPE, event(None, credential("c", "ci")))
    assert sorted(by_account[("team", "ci")]) == ["a", "b", "c"]
    found.feed(SCOPE, watching.Bookmark.LISTED)
    assert sorted(by_account[("team", "ci")]) == ["a", "c"]


def test_a_namespaced_listing_drops_only_its_own_namespace() -> None:
    found, by_account = made()
    found.feed((CREDENTIALS, "one"), event(None, credential("a", "ci", namespace="one")))
    found.feed((CREDENTIALS, "two"), event(None, credential("b", "ci", namespace="two")))
    found.feed((CREDENTIALS, "one"), watching.Bookmark.LISTED)
    found.feed((CREDENTIALS, "two"), watching.Bookmark.LISTED)
    # namespace one lists again, empty: its object goes, the other namespace's stays.
    found.feed((CREDENTIALS, "one"), watching.Bookmark.LISTED)
    assert ("one", "ci") not in by_account
    assert list(by_account[("two", "ci")]) == ["b"]


def test_an_object_the_index_cannot_read_is_left_out_and_the_rest_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    found, by_account = made()
    found.feed(SCOPE, event("ADDED", credential("a", "ci")))
    broken = credential("a", "ci")
    del broken["spec"]
    found.feed(SCOPE, event("MODIFIED", broken))
    found.feed(SCOPE, event("ADDED", credential("b", "ci")))
    assert list(by_account[("team", "ci")]) == ["b"]
    assert "names_by_account could not index team/a: KeyError" in caplog.text


def test_kinds_it_does_not_index_pass() -> None:
    found, _ = made()
    assert found.indexes(CREDENTIAL_KIND)
    assert not found.indexes(ACCOUNT_KIND)
    assert not found.indexes(kopf.Resource("example.com", "v1", CREDENTIALS, namespaced=True))


def pages_of(bodies: dict[str, list[Any]], seen: list[str]) -> Any:
    """A stand-in for kopf's fetch_objs: each kind's objects two to a page, each page noted."""

    async def fetch_objs(*, resource: Any, **_: Any) -> AsyncIterator[tuple[list[Any], str]]:
        listed = bodies[resource.plural]
        for start in range(0, len(listed), 2):
            seen.append(f"{resource.plural} page {start // 2}")
            await asyncio.sleep(0)
            yield listed[start : start + 2], "1"

    return fetch_objs


def test_the_prefill_lists_every_kind_before_kopf_sees_any(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    found, by_account = made()

    @found.index(SERVICE_ACCOUNTS)
    def accounts(body: kopf.Body) -> dict[tuple[str, str], str]:
        return {(body.metadata.namespace, body.metadata.name): body.metadata.uid}

    listed = {
        CREDENTIALS: [credential(f"c{i}", "ci") for i in range(5)],
        SERVICE_ACCOUNTS: [{"metadata": {"namespace": "team", "name": "ci", "uid": "u-ci"}}],
    }
    seen: list[str] = []
    monkeypatch.setattr(indices.fetching, "fetch_objs", pages_of(listed, seen))

    async def kopfs(**kwargs: Any) -> AsyncIterator[Any]:
        # kopf's own watch: what the indices hold when kopf gets its first event.
        seen.append(f"kopf watches {kwargs['resource'].plural}")
        for body in listed[kwargs["resource"].plural]:
            yield event(None, body)
        yield watching.Bookmark.LISTED
        if kwargs["resource"].plural == CREDENTIALS:
            yield event("ADDED", credential("new", "ci"))

    monkeypatch.setattr(indices, "INDICES", found)
    monkeypatch.setattr(kopf_bodies, "KOPF_INFINITE_WATCH", kopfs)
    watch = kopf_bodies.watch_with(slimmed=True)

    async def read(resource: kopf.Resource) -> list[Any]:
        stream = watch(settings=None, resource=resource, namespace=None)
        received = []
        async for raw in stream:
            # Whatever kopf gets first, both kinds are whole in the indices by then.
            assert len(by_account[("team", "ci")]) >= 5
            assert list(accounts[("team", "ci")]) == ["u-ci"]
            received.append(raw)
        return received

    async def both() -> list[list[Any]]:
        return list(await asyncio.gather(read(CREDENTIAL_KIND), read(ACCOUNT_KIND)))

    credentials, account_events = asyncio.run(both())
    # Every page of both kinds before kopf watches either: neither waits on a partial index.
    first_kopf = min(i for i, what in enumerate(seen) if what.startswith("kopf"))
    assert sorted(seen[:first_kopf]) == sorted(
        [f"{CREDENTIALS} page {i}" for i in range(3)] + [f"{SERVICE_ACCOUNTS} page 0"]
    )
    assert found.ready
    assert len(credentials) == 7
    assert len(account_events) == 2
    assert sorted(by_account[("team", "ci")]) == ["c0", "c1", "c2", "c3", "c4", "new"]
    assert list(accounts[("team", "ci")]) == ["u-ci"]


def test_a_failed_prefill_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    found, by_account = made()
    tries: list[int] = []

    async def fetch_objs(**_: Any) -> AsyncIterator[tuple[list[Any], str]]:
        tries.append(1)
        if len(tries) == 1:
            # The first attempt shows b, deleted before the second, then breaks off.
            yield [credential("a", "ci"), credential("b", "ci")], "1"
            raise TimeoutError
        yield [credential("a", "ci")], "2"

    monkeypatch.setattr(indices.fetching, "fetch_objs", fetch_objs)
    monkeypatch.setattr(indices, "RETRY_SECONDS", 0)
    asyncio.run(found.prefill(SCOPE, settings=None, resource=CREDENTIAL_KIND))  # type: ignore[arg-type]
    assert len(tries) == 2
    assert found.ready
    assert list(by_account[("team", "ci")]) == ["a"]


def test_a_listing_that_broke_off_counts_no_more(monkeypatch: pytest.MonkeyPatch) -> None:
    """kopf's listing ends without its marker on a connection error and lists again: what only
    the broken one showed is dropped at the end of the next."""
    found, by_account = made()
    monkeypatch.setattr(indices, "INDICES", found)
    found.feed(SCOPE, event("ADDED", credential("b", "ci")))
    found.listing_starts(SCOPE)
    found.feed(SCOPE, event(None, credential("a", "ci")))
    found.feed(SCOPE, event(None, credential("b", "ci")))
    # b is deleted while the watch is down; kopf lists again through fetch_objs.
    listed = [credential("a", "ci")]

    async def kopfs_listing(**_: Any) -> AsyncIterator[tuple[list[Any], str]]:
        yield listed, "2"

    monkeypatch.setattr(kopf_bodies, "KOPF_FETCH_OBJS", kopfs_listing)

    async def relist() -> None:
        async for chunk, _ in kopf_bodies.fetch_objs(resource=CREDENTIAL_KIND, namespace=None):
            for body in chunk:
                found.feed(SCOPE, event(None, body))
        found.feed(SCOPE, watching.Bookmark.LISTED)

    asyncio.run(relist())
    assert list(by_account[("team", "ci")]) == ["a"]


def test_a_kind_no_watcher_lists_holds_no_one_back() -> None:
    """An indexed kind kopf does not watch (its CRD missing) does not hang the start."""
    found, _ = made()

    @found.index(SERVICE_ACCOUNTS)
    def accounts(body: kopf.Body) -> dict[str, str]:
        return {}

    async def empty(**_: Any) -> AsyncIterator[tuple[list[Any], str]]:
        yield [], "1"

    async def start() -> None:
        found.begin(SCOPE)
        await asyncio.wait_for(
            found.prefill(SCOPE, settings=None, resource=CREDENTIAL_KIND),  # type: ignore[arg-type]
            timeout=5,
        )

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(indices.fetching, "fetch_objs", empty)
        asyncio.run(start())
    assert found.ready


def test_a_watcher_stopped_while_prefilling_holds_no_one_back() -> None:
    """kopf stops a watcher whose namespace went away; the others go on."""
    found, _ = made()
    gone, staying = (CREDENTIALS, "gone"), (CREDENTIALS, "staying")

    blocked = asyncio.Event()

    async def fetch_objs(*, namespace: Any, **_: Any) -> AsyncIterator[tuple[list[Any], str]]:
        if namespace == "gone":
            blocked.set()
            await asyncio.Event().wait()  # a listing that never answers
        yield [], "1"

    async def start() -> None:
        found.begin(gone)
        found.begin(staying)
        stopped = asyncio.create_task(
            found.prefill(gone, settings=None, resource=CREDENTIAL_KIND)  # type: ignore[arg-type]
        )
        other = asyncio.create_task(
            found.prefill(staying, settings=None, resource=CREDENTIAL_KIND)  # type: ignore[arg-type]
        )
        await blocked.wait()
        assert not other.done()
        stopped.cancel()
        await asyncio.wait_for(other, timeout=5)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(indices.fetching, "fetch_objs", fetch_objs)
        asyncio.run(start())
    assert found.ready
