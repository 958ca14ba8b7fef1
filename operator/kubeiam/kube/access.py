"""RBAC questions the admission webhook asks, as SubjectAccessReviews, cached briefly.

The API server's own webhook authorizer caches its answers for a short while; so does this: an
`apply` of ten credentials by one person asks each question once. The cache is bounded, keyed by
the whole identity (user, uid, groups, extra), and an answer older than the TTL is asked again,
so a RoleBinding removed takes effect within seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Iterable

from kubeiam.domain.admission import GROUP, Requester
from kubeiam.kube import api, metrics

_MAX_ENTRIES = 4096

_Key = tuple[Requester, str, str, str, str]


class AccessCache:
    """Answers of SubjectAccessReviews, each reused for `ttl` seconds."""

    def __init__(self, ttl: float, max_entries: int = _MAX_ENTRIES) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._answers: OrderedDict[_Key, tuple[float, bool]] = OrderedDict()

    def get(self, key: _Key, now: float) -> bool | None:
        entry = self._answers.get(key)
        if entry is None or now - entry[0] >= self.ttl:
            return None
        return entry[1]

    def put(self, key: _Key, allowed: bool, now: float) -> None:
        self._answers[key] = (now, allowed)
        self._answers.move_to_end(key)
        while len(self._answers) > self.max_entries:
            self._answers.popitem(last=False)


def _user(requester: Requester) -> dict[str, object]:
    user: dict[str, object] = {"user": requester.username, "groups": list(requester.groups)}
    if requester.uid:
        user["uid"] = requester.uid
    if requester.extra:
        user["extra"] = {key: list(values) for key, values in requester.extra}
    return user


async def may(
    cache: AccessCache,
    requester: Requester,
    verb: str,
    resource: str,
    namespace: str,
    name: str,
    *,
    request_timeout: float,
) -> bool:
    """Whether RBAC lets the requester do `verb` on `resource`.iam.kubeiam.io `name`."""
    key = (requester, verb, resource, namespace, name)
    now = time.monotonic()
    known = cache.get(key, now)
    if known is not None:
        metrics.ACCESS_REVIEWS.labels(verb, "hit").inc()
        return known
    metrics.ACCESS_REVIEWS.labels(verb, "miss").inc()
    attributes = {
        "group": GROUP,
        "resource": resource,
        "verb": verb,
        "namespace": namespace,
        "name": name,
    }
    allowed = await api.review_access(_user(requester), attributes, request_timeout=request_timeout)
    cache.put(key, allowed, time.monotonic())
    return allowed


async def may_each(
    cache: AccessCache,
    requester: Requester,
    verb: str,
    resource: str,
    namespace: str,
    names: Iterable[str],
    *,
    request_timeout: float,
) -> dict[str, bool]:
    """`may` for several names at once, asked concurrently."""
    unique = list(dict.fromkeys(names))
    answers = await asyncio.gather(
        *(
            may(cache, requester, verb, resource, namespace, name, request_timeout=request_timeout)
            for name in unique
        )
    )
    return dict(zip(unique, answers, strict=True))
