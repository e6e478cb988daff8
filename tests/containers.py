"""Podman for the tests: a private image store, a Debian base made here, the project's images.

Why: the agent image and the Airflow image must be built from the repository's
Dockerfiles and really run, on a machine that reaches no container registry. So the
base image every Dockerfile starts ``FROM`` (``docker.io/library/debian:bookworm-slim``)
is made with ``debootstrap --variant=minbase bookworm`` from the Debian mirror apt
already uses, ``podman import``-ed and tagged with that name; builds use
``--pull=never``. Podman gets its own ``containers.conf`` (runc, cgroupfs, ulimits
this machine allows: its defaults fail here) and its own store, under a cache folder
kept between runs (``STASH_TEST_CACHE``, default ``~/.cache/stash-airflow-tests``),
so the base (about 30 s) and unchanged image layers are made once.

``podman_or_skip()`` skips a test, naming why, only when podman cannot run here at
all; with ``STASH_REQUIRE_PODMAN=1`` (``make test`` sets it) it fails instead.
"""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
BASE_IMAGE = "docker.io/library/debian:bookworm-slim"
AGENT_IMAGE = "stash-airflow/agent:0.1.0"
AIRFLOW_IMAGE = "stash-airflow/airflow:0.1.0"
DEBIAN_MIRROR = "http://deb.debian.org/debian"

CONTAINERS_CONF = """\
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"

[containers]
default_ulimits = ["nofile=8192:8192", "nproc=8192:8192"]
"""

