"""The token server's memory: ServiceAccounts, credentials and trusts from list+watch.

Nothing on the token path calls the API server: it reads this cache. Each kind is listed, then
watched from the list's resourceVersion, by the official (synchronous) Kubernetes client in a
thread of its own, which hands every change to the event loop; the loop alone reads and writes
the maps, so they need no lock. A watch that ends is resumed from the last resourceVersion seen;
one the API server says is too old (410) or that fails is replaced by a fresh list. Only small
views are kept, never bodies, and credentials are indexed by `status.credentialId`, the id a
client secret embeds, for an O(1) lookup. The cache is ready once every kind's first list is in.

Why the synchronous client in threads: `kubernetes_asyncio` is not a dependency, and the official
client already is (kube/api.py); it brings its kubeconfig and in-cluster loading (exec plugins,
token refresh) and its watch's resourceVersion bookkeeping, which plain aiohttp against the API
server would have to redo. Three threads, one per kind, cost nothing on the token path.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, TypeVar, cast

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from kubeiam.api import FederationTrustSpec
from kubeiam.domain.conditions import find_ready, parse_time
from kubeiam.kube import api
from kubeiam.kube.resources import CREDENTIALS, GROUP, SERVICE_ACCOUNTS, TRUSTS, VERSION
from kubeiam.tokens.exchange import Trust
from kubeiam.tokens.grants import Account, Credential, Network

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

WATCH_SECONDS = 300  # the API server ends a watch after this; the thread resumes it
CLIENT_TIMEOUT = WATCH_SECONDS + 30  # a silent connection is given up a little later
RETRY_SECONDS = 2.0

Key = tuple[str, str]  # (namespace, name)


def _key(body: dict[str, Any]) -> Key:
    metadata = body.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")


def credential_view(body: dict[str, Any]) -> Credential | None:
    """The credential as the token path sees it; None until it was issued (no id, no hash)."""
    status, spec = body.get("status") or {}, body.get("spec") or {}
    credential_id, hashed = status.get("credentialId"), status.get("secretHash")
    if not credential_id or not hashed:
        return None
    namespace, name = _key(body)
    expires = status.get("expiresAt")
    return Credential(
        namespace=namespace,
        name=name,
        account=str(spec.get("serviceAccountName") or ""),
        credential_id=str(credential_id),
        client_id=str(status.get("clientId") or ""),
        secret_hash=str(hashed),
        state=str(status.get("state") or ""),
        expires_at=parse_time(expires) if expires else None,
        effective_roles=tuple(status.get("effectiveRoles") or ()),
        allow_source_cidrs=networks(spec.get("allowSourceCidrs")),
        require_dpop=bool(spec.get("requireDpop")),
    )


def _last_used(body: dict[str, Any]) -> datetime.datetime | None:
    written = (body.get("status") or {}).get("lastUsedAt")
    try:
        return parse_time(written) if isinstance(written, str) else None
    except ValueError:
        return None


def networks(cidrs: Any) -> tuple[Network, ...] | None:
    """allowSourceCidrs as networks (host bits ignored); None when unset.

    The CRD admits only CIDRs; an entry that still does not parse admits nobody rather than
    everybody, so it is dropped from a list that stays set.
    """
    if cidrs is None:
        return None
    parsed: list[Network] = []
    for cidr in cidrs:
        try:
            parsed.append(ipaddress.ip_network(str(cidr), strict=False))
        except ValueError:
            continue
    return tuple(parsed)


def account_view(body: dict[str, Any]) -> Account:
    namespace, name = _key(body)
    status, spec = body.get("status") or {}, body.get("spec") or {}
    return Account(
        namespace=namespace,
        name=name,
        client_id=str(status.get("clientId") or ""),
        disabled=bool(spec.get("disabled")),
    )


def trust_view(body: dict[str, Any]) -> Trust:
    namespace, name = _key(body)
    metadata = body.get("metadata") or {}
    raw_spec, status = body.get("spec") or {}, body.get("status") or {}
    generation = int(metadata.get("generation") or 0)
    ready = find_ready(status) or {}
    try:
        spec: FederationTrustSpec | None = FederationTrustSpec.model_validate(raw_spec)
    except ValidationError:
        spec = None
    return Trust(
        namespace=namespace,
        name=name,
        account=str(raw_spec.get("serviceAccountName") or ""),
        issuer=str(raw_spec.get("issuer") or ""),
        disabled=bool(raw_spec.get("disabled")),
        uid=str(metadata.get("uid") or ""),
        generation=generation,
        spec=spec,
        ready=ready.get("status") == "True" and ready.get("observedGeneration") == generation,
        effective_roles=tuple(status.get("effectiveRoles") or ()),
        allow_source_cidrs=networks(raw_spec.get("allowSourceCidrs")),
    )


class Cache:
    """Accounts, credentials (by key and by credential id) and trusts, kept by watches."""

    def __init__(self) -> None:
        self.accounts: dict[Key, Account] = {}
        self.trusts: dict[Key, Trust] = {}
        self._credentials: dict[Key, Credential] = {}
        self._by_id: dict[str, Credential] = {}
        self._by_client_id: dict[str, Account] = {}
        self._trusts_by_uid: dict[str, Trust] = {}
        self._trusts_by_account: dict[Key, dict[str, Trust]] = {}
        # status.lastUsedAt of credentials and trusts by (plural, namespace, name), whoever
        # wrote it: the usage writer skips one written within its interval by another replica.
        self._last_used: dict[tuple[str, str, str], datetime.datetime] = {}
        self._listed: set[str] = set()
        self.filled = asyncio.Event()  # set once `ready`
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- the token path's reads --------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Every kind's first list is in: an answer now is as good as the API server's."""
        return self._listed == {SERVICE_ACCOUNTS, CREDENTIALS, TRUSTS}

    def credential_by_id(self, credential_id: str) -> Credential | None:
        return self._by_id.get(credential_id)

    def account_of(self, namespace: str, name: str) -> Account | None:
        return self.accounts.get((namespace, name))

    def last_used_at(self, key: tuple[str, str, str]) -> datetime.datetime | None:
        """status.lastUsedAt of (plural, namespace, name), as the watch last saw it."""
        return self._last_used.get(key)

    def account_by_client_id(self, client_id: str) -> Account | None:
        """The account whose status.clientId this is (the name token exchange gives)."""
        return self._by_client_id.get(client_id)

    def trusts_of(self, account: Account) -> list[Trust]:
        """The account's trusts (at most KUBEIAM_MAX_TRUSTS_PER_ACCOUNT of them are Ready)."""
        return list(self._trusts_by_account.get((account.namespace, account.name), {}).values())

    def trust_by_uid(self, uid: str) -> Trust | None:
        return self._trusts_by_uid.get(uid)

    def trust_uids(self) -> set[str]:
        """The uids of every trust in the cache (what the token server may forget the rest by)."""
        return set(self._trusts_by_uid)

    def sizes(self) -> dict[str, int]:
        return {
            SERVICE_ACCOUNTS: len(self.accounts),
            CREDENTIALS: len(self._credentials),
            TRUSTS: len(self.trusts),
        }

    # -- changes, applied on the event loop --------------------------------------------------

    def replace(self, plural: str, bodies: list[dict[str, Any]]) -> None:
        """A fresh list of one kind: what it lacks was deleted meanwhile."""
        if plural in (CREDENTIALS, TRUSTS):
            for key in [key for key in self._last_used if key[0] == plural]:
                del self._last_used[key]
        if plural == CREDENTIALS:
            self._credentials.clear()
            self._by_id.clear()
        elif plural == SERVICE_ACCOUNTS:
            self.accounts.clear()
            self._by_client_id.clear()
        else:
            self.trusts.clear()
            self._trusts_by_uid.clear()
            self._trusts_by_account.clear()
        for body in bodies:
            self.apply(plural, "ADDED", body)
        self._listed.add(plural)
        if self.ready:
            self.filled.set()

    def apply(self, plural: str, event: str, body: dict[str, Any]) -> None:
        """One watch event (ADDED, MODIFIED, DELETED) of one kind."""
        key = _key(body)
        deleted = event == "DELETED"
        if plural == SERVICE_ACCOUNTS:
            was = self.accounts.get(key)
            if was is not None and self._by_client_id.get(was.client_id) is was:
                del self._by_client_id[was.client_id]
            account = None if deleted else account_view(body)
            _put(self.accounts, key, account)
            if account is not None and account.client_id:
                self._by_client_id[account.client_id] = account
        elif plural == TRUSTS:
            previous = self.trusts.get(key)
            if previous is not None:
                self._trusts_by_uid.pop(previous.uid, None)
                siblings = self._trusts_by_account.get((previous.namespace, previous.account))
                if siblings is not None:
                    siblings.pop(previous.name, None)
                    if not siblings:
                        del self._trusts_by_account[(previous.namespace, previous.account)]
            trust = None if deleted else trust_view(body)
            _put(self.trusts, key, trust)
            _put(self._last_used, (TRUSTS, *key), None if deleted else _last_used(body))
            if trust is not None:
                self._trusts_by_uid[trust.uid] = trust
                owner = (trust.namespace, trust.account)
                self._trusts_by_account.setdefault(owner, {})[trust.name] = trust
        else:
            old = self._credentials.get(key)
            if old is not None and self._by_id.get(old.credential_id) is old:
                del self._by_id[old.credential_id]
            new = None if deleted else credential_view(body)
            _put(self._credentials, key, new)
            _put(self._last_used, (CREDENTIALS, *key), None if deleted else _last_used(body))
            if new is not None:
                self._by_id[new.credential_id] = new

    # -- the watches -------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """One thread a kind, each listing then watching, handing changes to `loop`."""
        for plural in (SERVICE_ACCOUNTS, CREDENTIALS, TRUSTS):
            thread = threading.Thread(
                target=self._follow, args=(plural, loop), name=f"watch-{plural}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stopping.set()

    def _follow(self, plural: str, loop: asyncio.AbstractEventLoop) -> None:
        custom = client.CustomObjectsApi(api.api_client())

        def hand(change: Callable[..., None], *args: Any) -> None:
            loop.call_soon_threadsafe(change, plural, *args)

        while not self._stopping.is_set():
            try:
                listed = cast(
                    dict[str, Any],
                    custom.list_cluster_custom_object(
                        GROUP, VERSION, plural, _request_timeout=CLIENT_TIMEOUT
                    ),
                )
                hand(self.replace, listed.get("items") or [])
                version = (listed.get("metadata") or {}).get("resourceVersion")
                self._watch(custom, plural, version, hand)
            except ApiException as error:
                if error.status != 410:
                    logger.warning("Watching %s: HTTP %s; listing again.", plural, error.status)
            except Exception as error:  # a dropped connection, a timeout: list again
                name = type(error).__name__
                logger.warning("Watching %s failed (%s); listing again.", plural, name)
            if not self._stopping.is_set():
                time.sleep(RETRY_SECONDS)

    def _watch(
        self,
        custom: client.CustomObjectsApi,
        plural: str,
        version: str | None,
        hand: Callable[..., None],
    ) -> None:
        """Watch from `version` until the API server says it is too old (410 raises)."""
        while not self._stopping.is_set():
            stream = watch.Watch()  # type: ignore[no-untyped-call]
            for event in stream.stream(  # type: ignore[no-untyped-call]
                custom.list_cluster_custom_object,
                GROUP,
                VERSION,
                plural,
                resource_version=version,
                allow_watch_bookmarks=True,
                timeout_seconds=WATCH_SECONDS,
                _request_timeout=CLIENT_TIMEOUT,
            ):
                kind, body = event["type"], event["raw_object"]
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    hand(self.apply, kind, body)
            version = stream.resource_version


def _put(store: dict[K, Any], key: K, value: Any) -> None:
    if value is None:
        store.pop(key, None)
    else:
        store[key] = value
