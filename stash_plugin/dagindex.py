"""The compiled DAG index: every DAG's plan and doc, keyed by the source they came from.

Planning needs the whole source (a new Restic may select the same workload, a second
file may define the same Repository), so one DAG alone cannot be planned from a part
of it. Instead the full parse (the DAG processor's, or ``stash dags index``) writes
every plan here, with the stamp of the source it read (``source.SourceStamp``) and a
key of everything else planning depends on (settings, versions, code). A task start
checks the stamp (a stat of each file, no YAML) and reads its one plan; a stale or
missing index is never used: the caller plans from the source instead.

File layout: ``MAGIC``, the header's length (8 bytes), the header (a pickle: key,
stamp, errors, and each DAG's offset and length after the header), then one pickle
per DAG. Written to
a temporary file and renamed, so a reader sees the old index or the new one. The file
lives in ``[stash] state_dir``, which only Airflow writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pickle
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .api.errors import ResourceError
from .source import SourceStamp, source_unchanged

INDEX_FILE = "dag-index.pickle"
LOCK_FILE = "dag-index.lock"
SOURCE_CACHE_FILE = "source-cache.pickle"
MAGIC = b"STASH-DAG-INDEX-1\n"
LOCK_WAIT_S = 120.0  # a full build of 10,000 targets takes about 15-25 s on 2 cores
_PACKAGE = Path(__file__).resolve().parent


def shard_of(dag_id: str, shards: int) -> int:
    """The shard file that builds ``dag_id``: stable across processes and Python
    versions (CRC-32, never the salted ``hash()``)."""
    return zlib.crc32(dag_id.encode()) % shards


@dataclass(frozen=True)
class Entry:
    """One DAG as planned: its kind (backup, recovery, maintenance), the object that
    owns it (named when Airflow refuses the DAG), its plan and its doc."""

    dag: str
    kind: str
    namespace: str
    name: str
    plan: Any
    doc: str


@dataclass
class Index:
    key: str
    source: SourceStamp
    errors: list[ResourceError]
    offsets: dict[str, tuple[int, int]]
    path: Path | None = None
    base: int = 0
    """Where the first DAG's pickle starts (offsets count from there)."""
    warnings: list[ResourceError] = field(default_factory=list)
    """Deprecations met while planning (logged, not errors)."""
    loaded: dict[str, Entry] = field(default_factory=dict)
    """Entries held in memory (by the process that built the index)."""

    @property
    def version(self) -> str:
        """Names exactly this content (for records derived from it)."""
        return f"{self.key}:{self.source.digest}"

    @property
    def dag_ids(self) -> list[str]:
        return sorted(self.offsets or self.loaded)

    def entries(self, dag_ids: Iterable[str]) -> Iterator[tuple[str, Entry]]:
        """The entries of ``dag_ids`` that exist, read in file order."""
        if self.loaded or self.path is None:
            yield from ((i, self.loaded[i]) for i in dag_ids if i in self.loaded)
            return
        wanted = sorted((self.offsets[i], i) for i in dag_ids if i in self.offsets)
        with self.path.open("rb") as fh:
            for (offset, length), dag_id in wanted:
                fh.seek(self.base + offset)
                yield dag_id, pickle.loads(fh.read(length))  # noqa: S301 - our own file

    def entry(self, dag_id: str) -> Entry | None:
        return next((e for _, e in self.entries([dag_id])), None)


def code_stamp() -> str:
    """The stat of this package's modules: a plan pickled by other code is not read
    (about 1 ms)."""
    digest = hashlib.blake2b(digest_size=16)
    for folder, names in sorted(_code_files().items()):
        for name in names:
            st = os.stat(os.path.join(folder, name))
            digest.update(f"{folder}/{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _code_files() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for folder, dirs, files in os.walk(_PACKAGE):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")) and d != "web")
        found[folder] = sorted(f for f in files if f.endswith(".py"))
    return found


def read(state_dir: Path, key: str) -> Index | None:
    """The index in ``state_dir`` if it was made with ``key`` (its source unchecked)."""
    path = state_dir / INDEX_FILE
    try:
        header, base = _header(path)
        if header["key"] != key:
            return None
        return Index(
            key,
            header["source"],
            header["errors"],
            header["offsets"],
            path,
            base,
            header["warnings"],
        )
    except Exception:  # noqa: BLE001 - missing, torn, another format: not an index
        return None


