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


def test_restore_if_empty_moves_only_into_an_empty_target(tmp_path: Path) -> None:
    """The last check of ``restore --if-empty``: data that appeared in the target while
    the snapshot was read is never replaced, and nothing is moved into it."""
    restored = make_tree(tmp_path / "staged", seed=5, small_files=20)
    staged = tree_state(restored)
    full = tmp_path / "full"
    full.mkdir()
    (full / "app.db").write_text("written while the snapshot was read\n")
    assert agent._move_if_empty(restored, full) is False
    assert [p.name for p in full.iterdir()] == ["app.db"] and tree_state(restored) == staged
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    assert agent._move_if_empty(restored, link) is False and not (tmp_path / "elsewhere").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert agent._move_if_empty(restored, empty) is True
    assert tree_state(empty) == staged and not restored.exists()


def test_a_fresh_volume_with_only_lost_and_found_counts_as_empty(
    tmp_path: Path, volume: Path
) -> None:
    """mkfs.ext4 leaves an empty lost+found at the root of every fresh volume."""
    (volume / "lost+found").mkdir()
    assert agent._is_empty_volume(volume)
    restored = make_tree(tmp_path / "staged", seed=6, small_files=20)
    staged = tree_state(restored)
    assert agent._move_if_empty(restored, volume) is True
    assert tree_state(volume) == {**staged, "lost+found": ("dir", 0o755)}
    (volume / "lost+found" / "#1234").write_text("recovered by fsck\n")
    assert not agent._is_empty_volume(volume)
