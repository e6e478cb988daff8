"""The directory source: every YAML/JSON manifest under a folder.

This is how Stash runs with no cluster (the embedded default), and how tasks read
Secrets at run time: ``load_directory`` is the one way in. Files are read in a stable
order; a file that cannot be read or parsed is named and skipped, and never hides the
objects of other files.

Every file is hostile (a tenant may write into the folder), so reading is bounded:
only regular files inside the folder are opened (a FIFO is never opened, a link out
of the folder is never followed), a file's size and its number of objects are capped,
and the YAML loader refuses what can make a small file expensive or ambiguous
(aliases beyond a small expansion, merge keys, duplicate keys, non-JSON tags,
huge integers).
"""

from __future__ import annotations

import hashlib
import io
import json
import marshal
import os
import pickle
import stat
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode

from .api.errors import ResourceError

if TYPE_CHECKING:
    # The pydantic models are imported where a file is parsed, not here: the freshness
    # check of the DAG index (``source_unchanged``) runs before a worker's one DAG is
    # built and needs none of them (their classes are most of the import cost).
    from .api.parse import Parsed
    from .api.resourceset import ResourceSet

SUFFIXES = (".yaml", ".yml", ".json")

# Bounds per file (README, "Settings"). A YAML node costs about 250 bytes and 6 us to
# compose and construct, up to one node per 2 bytes of input: 1 MiB of YAML is at most
# about 250 MiB and 3 s. JSON decodes 100 times faster into less memory, and the file
# ``stash sync`` writes is JSON, so it may be larger.
MAX_YAML_BYTES = 1 << 20
MAX_JSON_BYTES = 128 << 20
MAX_OBJECTS = 20_000  # YAML: documents plus ``kind: List`` items, per file
#: JSON: ``stash sync``'s snapshot holds the whole cluster's objects in one file (about
#: 375 bytes each, compact): 10,000 workloads and 10,000 Restics are over 20,000.
MAX_JSON_OBJECTS = 250_000
MAX_ALIAS_NODES = 10_000  # values aliases add to a document (PyYAML's dumps use them)
MAX_INT_CHARS = 64  # far above int64; Python's int() of a long YAML 1.1 1:2:3... is quadratic

_MERGE = "tag:yaml.org,2002:merge"
_VALUE = "tag:yaml.org,2002:value"
_STR = "tag:yaml.org,2002:str"
# JSON's types plus timestamps, which plain YAML 1.1 dates resolve to (as before).
_REFUSED_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("binary", "omap", "pairs", "set")}


class ManifestLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """SafeLoader (libyaml's parser where available) that refuses what makes a few
    kilobytes expensive or ambiguous: aliases (``*a``) that expand to more than
    MAX_ALIAS_NODES values (a billion laughs is nine lines) or into themselves, a
    merge key (its expansion happens before any count could stop it), a duplicate key
    (which one would win is a guess), a tag outside JSON's types, an integer longer
    than MAX_INT_CHARS. A value Python cannot build (an impossible date) becomes a
    ConstructorError with its line, never a bare exception. Nesting is bounded by
    libyaml (1,000 levels) and by RecursionError, which the caller catches.
    """

    yaml_constructors = {
        tag: constructor
        for tag, constructor in SafeConstructor.yaml_constructors.items()
        if tag not in _REFUSED_TAGS
    }

    def construct_document(self, node: Node) -> Any:
        self._sizes: dict[int, int] = {}
        self._aliased = 0
        return super().construct_document(node)

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        if node in self.constructed_objects:  # only an alias reaches a node twice
            self._count_alias(node)
            return self.constructed_objects[node]
        try:
            return super().construct_object(node, deep)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception as exc:  # an impossible date, !!int nope, !!bool maybe...
            raise ConstructorError(None, None, _value_error(node, exc), node.start_mark) from None

    def _count_alias(self, node: Node) -> None:
        """An alias is a copy for whoever walks the result (validation, a DAG's
        params...): what all of them add up to is capped."""
        self._aliased += _expanded_size(node, self._sizes)
        if self._aliased > MAX_ALIAS_NODES:
            raise ConstructorError(
                None,
                None,
                f"aliases (*name) expand to more than {MAX_ALIAS_NODES} values",
                node.start_mark,
            )

    def construct_yaml_int(self, node: ScalarNode) -> int:
        if len(node.value) > MAX_INT_CHARS:
            raise ConstructorError(
                None,
                None,
                f"an integer of {len(node.value)} characters (at most {MAX_INT_CHARS})",
                node.start_mark,
            )
        return int(super().construct_yaml_int(node))

    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, MappingNode):
            raise ConstructorError(
                None, None, f"expected a mapping, found a {type(node).__name__}", node.start_mark
            )
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                raise ConstructorError(
                    None, None, "merge keys (<<) are not accepted", key_node.start_mark
                )
            if key_node.tag == _VALUE:  # what SafeConstructor.flatten_mapping does
                key_node.tag = _STR
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in mapping
            except TypeError:
                raise ConstructorError(
                    None, None, "a key that is a list or a mapping", key_node.start_mark
                ) from None
            if duplicate:
                raise ConstructorError(None, None, _duplicate(node, key), key_node.start_mark)
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping

    def construct_undefined(self, node: Node) -> Any:
        tag = node.tag.replace("tag:yaml.org,2002:", "!!")
        raise ConstructorError(None, None, f"tag {tag} is not accepted", node.start_mark)