def build_seconds(state_dir: Path) -> float | None:
    """How long the last build of the index in ``state_dir`` took, whatever its key
    (what the next build of about the same source will take), or None if unknown.
    (The header as ``read`` reads it, without its key check.)"""
    try:
        return float(_header(state_dir / INDEX_FILE)[0]["took"])
    except Exception:  # noqa: BLE001 - missing, torn, older format: unknown
        return None


def _header(path: Path) -> tuple[dict[str, Any], int]:
    """The index file's header and where the first DAG's pickle starts. Raises on a
    missing, torn or foreign file (the callers treat all of those as no index)."""
    with path.open("rb") as fh:
        if fh.read(len(MAGIC)) != MAGIC:
            raise ValueError(f"{path}: not a DAG index")
        size = int.from_bytes(fh.read(8), "big")
        header = pickle.loads(fh.read(size))  # noqa: S301 - our own file
    return header, len(MAGIC) + 8 + size


def fresh(state_dir: Path, key: str, source: Path) -> Index | None:
    """The index if it was made with ``key`` from ``source`` exactly as it is now."""
    index = read(state_dir, key)
    if index is None or not source_unchanged(source, index.source):
        return None
    return index


def write(
    state_dir: Path,
    key: str,
    source: SourceStamp,
    errors: list[ResourceError],
    entries: dict[str, Entry],
    warnings: list[ResourceError],
    took: float = 0.0,
) -> Index:
    """Record the index (atomically); an index that cannot be written is still
    returned, held in memory. ``took``: the seconds the build took (see
    ``build_seconds``)."""
    blobs = {i: pickle.dumps(e, protocol=pickle.HIGHEST_PROTOCOL) for i, e in entries.items()}
    offsets: dict[str, tuple[int, int]] = {}
    position = 0
    for dag_id, blob in blobs.items():
        offsets[dag_id] = (position, len(blob))
        position += len(blob)
    header = {
        "key": key,
        "source": source,
        "errors": errors,
        "warnings": warnings,
        "offsets": offsets,
        "took": took,
    }
    raw = pickle.dumps(header, protocol=pickle.HIGHEST_PROTOCOL)
    path = state_dir / INDEX_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as fh:
            fh.write(MAGIC + len(raw).to_bytes(8, "big") + raw)
            for blob in blobs.values():
                fh.write(blob)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        return Index(key, source, errors, {}, None, 0, warnings, dict(entries))
    # The process that built the index keeps the entries it has (its own shard's DAGs).
    base = len(MAGIC) + 8 + len(raw)
    return Index(key, source, errors, offsets, path, base, warnings, dict(entries))


@contextlib.contextmanager
def building(state_dir: Path) -> Iterator[None]:
    """Held while one process builds the index, so that the DAG processor's other
    parsing processes wait for it and read it instead of planning everything again.
    Gives up waiting after LOCK_WAIT_S (then both build: slower, still right)."""
    try:
        fd = _lock_file(state_dir)
    except OSError:
        yield
        return
    try:
        _flock_within(fd, fcntl.LOCK_EX, LOCK_WAIT_S)
        yield
    finally:
        os.close(fd)  # releases the lock


def _lock_file(state_dir: Path) -> int:
    """A descriptor of the build lock's file (made if missing)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    return os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _flock_within(fd: int, operation: int, seconds: float) -> bool:
    """Take the ``flock`` ``operation`` on ``fd``, trying every 50 ms for up to
    ``seconds`` (once with 0); True if taken."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(0.05, left))


def claim(state_dir: Path) -> int | None:
    """The build lock taken without waiting: its descriptor (the lock lasts while any
    copy of it is open, so a child process given it holds the lock after this process
    closes its own), or None when a build holds it. OSError: no lock can be made."""
    fd = _lock_file(state_dir)
    if not _flock_within(fd, fcntl.LOCK_EX, 0.0):
        os.close(fd)
        return None
    return fd


def wait_built(state_dir: Path, seconds: float) -> bool:
    """Wait up to ``seconds`` until no build holds the lock; True if none does now."""
    try:
        fd = _lock_file(state_dir)
    except OSError:
        return False
    try:
        return _flock_within(fd, fcntl.LOCK_SH, seconds)
    finally:
        os.close(fd)


def source_smaller_than(source: Path, limit: int) -> bool:
    """Whether the files of ``source`` (a folder or one file) hold fewer than ``limit``
    bytes; stops counting at ``limit``."""
    total = 0
    try:
        if not source.is_dir():
            return source.stat().st_size < limit
        for folder, _, files in os.walk(source):
            for name in files:
                total += os.stat(os.path.join(folder, name)).st_size
                if total >= limit:
                    return False
    except OSError:
        return True  # unreadable: the build reports it, quickly
    return True
