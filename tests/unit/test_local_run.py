"""`make run` tells the local control plane from another cluster by its kubeconfig."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from kubeiam.devcluster.cluster import LocalCluster
from kubeiam.devcluster.local_run import is_local


def _kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


def test_the_local_cluster_is_recognised_whatever_kubeconfig_says(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "state")
    cluster.state_dir.mkdir()
    _kubeconfig(cluster.kubeconfig, "https://127.0.0.1:40123")
    copy = _kubeconfig(tmp_path / "copy.yaml", "https://127.0.0.1:40123/")
    other = _kubeconfig(tmp_path / "other.yaml", "https://api.example.com:6443")

    assert is_local(None, cluster)  # unset: the local one
    assert is_local("", cluster)
    assert is_local(str(cluster.kubeconfig), cluster)  # as the README exports it
    assert is_local(str(tmp_path / "state" / ".." / "state" / "kubeconfig"), cluster)
    assert is_local(str(copy), cluster)  # a copy names the same API server
    # Merged as kubectl merges them: the first file's current context wins.
    assert is_local(os.pathsep.join([str(copy), str(other)]), cluster)
    assert not is_local(os.pathsep.join([str(other), str(copy)]), cluster)
    assert not is_local(str(other), cluster)
    assert not is_local(str(tmp_path / "missing.yaml"), cluster)
