"""Build the control-plane binaries from Go modules once, and find them in a versioned cache."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kubeiam.devcluster.errors import ControlPlaneError

# The wrapper modules live in the repository, not in the package: their go.mod and go.sum are
# what pins the versions, so the versions below are read from them and exist only there.
REPO_ROOT = Path(__file__).resolve().parents[3]
WRAPPERS = REPO_ROOT / "tools" / "controlplane"

KUBERNETES_BINARIES = ("kube-apiserver", "kube-controller-manager", "kubectl")
ALL_BINARIES = ("etcd", *KUBERNETES_BINARIES)


@dataclass(frozen=True)
class Versions:
    """The pinned Kubernetes and etcd releases, as the wrapper modules require them."""

    kubernetes: str
    etcd: str

    @property
    def cache_key(self) -> str:
        return f"kubernetes-{self.kubernetes}_etcd-{self.etcd}"


def _required_version(go_mod: Path, module: str) -> str:
    pattern = rf"^\s*(?:require\s+)?{re.escape(module)} (v\S+)(?:\s*//.*)?$"
    match = re.search(pattern, go_mod.read_text(), re.MULTILINE)
    if match is None:
        raise ControlPlaneError(f"{go_mod} does not require {module}.")
    return match.group(1)


def pinned_versions() -> Versions:
    return Versions(
        kubernetes=_required_version(WRAPPERS / "kubernetes" / "go.mod", "k8s.io/kubernetes"),
        etcd=_required_version(WRAPPERS / "etcd" / "go.mod", "go.etcd.io/etcd/server/v3"),
    )


def cache_root() -> Path:
    """Where built binaries are kept between runs: KUBEIAM_CACHE_DIR or ~/.cache/kube-iam."""
    configured = os.environ.get("KUBEIAM_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "kube-iam"


def bin_dir(versions: Versions | None = None) -> Path:
    return cache_root() / "controlplane" / (versions or pinned_versions()).cache_key / "bin"


def _version_ldflags(version: str) -> str:
    # Without these the binaries report v0.0.0-master and kubectl warns about version skew.
    major, minor = version.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {package}.gitVersion={version}",
            f"-X {package}.gitMajor={major}",
            f"-X {package}.gitMinor={minor}",
            f"-X {package}.gitTreeState=clean",
        ]
    return " ".join(flags)


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _go_build(
    workdir: Path,
    output: str,
    packages: list[str],
    ldflags: str,
    log: Path,
    *,
    tags: tuple[str, ...] = (),
    cgo: bool = False,
    what: str = "the control plane",
) -> None:
    env = dict(os.environ, CGO_ENABLED="1" if cgo else "0", GOFLAGS="-mod=readonly -buildvcs=false")
    command = ["go", "build", "-trimpath", "-ldflags", ldflags, "-o", output]
    if tags:
        command += ["-tags", ",".join(tags)]
    command += packages
    with log.open("a") as log_file:
        log_file.write(f"$ (cd {workdir} && {' '.join(command)})\n")
        log_file.flush()
        result = subprocess.run(
            command, cwd=workdir, env=env, stdout=log_file, stderr=subprocess.STDOUT, check=False
        )
    if result.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        raise ControlPlaneError(
            f"Building {what} failed (go build exited {result.returncode}); full log: {log}\n{tail}"
        )


def ensure_binaries(log_dir: Path, *, announce: bool = True) -> Path:
    """Return the directory holding etcd, kube-apiserver, kube-controller-manager and kubectl.

    Builds them on the first call for a version (tens of minutes on a cold machine) and reuses the
    cache afterwards. Concurrent callers wait on a file lock instead of building twice.
    """
    versions = pinned_versions()
    target = bin_dir(versions)
    if all((target / name).is_file() for name in ALL_BINARIES):
        return target
    if shutil.which("go") is None:
        raise ControlPlaneError(
            "The Go toolchain is not on PATH. kube-iam builds its local control plane "
            f"(Kubernetes {versions.kubernetes}, etcd {versions.etcd}) from Go modules; "
            "install Go 1.25 or newer, or point KUBECONFIG at an existing cluster."
        )
    with _exclusive(target.parent / ".build.lock"):
        if all((target / name).is_file() for name in ALL_BINARIES):
            return target
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / "build.log"
        if announce:
            print(
                f"Building Kubernetes {versions.kubernetes} and etcd {versions.etcd} from Go "
                f"modules into {target} (first run only; log: {log}) ...",
                flush=True,
            )
        started = time.monotonic()
        staging = Path(tempfile.mkdtemp(prefix="build-", dir=target.parent))
        try:
            _go_build(
                WRAPPERS / "kubernetes",
                f"{staging}/",
                [f"k8s.io/kubernetes/cmd/{name}" for name in KUBERNETES_BINARIES],
                _version_ldflags(versions.kubernetes),
                log,
            )
            # The etcd server module's root is its main package; name the binary explicitly.
            etcd = str(staging / "etcd")
            _go_build(WRAPPERS / "etcd", etcd, ["go.etcd.io/etcd/server/v3"], "-s -w", log)
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if announce:
            print(f"Built the control plane in {time.monotonic() - started:.0f}s.", flush=True)
    return target


@dataclass(frozen=True)
class GoProgram:
    """Another Go program built the same way: from a wrapper module in tools/ whose go.mod pins
    `module`'s version, cached under `<cache root>/<kind>/<name>-<version>/` (the bench's peers
    and load generator)."""

    name: str
    wrapper: Path
    module: str
    package: str
    kind: str = "tools"
    tags: tuple[str, ...] = ()
    cgo: bool = False

    @property
    def version(self) -> str:
        return _required_version(self.wrapper / "go.mod", self.module)

    @property
    def path(self) -> Path:
        return cache_root() / self.kind / f"{self.name}-{self.version}" / self.name


def ensure_program(program: GoProgram, log_dir: Path, *, announce: bool = True) -> Path:
    """The program's binary, built on the first call for its version and cached afterwards;
    concurrent callers wait on the same kind of file lock as `ensure_binaries`."""
    target = program.path
    if target.is_file():
        return target
    if shutil.which("go") is None:
        raise ControlPlaneError(
            f"The Go toolchain is not on PATH: {program.name} {program.version} is built from "
            f"the Go module {program.module}; install Go 1.25 or newer."
        )
    with _exclusive(target.parent / ".build.lock"):
        if target.is_file():
            return target
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / f"build-{program.name}.log"
        if announce:
            print(
                f"Building {program.name} {program.version} from Go modules into {target} "
                f"(first run only; log: {log}) ...",
                flush=True,
            )
        started = time.monotonic()
        staging = target.with_name(f".{program.name}.partial")
        _go_build(
            program.wrapper,
            str(staging),
            [program.package],
            "-s -w",
            log,
            tags=program.tags,
            cgo=program.cgo,
            what=f"{program.name} {program.version}",
        )
        staging.rename(target)
        if announce:
            print(f"Built {program.name} in {time.monotonic() - started:.0f}s.", flush=True)
    return target
