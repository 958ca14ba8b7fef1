"""Log lines about one object name it the way kopf's own per-object lines do.

kopf's formatters read a `k8s_ref` attribute of the record: the text format prefixes
`[namespace/name]`, the JSON format (KUBEIAM_LOG_FORMAT=json) adds an `object` key, so a log
pipeline can find every line about an object, ours and kopf's alike.
"""

from __future__ import annotations

from typing import Any

from kubeiam.kube.resources import GROUP, VERSION


def about(kind: str, namespace: str, name: str, uid: str | None = None) -> dict[str, Any]:
    """`extra=` for a logging call about one kube-iam object."""
    return {
        "k8s_ref": {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": kind,
            "namespace": namespace,
            "name": name,
            "uid": uid,
        }
    }
