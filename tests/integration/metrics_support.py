"""Reading metrics in tests: an operator's /metrics page, the API server's own request counts,
and a watch that records every Secret event of a namespace (names only, never data)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from .support import ClusterHandle, KubectlWatch, OperatorProcess, wait_for

Labels = frozenset[tuple[str, str]]
WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"})
IAM_GROUP = "iam.kubeiam.io"


@dataclass(frozen=True)
class Page:
    """One scrape of a /metrics page: every sample by name and labels."""

    text: str

    def samples(self, name: str) -> dict[Labels, float]:
        found: dict[Labels, float] = {}
        for family in text_string_to_metric_families(self.text):
            for sample in family.samples:
                if sample.name == name:
                    found[frozenset(sample.labels.items())] = sample.value
        return found

    def value(self, metric: str, /, **labels: str) -> float:
        """The sum over the samples whose labels include `labels`; 0 when there are none."""
        wanted = set(labels.items())
        return sum(v for key, v in self.samples(metric).items() if wanted <= key)

    def by(self, metric: str, label: str, /, **labels: str) -> dict[str, float]:
        """The samples whose labels include `labels`, by the value of `label`."""
        wanted = set(labels.items())
        return {dict(key)[label]: v for key, v in self.samples(metric).items() if wanted <= key}


def scrape(operator: OperatorProcess) -> Page:
    return Page(operator.scrape())


def wait_until_no_namespace_terminates(cluster: ClusterHandle) -> None:
    """Earlier tests delete their namespaces without waiting; metrics that count cluster-wide
    are compared only once the namespace controller has finished deleting their objects."""

    def settled() -> bool:
        listed = json.loads(cluster.kubectl("get", "namespaces", "-o", "json").stdout)["items"]
        return not any(ns["status"].get("phase") == "Terminating" for ns in listed)

    wait_for(settled, timeout=180, what="earlier tests' namespaces to be deleted")


@dataclass(frozen=True)
class ApiServerRequests:
    """apiserver_request_total from the API server itself, summed by verb, group and resource
    (subresources included: a status patch is a write of the object)."""

    counts: Mapping[tuple[str, str, str], float]

    @classmethod
    def read(cls, cluster: ClusterHandle) -> ApiServerRequests:
        text = cluster.kubectl("get", "--raw", "/metrics").stdout
        counts: Counter[tuple[str, str, str]] = Counter()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "apiserver_request_total":
                    labels = sample.labels
                    key = (labels["verb"], labels["group"], labels["resource"])
                    counts[key] += sample.value
        return cls(counts)

    def __sub__(self, earlier: ApiServerRequests) -> ApiServerRequests:
        keys = set(self.counts) | set(earlier.counts)
        return ApiServerRequests(
            {k: self.counts.get(k, 0) - earlier.counts.get(k, 0) for k in keys}
        )

    def total(self, verbs: frozenset[str] | set[str], *, group: str, resource: str = "") -> int:
        return int(
            sum(
                value
                for (verb, g, r), value in self.counts.items()
                if verb in verbs and g == group and (not resource or r == resource)
            )
        )

    def all(self, verbs: frozenset[str] | set[str]) -> dict[str, int]:
        """By verb, group and resource, whatever wrote it (the control plane's leases too)."""
        return {
            f"{verb} {resource}.{group or 'core'}": int(value)
            for (verb, group, resource), value in sorted(self.counts.items())
            if verb in verbs and value
        }

    def kube_iam(self, verbs: frozenset[str] | set[str]) -> dict[str, int]:
        """By resource: kube-iam's kinds and Secrets, the objects kube-iam writes."""
        found: dict[str, int] = {}
        for (verb, group, resource), value in self.counts.items():
            ours = group == IAM_GROUP or (group == "" and resource == "secrets")
            if ours and verb in verbs and value:
                found[f"{verb} {resource}"] = found.get(f"{verb} {resource}", 0) + int(value)
        return found


class SecretEvents(KubectlWatch):
    """Every ADDED, MODIFIED and DELETED event of a namespace's Secrets, by name.

    The watch prints only the event type, name and UID (a jsonpath), so no Secret's data ever
    reaches the test.
    """

    def __init__(self, cluster: ClusterHandle, namespace: str) -> None:
        super().__init__(cluster, namespace)
        self.events: list[tuple[str, str, str]] = []

    def _watch_args(self) -> tuple[str, ...]:
        jsonpath = 'jsonpath={.type} {.object.metadata.name} {.object.metadata.uid}{"\\n"}'
        return ("secrets", "--output-watch-events", "-o", jsonpath)

    def _line(self, line: str) -> None:
        parts = line.split()
        if len(parts) == 3:
            self.events.append((parts[0], parts[1], parts[2]))

    def count(self, event_type: str) -> Counter[str]:
        with self._lock:
            return Counter(name for kind, name, _ in self.events if kind == event_type)

    def uids(self) -> dict[str, set[str]]:
        """Every UID each name was seen with."""
        found: dict[str, set[str]] = {}
        with self._lock:
            for _, name, uid in self.events:
                found.setdefault(name, set()).add(uid)
        return found

    def live(self) -> set[str]:
        """The names whose last event was not a deletion: what a listing shows, once the watch
        has caught up."""
        last: dict[str, str] = {}
        with self._lock:
            for kind, name, _ in self.events:
                last[name] = kind
        return {name for name, kind in last.items() if kind != "DELETED"}


def states_everywhere(cluster: ClusterHandle) -> dict[str, int]:
    """How many credentials `kubectl get iamcred -A` shows in each state (New: none yet)."""
    listed = json.loads(cluster.kubectl("get", "iamcred", "--all-namespaces", "-o", "json").stdout)[
        "items"
    ]
    counts: Counter[str] = Counter(
        (item.get("status") or {}).get("state") or "New" for item in listed
    )
    return dict(counts)


def nonzero(values: Mapping[str, float]) -> dict[str, int]:
    return {key: int(value) for key, value in values.items() if value}


def as_json(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)
