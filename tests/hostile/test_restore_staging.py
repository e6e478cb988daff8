"""Where a restore is staged and how it reaches the target, without restic: the
staging folder never lives inside the target, a stale one is removed only when no
agent holds it, and a move across filesystems keeps everything a restore must."""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from stashtest import make_tree, tree_state

from stash_plugin import agent


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    """A mount root, as a pod's volume is."""
    mount = tmp_path / "volume"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_staging_is_beside_the_target_on_its_filesystem(tmp_path: Path) -> None:
    target = tmp_path / "restored"
    target.mkdir()
    with agent.staging_folder(target) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".stash-restore-")
    assert not staging.exists()


def test_a_mount_root_is_staged_elsewhere_and_copied_in_whole(tmp_path: Path, volume: Path) -> None:
    source = make_tree(tmp_path / "tree", seed=9, small_files=50)
    with agent.staging_folder(volume) as staging:
        assert staging.parent == Path(tempfile.gettempdir())
        assert os.stat(staging).st_dev != os.stat(volume).st_dev
        restored = staging / "data"
        subprocess.run(["cp", "-a", str(source), str(restored)], check=True)
        (volume / "existing.txt").write_text("stays\n")
        agent._move_into(restored, volume)  # rename(2) cannot: EXDEV, so it copies
    assert (volume / "existing.txt").read_text() == "stays\n"
    (volume / "existing.txt").unlink()
    assert tree_state(volume) == tree_state(source)


def test_a_stale_staging_folder_is_removed_and_a_live_one_kept(tmp_path: Path) -> None:
    target = tmp_path / "restored"
    key = hashlib.sha256(str(target).encode()).hexdigest()[:12]
    stale = tmp_path / f".stash-restore-{key}-killed"
    (stale / "half").mkdir(parents=True)
    live = tmp_path / f".stash-restore-{key}-running"
    live.mkdir()
    other = tmp_path / ".stash-restore-0123456789ab-other-target"
    other.mkdir()
    fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another agent restoring into the same target
    try:
        with agent.staging_folder(target):
            pass
    finally:
        os.close(fd)
    assert not stale.exists()
    assert live.exists() and other.exists()