ManifestLoader.add_constructor("tag:yaml.org,2002:int", ManifestLoader.construct_yaml_int)
ManifestLoader.add_constructor(None, ManifestLoader.construct_undefined)


def _expanded_size(root: Node, sizes: dict[int, int]) -> int:
    """Values under ``root`` with every alias written out (memoised per document in
    ``sizes``); an alias inside its own anchor has no size and is refused."""
    stack: list[tuple[Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if done:
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            continue
        if id(node) in open_nodes:
            raise ConstructorError(None, None, "an alias inside its own anchor", node.start_mark)
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return [] if isinstance(node, ScalarNode) else list(node.value)


def _short(key: Any) -> str:
    text = repr(key)
    return text if len(text) <= 60 else text[:57] + "..."


def _duplicate(node: MappingNode, key: Any) -> str:
    first = next((k for k, _ in node.value if k.value == str(key)), None)
    where = f" (first at line {first.start_mark.line + 1})" if first is not None else ""
    return f"duplicate key {_short(key)}{where}"


def _value_error(node: Node, exc: Exception) -> str:
    """The reason, without the value itself: it may be a Secret's."""
    reason = str(exc)
    if isinstance(node.value, str) and node.value:
        reason = reason.replace(node.value, "...")
    tag = node.tag.removeprefix("tag:yaml.org,2002:")
    return f"invalid {tag} value ({type(exc).__name__}: {reason[:200]})"


def _yaml_error(exc: yaml.YAMLError) -> str:
    """The problem and its line, never a snippet of the file (it may hold a Secret)."""
    if not isinstance(exc, yaml.MarkedYAMLError):  # a ReaderError: a character
        return " ".join(str(exc).replace('in "<unicode string>",', "at").split())
    parts = [p for p in (exc.context, exc.problem) if p]
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return "; ".join(parts) + where


# What each file parsed to, keyed by its content: a DagBag parse runs the factory once
# per DAG file (the shard files, stash_errors.py) and a process may parse many times, and
# decoding YAML plus validating is most of the cost. An entry is used only for the same
# bytes at the same path, so an edited file (whatever its mtime) is always read afresh.
# The parsed models are immutable; each call still builds its own ResourceSet.
if TYPE_CHECKING:
    _Parsed = tuple[tuple[str, Parsed | list[ResourceError]], ...] | ResourceError
_CACHE: OrderedDict[str, dict[str, tuple[bytes, _Parsed]]] = OrderedDict()
_CACHE_ROOTS = 16


class _DuplicateKey(ValueError):
    pass


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise _DuplicateKey(f"duplicate key {_short(key)}")
    return obj


def _json_int(text: str) -> int:
    if len(text) > MAX_INT_CHARS:
        raise ValueError(f"an integer of {len(text)} characters (at most {MAX_INT_CHARS})")
    return int(text)


class _TooMany(ValueError):
    pass


def _documents(path: Path, text: str) -> Iterator[Any]:
    if path.suffix == ".json":
        yield json.loads(text, object_pairs_hook=_json_object, parse_int=_json_int)
        return
    for count, doc in enumerate(yaml.load_all(text, Loader=ManifestLoader), 1):  # noqa: S506
        if count > MAX_OBJECTS:
            raise _TooMany(f"more than {MAX_OBJECTS} documents; split the file")
        yield doc


def _expand(doc: Any) -> Iterator[Any]:
    """``kind: List`` (what ``kubectl get -o yaml`` writes) holds its objects in items."""
    if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
        yield from doc["items"]
    else:
        yield doc


def _decode(path: Path, text: str) -> list[Any]:
    """The file's objects (``kind: List`` expanded), at most MAX_OBJECTS of them (of a
    JSON file, MAX_JSON_OBJECTS)."""
    limit = MAX_JSON_OBJECTS if path.suffix == ".json" else MAX_OBJECTS
    objects: list[Any] = []
    for doc in _documents(path, text):
        if doc is not None:
            objects.extend(_expand(doc))
        if len(objects) > limit:
            raise _TooMany(f"more than {limit} objects; split the file")
    return objects


def _parse_file(path: Path, rel: str, data: bytes) -> _Parsed:
    """Every object of one file with its origin (``file.yaml#2``), or the file's error."""
    from .api.parse import parse_document

    fmt = path.suffix[1:].upper()

    def file_error(message: str) -> ResourceError:
        return ResourceError("file", None, rel, None, message)

    try:
        text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8").read()
        objects = _decode(path, text)
    except yaml.YAMLError as exc:
        return file_error(f"malformed YAML: {_yaml_error(exc)}")
    except RecursionError:
        return file_error(f"malformed {fmt}: nested too deep")
    except _TooMany as exc:
        return file_error(str(exc))
    except (ValueError, UnicodeDecodeError) as exc:  # JSON's errors, a bad UTF-8 byte
        return file_error(f"malformed {fmt}: {exc}")
    parsed: list[tuple[str, Parsed | list[ResourceError]]] = []
    for index, obj in enumerate(objects, 1):
        origin = f"{rel}#{index}" if len(objects) > 1 else rel
        try:
            result = parse_document(obj, origin)
        except RecursionError:
            result = [ResourceError("document", None, None, None, "nested too deep", origin)]
        if result is not None:
            parsed.append((origin, result))
    return tuple(parsed)


# --------------------------------------------------------------------------- files


class _Unreadable(Exception):
    """Why a file is not read; the message completes ``file <path>: ...``."""


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _kind_of(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _check_target(path: Path, folder: str | None) -> tuple[os.stat_result, str]:
    """stat() of what ``path`` names, refusing a link that leaves ``folder`` before
    anything out there is even looked at; and where a link points ("" for a file)."""
    real = ""
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            real = os.path.realpath(path)
            if folder is not None and not _inside(real, folder):
                raise _Unreadable("is a symbolic link to outside the manifests folder; not read")
            st = os.stat(path)
    except FileNotFoundError:
        raise _Unreadable("is a broken symbolic link") from None
    except OSError as exc:
        raise _Unreadable(f"cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise _Unreadable(f"is {_kind_of(st.st_mode)}, not a regular file; not read")
    return st, real


def _opened_path(fd: int, path: Path) -> str:
    """Where the open file really is (a link swapped after the check shows here)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(path)


def _read_fd(fd: int, most: int) -> bytes:
    chunks = []
    while most > 0 and (chunk := os.read(fd, min(most, 1 << 20))):
        chunks.append(chunk)
        most -= len(chunk)
    return b"".join(chunks)


def read_manifest(path: Path, folder: str | None) -> bytes:
    """The bytes of one regular file inside ``folder`` (its real path; None when the
    source is that one file), at most the size limit of its format."""
    limit = MAX_JSON_BYTES if path.suffix == ".json" else MAX_YAML_BYTES
    too_big = f"is larger than {limit >> 20} MiB (the limit for {path.suffix} files); split it"
    if _check_target(path, folder)[0].st_size > limit:
        raise _Unreadable(too_big)
    try:
        # O_NONBLOCK: a FIFO swapped in after the check opens at once and fails below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise _Unreadable(f"cannot be read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Unreadable(f"is {_kind_of(st.st_mode)}, not a regular file; not read")
        if folder is not None and not _inside(_opened_path(fd, path), folder):
            raise _Unreadable("is a symbolic link to outside the manifests folder; not read")
        data = _read_fd(fd, limit + 1)
    except OSError as exc:
        raise _Unreadable(f"cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise _Unreadable(too_big)
    return data


def _refuse_invalid_twins(resources: ResourceSet) -> None:
    """An object that an invalid document also defines is refused too.

    Two valid definitions of one object are both refused (ResourceSet); the same goes
    when one of them has errors: the broken one is often the newer edit, and backing
    up with the other would be a guess.
    """
    cluster_scoped = ("BackupAgent", "Node")
    invalid: dict[tuple[str, str | None, str], ResourceError] = {}
    for err in resources.errors:
        if err.name is not None:
            ns = None if err.kind in cluster_scoped else err.namespace
            invalid.setdefault((err.kind, ns, err.name), err)
    if not invalid:
        return
    tables: list[tuple[dict[Any, Any], Any]] = [
        (resources.repositories, lambda k: ("Repository", *k)),
        (resources.restics, lambda k: ("Restic", *k)),
        (resources.recoveries, lambda k: ("Recovery", *k)),
        (resources.secrets, lambda k: ("Secret", *k)),
        (resources.workloads, lambda k: k),
        (resources.agents, lambda k: ("BackupAgent", None, k)),
        (resources.nodes, lambda k: ("Node", None, k)),
    ]
    for table, ident_of in tables:
        for key in [k for k in table if ident_of(k) in invalid]:
            kind, ns, name = ident_of(key)
            bad = invalid[(kind, ns, name)]
            origin = resources.origin_of(kind, ns, name)
            del table[key]
            resources.errors.append(
                ResourceError(
                    kind,
                    ns,
                    name,
                    "metadata.name",
                    f"defined twice ({origin} and {bad.origin}, which has errors); neither is used",
                    origin,
                )
            )


def load_directory(root: str | Path) -> ResourceSet:
    """Read every manifest under ``root`` into a ResourceSet (objects plus named errors).

    The one loader of manifests: DAG parsing, ``stash validate`` and tasks reading
    Secrets at run time all come through here.
    """
    return load_stamped(root)[0]


# --------------------------------------------------------------------------- stamps
#
# What the source looked like when it was read, cheap to check again without reading
# it: each candidate file's stat (size, mtime, ctime, inode, device; for a link also
# where it points), the folders that could not be listed, and the list of names. Any
# write changes ctime (which no user can set back), a new or removed file changes the
# list. A file written within RACY_NS of the moment it was stat'ed could be written
# again within the same timestamp tick with the same size: for such a "racy" file the
# digest of the bytes actually parsed is kept and checked (as git does for its index).

RACY_NS = 2_000_000_000  # above the timestamp granularity of common filesystems (1 s)
Stamp = tuple[Any, ...]


@dataclass(frozen=True)
class SourceStamp:
    """A source as it was read: ``digest`` of every file's stat and name, plus the
    content digest of each racy file."""

    digest: str
    racy: tuple[tuple[str, bytes], ...]


def _stamp(path: Path, folder: str | None) -> Stamp:
    """A file's stat as it would be read (a link: its target's, and where it points),
    or why it would not be read."""
    try:
        st, real = _check_target(path, folder)
    except _Unreadable as exc:
        try:
            lst = os.lstat(path)
            return ("!", str(exc), lst.st_mtime_ns, lst.st_ctime_ns, lst.st_ino)
        except OSError:
            return ("!", str(exc))
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, real)


def _is_racy(stamp: Stamp, taken_ns: int) -> bool:
    return stamp[0] != "!" and max(stamp[1], stamp[2]) >= taken_ns - RACY_NS


Listing = list[tuple[str, Stamp]]
_NAME = itemgetter(0)
_LIST_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def _scan(root: Path) -> tuple[Listing, list[ResourceError], int]:
    """Every candidate file as (path relative to ``root``, stamp), the folders that
    could not be listed, and when the scan started.

    The order is stable: a folder's files by name, then its sub-folders by name
    (dot-folders and links to folders are not entered; a sub-folder swapped for a
    link after it was listed fails to open, O_NOFOLLOW). A task start runs this over
    every manifest (the index's freshness check), so a plain file costs one
    ``fstatat`` on the open folder and no call of ours; only a link or an odd file
    goes through ``_stamp``.
    """
    taken_ns = time.time_ns()
    if not root.is_dir():
        if not root.exists():
            error = ResourceError("manifests", None, str(root), None, "folder does not exist")
            return [], [error], taken_ns
        return [(root.name, _stamp(root, None))], [], taken_ns
    top_root = str(root)
    folder = os.path.realpath(root)
    listing: Listing = []
    errors: list[ResourceError] = []
    pending = [""]  # folders to list, relative to root ("sub/"); the root may be a link
    while pending:
        rel = pending.pop()
        top = os.path.join(top_root, rel)
        folders: list[str] = []
        files: Listing = []
        try:
            fd = os.open(top, _LIST_FLAGS | (os.O_NOFOLLOW if rel else 0))
            try:
                with os.scandir(fd) as found:
                    for entry in found:
                        name = entry.name
                        # The common case first: a manifest that is a plain file (one
                        # fstatat, the entry's type says it is no link).
                        if name.endswith(SUFFIXES) and not entry.is_symlink():
                            try:
                                st = entry.stat(follow_symlinks=False)
                            except OSError:
                                st = None
                            if st is not None and stat.S_ISREG(st.st_mode):
                                stamp = (
                                    st.st_size,
                                    st.st_mtime_ns,
                                    st.st_ctime_ns,
                                    st.st_ino,
                                    st.st_dev,
                                    "",
                                )
                                files.append((rel + name, stamp))
                                continue
                        try:
                            is_dir = entry.is_dir()  # a link to a folder counts as one
                        except OSError:
                            is_dir = False
                        if is_dir:
                            if not name.startswith(".") and not entry.is_symlink():
                                folders.append(f"{rel}{name}{os.sep}")
                        elif name.endswith(SUFFIXES):
                            files.append((rel + name, _stamp(Path(top, name), folder)))
            finally:
                os.close(fd)
        except OSError as exc:
            where = rel.rstrip(os.sep) or "."
            errors.append(
                ResourceError("folder", None, where, None, f"cannot be listed: {exc.strerror}")
            )
            continue
        files.sort(key=_NAME)
        listing += files
        pending.extend(sorted(folders, reverse=True))
    return listing, errors, taken_ns


def _path_of(root: Path, rel: str, folder: str | None) -> Path:
    """The file ``rel`` names in the source ``root``: a folder (``folder``, its real
    path), or that one file (``folder`` None)."""
    return root if folder is None else root / rel


def _digest(root: Path, listing: Listing, errors: list[ResourceError]) -> str:
    """Names and stamps in one string of bytes, taken straight after ``_scan`` (both
    callers do): marshal writes an object that something else also references as a
    back-reference, so the listing must not be shared yet when it is digested. (Format
    2 has no back-references but encodes each name through a temporary: 2-4 times
    slower for 10,000 files.)"""
    data = marshal.dumps((str(root), [str(e) for e in errors], listing))
    return hashlib.blake2b(data, digest_size=20).hexdigest()


def _content_digest(data: bytes) -> bytes:
    """What a file held: the parse caches' key and a racy file's check. SHA-256, which
    CPUs compute in hardware: twice as fast as BLAKE2b here, and a racy snapshot file
    (written just before ``stash index`` ran) is hashed again at every task start."""
    return hashlib.sha256(data).digest()


def source_unchanged(root: str | Path, recorded: SourceStamp) -> bool:
    """Whether ``root`` still holds exactly what was read when ``recorded`` was taken.

    A stat of every file (about 3 us each) and a read of the racy ones only; False as
    soon as anything differs, so a stale record is never taken for a fresh one.
    """
    root = Path(root)
    listing, errors, _ = _scan(root)
    if _digest(root, listing, errors) != recorded.digest:
        return False
    return _racy_bytes_hold(root, recorded)


def _racy_bytes_hold(root: Path, recorded: SourceStamp) -> bool:
    """Whether each racy file of ``recorded`` still holds the bytes that were read."""
    if not recorded.racy:
        return True
    folder = os.path.realpath(root) if root.is_dir() else None
    for rel, want in recorded.racy:
        try:
            data = read_manifest(_path_of(root, rel, folder), folder)
        except _Unreadable:
            return False
        if _content_digest(data) != want:
            return False
    return True


def settled(root: str | Path, recorded: SourceStamp) -> SourceStamp:
    """``recorded`` without its racy files once none of them is racy any more and the
    source still holds what was read, else ``recorded`` as it is (never waits).

    A racy file (``stash sync``'s snapshot, written right before ``stash index`` read it)
    is read and hashed again by every later check: 9.3 MB at 10,000 targets, at every
    task start. Once a scan finds every file older than ``RACY_NS`` with the same
    stats as when it was read, and the racy files' bytes are still those read, a write
    after now changes a stat (ctime, which no user can set back), so the stats alone
    tell from then on.
    """
    if not recorded.racy:
        return recorded
    root = Path(root)
    listing, errors, taken_ns = _scan(root)
    if _digest(root, listing, errors) != recorded.digest:
        return recorded
    if any(_is_racy(stamp, taken_ns) for _, stamp in listing):
        return recorded
    if not _racy_bytes_hold(root, recorded):  # the bytes too, after that scan
        return recorded
    return SourceStamp(recorded.digest, ())


# What each file parsed to, kept on disk between processes (``cache``): a file whose
# stamp is unchanged (and not racy) is not read again. The parsed models are plain
# data; the cache file lives in ``[stash] state_dir``, which only Airflow writes. A file
# that holds a Secret is left out (read each time): its values stay in the manifests.
if TYPE_CHECKING:
    _DiskCache = dict[str, tuple[Stamp, bytes, _Parsed]]
CACHE_FORMAT = 2  # 2: content digests are SHA-256


def _holds_secret(parsed: _Parsed) -> bool:
    from .api.kubeobjects import Secret

    return not isinstance(parsed, ResourceError) and any(
        isinstance(result, Secret) for _, result in parsed
    )


def _read_disk_cache(cache: Path | None, root: Path) -> _DiskCache:
    if cache is None:
        return {}
    try:
        with cache.open("rb") as fh:
            record = pickle.load(fh)  # noqa: S301 - written by this module in state_dir
        if record["format"] == CACHE_FORMAT and record["root"] == str(root):
            return dict(record["files"])
    except Exception:  # noqa: BLE001 - missing, torn or of another code version: read afresh
        pass
    return {}


def _write_disk_cache(cache: Path, root: Path, files: _DiskCache) -> None:
    """Best effort, atomic: a reader sees the old cache or the new one."""
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as fh:
            pickle.dump(
                {"format": CACHE_FORMAT, "root": str(root), "files": files},
                fh,
                protocol=pickle.HIGHEST_PROTOCOL,
            )
        os.replace(tmp, cache)
    except OSError:
        tmp.unlink(missing_ok=True)


def load_stamped(root: str | Path, cache: Path | None = None) -> tuple[ResourceSet, SourceStamp]:
    """``load_directory`` plus the stamp of what was read; with ``cache`` (a file), the
    files whose stamp did not change since the last call are not read again."""
    from .api.resourceset import ResourceSet

    root = Path(root)
    resources = ResourceSet()
    listing, listing_errors, taken_ns = _scan(root)
    digest_of_scan = _digest(root, listing, listing_errors)
    resources.errors.extend(listing_errors)
    # The folder as configured may be a link (trusted: the operator set it); what is
    # inside must stay inside its real path. A single-file source is that file.
    folder = os.path.realpath(root) if root.is_dir() else None
    on_disk = _read_disk_cache(cache, root)
    cached = _CACHE.pop(str(root), {})
    seen: dict[str, tuple[bytes, _Parsed]] = {}
    kept: _DiskCache = {}
    changed = False
    racy: list[tuple[str, bytes]] = []
    for rel, stamp in listing:
        path = _path_of(root, rel, folder)
        if stamp[0] == "!":
            resources.errors.append(ResourceError("file", None, rel, None, stamp[1]))
            continue
        is_racy = _is_racy(stamp, taken_ns)
        old = on_disk.get(rel)
        if old is not None and old[0] == stamp and not is_racy:
            digest, parsed = old[1], old[2]
        else:
            changed = True
            try:
                data = read_manifest(path, folder)
            except _Unreadable as exc:
                resources.errors.append(ResourceError("file", None, rel, None, str(exc)))
                continue
            digest = _content_digest(data)
            entry = cached.get(rel)
            parsed = entry[1] if entry and entry[0] == digest else _parse_file(path, rel, data)
            if is_racy:
                racy.append((rel, digest))
        seen[rel] = (digest, parsed)
        if not _holds_secret(parsed):  # a Secret's values are never copied to disk
            kept[rel] = (stamp, digest, parsed)
        if isinstance(parsed, ResourceError):
            resources.errors.append(parsed)
            continue
        for origin, result in parsed:
            if isinstance(result, list):
                resources.errors.extend(result)
            else:
                resources.add(result, origin)
    _refuse_invalid_twins(resources)
    resources.resolve_stash08_recoveries()
    _CACHE[str(root)] = seen
    while len(_CACHE) > _CACHE_ROOTS:
        _CACHE.popitem(last=False)
    if cache is not None and (changed or kept.keys() != on_disk.keys()):
        _write_disk_cache(cache, root, kept)
    return resources, SourceStamp(digest_of_scan, tuple(racy))