# What a slim image leaves out; removed from the debootstrap tree before import.
_SLIM = ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
         "usr/share/info", "usr/share/locale")  # fmt: skip


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "stash-airflow-tests"
    path = Path(os.environ.get("STASH_TEST_CACHE") or default)
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class Podman:
    """A podman command line with this suite's store and configuration."""

    binary: str
    root: Path

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.root / "containers.conf")}

    def argv(self, *args: str) -> list[str]:
        store = ["--root", str(self.root / "storage"), "--runroot", str(self.root / "run")]
        return [self.binary, *store, *args]

    def run(
        self,
        *args: str,
        timeout: float = 600,
        check: bool = True,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run podman to the end; ``env`` adds variables (values a container takes by name)."""
        proc = subprocess.run(
            self.argv(*args),
            env={**self.env, **(env or {})},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args[:3])}... exited {proc.returncode}:\n"
                f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        return proc

    def has_image(self, name: str) -> bool:
        return self.run("image", "exists", name, check=False).returncode == 0


@contextmanager
def _locked(name: str) -> Iterator[None]:
    """One builder at a time per cache (other test runs on this machine share it)."""
    with open(cache_dir() / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@functools.cache
def _podman_or_reason() -> Podman | str:
    binary = shutil.which("podman")
    if binary is None:
        return "podman is not installed (apt-get install podman runc debootstrap)"
    if shutil.which("runc") is None:
        return "runc is not installed (apt-get install runc): podman's crun fails here"
    root = cache_dir() / "podman"
    root.mkdir(exist_ok=True)
    (root / "containers.conf").write_text(CONTAINERS_CONF)
    podman = Podman(binary, root)
    probe = podman.run("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False, timeout=60)
    if probe.returncode != 0:
        return f"podman cannot run here: {probe.stderr.strip()[-500:]}"
    return podman


def podman_or_skip() -> Podman:
    """The suite's podman; a named skip (or a failure under STASH_REQUIRE_PODMAN=1)."""
    found = _podman_or_reason()
    if isinstance(found, Podman):
        return found
    if os.environ.get("STASH_REQUIRE_PODMAN") == "1":
        pytest.fail(f"STASH_REQUIRE_PODMAN=1 but {found}")
    pytest.skip(found)


def base_image(podman: Podman) -> str:
    """``debian:bookworm-slim`` made from Debian's packages; the tarball is cached."""
    with _locked("base"):
        if podman.has_image(BASE_IMAGE):
            return BASE_IMAGE
        tarball = cache_dir() / "debian-bookworm-minbase.tar.gz"
        if not tarball.exists():
            _debootstrap(tarball)
        podman.run("import", str(tarball), BASE_IMAGE)
    return BASE_IMAGE


def _debootstrap(tarball: Path) -> None:
    if shutil.which("debootstrap") is None:
        pytest.fail("debootstrap is not installed (apt-get install debootstrap)")
    tree = tarball.with_suffix(".tree")
    shutil.rmtree(tree, ignore_errors=True)
    subprocess.run(
        ["debootstrap", "--variant=minbase", "bookworm", str(tree), DEBIAN_MIRROR],
        check=True,
        capture_output=True,
        timeout=900,
    )
    for rel in _SLIM:
        for child in (tree / rel).glob("*"):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    partial = tarball.with_suffix(".partial")
    with tarfile.open(partial, "w:gz", compresslevel=1) as tar:
        for child in sorted(tree.iterdir()):
            tar.add(child, arcname=child.name)
    partial.rename(tarball)
    shutil.rmtree(tree)


def build_image(
    podman: Podman, dockerfile: str, tag: str, extra: Sequence[str] = ()
) -> tuple[str, float]:
    """Build ``dockerfile`` of the repository as ``tag``; returns (tag, seconds).

    The build reaches Debian's mirror (``--network=host``); layers are cached in the
    suite's store, so an unchanged Dockerfile and context rebuild in seconds.
    """
    base_image(podman)
    t0 = time.monotonic()
    with _locked("build"):
        podman.run(
            "build",
            "--pull=never",
            "--network=host",
            "--layers",
            "--format=docker",
            "-f",
            str(REPO / dockerfile),
            "-t",
            tag,
            *extra,
            str(REPO),
            timeout=1800,
        )
    return tag, time.monotonic() - t0


@functools.cache
def image_user(podman: Podman, image: str) -> str:
    """The image's USER (``""`` is root)."""
    return podman.run("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip()


def security_flags(
    podman: Podman, image: str, container: dict[str, Any], pod: dict[str, Any] | None = None
) -> list[str]:
    """``podman run`` flags for a container's (and its pod's) ``securityContext``, with
    Kubernetes' meaning: added capabilities are only effective for UID 0 (podman would
    hand them to another user as ambient capabilities, which a kubelet never does)."""
    ctx = {**((pod or {}).get("securityContext") or {}), **(container.get("securityContext") or {})}
    flags: list[str] = []
    uid, gid = ctx.get("runAsUser"), ctx.get("runAsGroup")
    if uid is not None:
        flags.append(f"--user={uid}" + (f":{gid}" if gid is not None else ""))
    elif gid is not None:
        raise ValueError("runAsGroup without runAsUser is not supported by the test harness")
    user = str(uid) if uid is not None else image_user(podman, image)
    is_root = user.split(":")[0] in ("", "0", "root")
    if ctx.get("runAsNonRoot") and is_root:
        raise PermissionError("container has runAsNonRoot and image will run as root")
    for group in [*((pod or {}).get("securityContext") or {}).get("supplementalGroups", [])]:
        flags.append(f"--group-add={group}")
    caps = ctx.get("capabilities") or {}
    flags += [f"--cap-drop={c.lower()}" for c in caps.get("drop") or []]
    if is_root:
        flags += [f"--cap-add={c.lower()}" for c in caps.get("add") or []]
    else:
        flags.append("--cap-drop=all")
    if ctx.get("allowPrivilegeEscalation") is False:
        flags.append("--security-opt=no-new-privileges")
    if ctx.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    if ctx.get("privileged"):
        flags.append("--privileged")
    return flags


def pip_ca_flags() -> list[str]:
    """Build flags lending this machine's CA bundle to pip when the machine trusts CAs
    that Debian does not ship (a TLS-inspecting proxy): bind-mounted for the build's
    RUN steps only, so the image never holds it."""
    local = Path("/usr/local/share/ca-certificates")
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if not bundle.exists() or not any(local.glob("**/*.crt")):
        return []
    return [f"--volume={bundle}:/run/build-ca.crt:ro", "--build-arg=PIP_CERT=/run/build-ca.crt"]


def main() -> int:
    """``make images-local``: both images into the suite's store, with their build times."""
    found = _podman_or_reason()
    if not isinstance(found, Podman):
        print(f"cannot build: {found}")
        return 1
    for dockerfile, tag, extra in (
        ("Dockerfile.agent", AGENT_IMAGE, []),
        ("Dockerfile.airflow", AIRFLOW_IMAGE, pip_ca_flags()),
    ):
        _, seconds = build_image(found, dockerfile, tag, extra)
        print(f"{tag}: built from {dockerfile} in {seconds:.0f} s")
    root = found.root
    print(f"store: podman --root {root / 'storage'} --runroot {root / 'run'} (CONTAINERS_CONF=")
    print(f"{root / 'containers.conf'}) images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
