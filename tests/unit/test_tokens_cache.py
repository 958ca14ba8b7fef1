"""The token server's cache: views from bodies, the credential-id index, readiness, relists."""

from __future__ import annotations

import datetime
from typing import Any

from kubeiam.kube.resources import CREDENTIALS, SERVICE_ACCOUNTS, TRUSTS
from kubeiam.tokens.cache import Cache


def credential(name: str, credential_id: str | None, state: str = "Active") -> dict[str, Any]:
    status: dict[str, Any] = {"state": state}
    if credential_id:
        status |= {
            "credentialId": credential_id,
            "secretHash": "sha256:ab",
            "clientId": "pipeline@team-a.acme.iam",
            "expiresAt": "2027-01-01T00:00:00Z",
            "effectiveRoles": ["storage.reader"],
        }
    return {
        "metadata": {"namespace": "team-a", "name": name},
        "spec": {"serviceAccountName": "pipeline"},
        "status": status,
    }


def account(name: str, *, disabled: bool = False) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "team-a", "name": name},
        "spec": {"disabled": disabled},
        "status": {"clientId": f"{name}@team-a.acme.iam"},
    }


def filled() -> Cache:
    cache = Cache()
    cache.replace(SERVICE_ACCOUNTS, [account("pipeline")])
    cache.replace(CREDENTIALS, [credential("key", "aaaa"), credential("waiting", None, "Pending")])
    cache.replace(TRUSTS, [])
    return cache


def test_ready_only_once_every_kind_was_listed() -> None:
    cache = Cache()
    cache.replace(SERVICE_ACCOUNTS, [])
    cache.replace(CREDENTIALS, [])
    assert not cache.ready
    assert not cache.filled.is_set()
    cache.replace(TRUSTS, [])
    assert cache.ready
    assert cache.filled.is_set()


def test_credentials_are_found_by_credential_id_and_unissued_ones_are_not_kept() -> None:
    cache = filled()
    found = cache.credential_by_id("aaaa")
    assert found is not None
    assert found.name == "key"
    assert found.effective_roles == ("storage.reader",)
    assert found.expires_at == datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC)
    assert cache.sizes()[CREDENTIALS] == 1


def test_a_credential_view_says_whether_it_requires_dpop() -> None:
    cache = filled()
    plain = cache.credential_by_id("aaaa")
    assert plain is not None
    assert plain.require_dpop is False
    body = credential("bound", "bbbb")
    body["spec"]["requireDpop"] = True
    cache.apply(CREDENTIALS, "ADDED", body)
    bound = cache.credential_by_id("bbbb")
    assert bound is not None
    assert bound.require_dpop is True


def test_a_change_replaces_the_view_and_a_deletion_removes_it() -> None:
    cache = filled()
    cache.apply(CREDENTIALS, "MODIFIED", credential("key", "aaaa", "Revoked"))
    revoked = cache.credential_by_id("aaaa")
    assert revoked is not None
    assert revoked.state == "Revoked"
    cache.apply(CREDENTIALS, "DELETED", credential("key", "aaaa", "Revoked"))
    assert cache.credential_by_id("aaaa") is None
    cache.apply(SERVICE_ACCOUNTS, "MODIFIED", account("pipeline", disabled=True))
    disabled = cache.account_of("team-a", "pipeline")
    assert disabled is not None
    assert disabled.disabled
    cache.apply(SERVICE_ACCOUNTS, "DELETED", account("pipeline"))
    assert cache.account_of("team-a", "pipeline") is None


def test_a_relist_forgets_what_was_deleted_while_no_watch_ran() -> None:
    cache = filled()
    cache.replace(CREDENTIALS, [credential("new", "bbbb")])
    assert cache.credential_by_id("aaaa") is None
    assert cache.credential_by_id("bbbb") is not None


def test_a_pending_credential_issued_later_enters_the_index() -> None:
    cache = filled()
    assert cache.credential_by_id("cccc") is None
    cache.apply(CREDENTIALS, "MODIFIED", credential("waiting", "cccc"))
    assert cache.credential_by_id("cccc") is not None


class _FakeApi:
    """Lists of credentials as the API server would give them, one per call."""

    def __init__(self, lists: list[list[dict[str, Any]]]) -> None:
        self.lists = lists
        self.calls = 0

    def list_cluster_custom_object(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        items = self.lists[min(self.calls, len(self.lists) - 1)]
        self.calls += 1
        return {"items": items, "metadata": {"resourceVersion": str(self.calls)}}


class _FakeWatch:
    """A watch that delivers one change, then says its resourceVersion is too old (410)."""

    resource_version = "1"
    streams = 0

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        _FakeWatch.streams += 1
        if _FakeWatch.streams == 1:
            yield {"type": "MODIFIED", "raw_object": credential("key", "aaaa", "Revoked")}
            raise ApiException(status=410, reason="Expired")
        yield from ()


def test_a_watch_too_old_is_replaced_by_a_fresh_list(monkeypatch: Any) -> None:
    """The thread lists, applies the watch's change, meets a 410 and lists again: what the
    second list lacks is gone from the cache."""
    import asyncio

    from kubeiam.tokens import cache as cache_module

    fake = _FakeApi([[credential("key", "aaaa")], [credential("new", "bbbb")]])
    monkeypatch.setattr(cache_module.client, "CustomObjectsApi", lambda _: fake)
    monkeypatch.setattr(cache_module.watch, "Watch", _FakeWatch)
    monkeypatch.setattr(cache_module.api, "api_client", lambda: None)
    monkeypatch.setattr(cache_module, "RETRY_SECONDS", 0.01)
    _FakeWatch.streams = 0
    cache = Cache()

    async def main() -> None:
        cache.replace(SERVICE_ACCOUNTS, [])
        cache.replace(TRUSTS, [])
        loop = asyncio.get_running_loop()
        thread = asyncio.to_thread(cache._follow, CREDENTIALS, loop)
        task = asyncio.ensure_future(thread)
        for _ in range(1000):  # the changes arrive through the loop: poll it, for 10 s at most
            if cache.credential_by_id("bbbb") is not None:
                break
            await asyncio.sleep(0.01)
        cache.stop()
        await task

    asyncio.run(main())
    assert fake.calls >= 2
    assert cache.credential_by_id("aaaa") is None
    assert cache.ready
