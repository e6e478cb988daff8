"""The checkout is self-contained: no file names a path outside it.

A clean clone on a machine that has nothing but the clone must work (``make test``
included), so no test, benchmark, message or document may point at another folder of
the developer's machine. The scanner flags, in every file of the checkout (tracked or
new, not ignored):

- absolute paths under the top-level folders that hold other projects and home
  directories on a developer machine (``OUTSIDE_TOPS`` below), and paths under
  the checkout's own location (its parent folder, or the checkout itself when it
  sits directly in a system folder such as ``/tmp``);
- relative paths whose leading ``../`` climb above the checkout from the file's own
  folder (in Markdown, link targets);
- symbolic links to an absolute path or to a place above the checkout.

System paths (``/usr/bin/env``, ``/dev/termination-log``, ``/tmp``, ``/etc``,
``/proc``, ``/var``) and the node paths of manifests (hostPath ``/data/...``,
``/srv/...``) name no developer's folder and are fine. A line that must hold such a
path on purpose, for instance a hostile ``..`` value in a test, says so with the
marker ``outside-path: ok`` and a reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Top-level folders that hold other projects or users' homes on a developer machine.
OUTSIDE_TOPS = ("work", "home", "Users", "root")
# Shared system folders: a checkout directly inside one (``/tmp/repo``) must not make all
# of it off limits, only the checkout's own path.
SYSTEM_PARENTS = {"/", "/tmp", "/var/tmp", "/opt", "/srv", "/mnt", "/usr/src"}
MARKER = "outside-path: ok"
# Folders never scanned when there is no git to ask: tools' state, not the project's.
WALK_SKIP = {".git", ".venv", "__pycache__", "build", "demo", "airflow-home", ".stash-state"}

# A path starts a token: not inside a word, a URL (``//host``), ``~/``, ``$VAR/``, ``./``.
_START = r"(?<![\w.~$/-])"
# ... and the folder name ends there (``/workspace`` and ``/root.txt`` are other names).
_END = r"(?![\w-])(?!\.\w)"
_RELATIVE = re.compile(_START + r"((?:\.\./)+)([^\s\"'`)\]>,;*]*)")
# In Markdown only link targets are paths relative to the file: a ``../x`` in prose or
# in a code span is an example of a value (a hostile link target, say).
_MD_LINK = re.compile(r"(?:\]\(\s*<?|^\s*\[[^\]]+\]:\s*)((?:\.\./)+)([^)\s>]*)")


def _absolute_pattern(root: Path) -> re.Pattern[str]:
    prefixes = [re.escape("/" + top) for top in OUTSIDE_TOPS]
    parent = root.parent
    own = str(parent) if str(parent) not in SYSTEM_PARENTS else str(root)
    prefixes.append(re.escape(own))
    return re.compile(_START + "(" + "|".join(prefixes) + ")" + _END + r"[^\s\"'`)\]>,;*]*")


def checkout_files(root: Path) -> list[Path]:
    """The files of the checkout: git's view (tracked plus new, not ignored) when there
    is one, else a walk that leaves out tools' folders."""
    if (root / ".git").exists() and shutil.which("git"):
        out = subprocess.run(
            [
                "git",
                "-C",
                str(root),
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ],
            check=True,
            capture_output=True,
        ).stdout.decode()
        files = [root / name for name in out.split("\0") if name]
        return sorted(p for p in files if p.is_symlink() or p.is_file())
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in WALK_SKIP and not d.endswith("_cache")]
        dirnames[:] = [d for d in dirnames if not d.endswith(".egg-info")]
        found += [Path(dirpath, f) for f in filenames + dirnames]
    return sorted(p for p in found if p.is_symlink() or p.is_file())


def _text(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None  # binary
    return data.decode("utf-8", errors="replace")


def _escapes(rel_folder: Path, ups: str) -> bool:
    return ups.count("../") > len(rel_folder.parts)


def outside_paths(root: Path) -> list[str]:
    """Every ``file:line: path (why)`` that names a place outside the checkout."""
    root = root.resolve()
    absolute = _absolute_pattern(root)
    findings = []
    for path in checkout_files(root):
        rel = path.relative_to(root)
        if path.is_symlink():
            target = os.readlink(path)
            inside = os.path.normpath(os.path.join(rel.parent, target))
            if os.path.isabs(target) or inside == ".." or inside.startswith("../"):
                findings.append(f"{rel}: a link to {target} (outside the checkout)")
            continue
        text = _text(path)
        if text is None:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            if MARKER in line:
                continue
            for m in absolute.finditer(line):
                findings.append(f"{rel}:{lineno}: {m.group(0)} (an absolute path outside)")
            relative = _MD_LINK if path.suffix == ".md" else _RELATIVE
            for m in relative.finditer(line):
                if _escapes(rel.parent, m.group(1)):
                    findings.append(
                        f"{rel}:{lineno}: {m.group(0)} (climbs above the checkout from "
                        f"{rel.parent.as_posix() or '.'}/)"
                    )
    return findings


# --------------------------------------------------------------------------- the checkout


def test_no_file_names_a_path_outside_the_checkout() -> None:
    findings = outside_paths(ROOT)
    assert findings == [], "paths outside the checkout:\n" + "\n".join(findings)


def test_the_scanner_reads_the_whole_checkout() -> None:
    """A scanner that saw no file would pass vacuously."""
    names = {p.relative_to(ROOT).as_posix() for p in checkout_files(ROOT)}
    assert {
        "README.md",
        "Makefile",
        ".ci/run",
        "examples/README.md",
        "tests/test_self_contained.py",
        "stash_plugin/api/parse.py",
    } <= names
    assert not any(n.startswith((".venv/", ".git/")) for n in names)


# --------------------------------------------------------------------------- planted

W, H, U, R = ("/" + top for top in OUTSIDE_TOPS)  # so that this file names none of them
UP = "../"

FLAGGED = [
    ("tests/test_x.py", f'EXAMPLES = Path("{W}/shared/spec/examples")'),
    ("tests/api/test_x.py", f"COMPAT = '{W}/shared/compat'"),
    ("README.md", f"See {H}/alice/notes.md for more."),
    ("Makefile", f"SRC := {U}/bob/src/stash"),
    (".ci/run", f"cd {R}/project && make test"),
    ("README.md", f"the layers of [the design]({UP}shared/DESIGN.md)"),
    ("docs/guide.md", f"[design]({UP}{UP}shared/DESIGN.md)"),
    ("docs/guide.md", f"[design]: {UP}{UP}shared/DESIGN.md"),
    ("stash_plugin/x.py", f'"(see {UP}{UP}{UP}spec/examples)"'),
    ("benchmarks/run.sh", f"python {UP}{UP}other-project/bench.py"),
]
FINE = [
    ("dags/x.py", "#!/usr/bin/env python3"),
    ("operators/pod.py", 'TERMINATION_LOG = "/dev/termination-log"'),
    ("tests/test_x.py", 'scratch = "/tmp/stash-scratch"; cfg = "/etc/stash"; p = "/proc/self"'),
    ("examples/restic.yaml", "        path: /data/stash-test/restic-repo"),
    ("examples/deploy.yaml", "          path: /srv/stash-demo/data  # /var/lib/x too"),
    ("README.md", "https://example.com/home/index.html and http://root.example.com/x"),
    ("README.md", "(from .../simple_auth_manager_passwords.json.generated)"),
    ("stash_plugin/api/x.py", "from .. import GROUP"),
    ("docs/guide.md", f"[the README]({UP}README.md)"),
    ("README.md", f"a link to anything outside (`/etc/...`, `{UP}other`) is refused"),
    ("tests/test_fuzz.py", '"/abs/../../etc",'),
    ("tests/test_x.py", f'BAD = "{UP}{UP}{UP}etc/passwd"  # {MARKER}: a hostile value'),
    ("README.md", "`/workspace`, `$HOME/work`, `~/work` and `./root` are other places"),
]


def _plant(root: Path, rel: str, line: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(line + "\n")


@pytest.mark.parametrize(("rel", "line"), FLAGGED)
def test_a_planted_outside_path_is_found(tmp_path: Path, rel: str, line: str) -> None:
    root = tmp_path / "checkout"
    _plant(root, "README.md", "# a checkout")
    _plant(root, rel, line)
    findings = outside_paths(root)
    assert len(findings) == 1 and findings[0].startswith(f"{rel}:"), findings


@pytest.mark.parametrize(("rel", "line"), FINE)
def test_system_and_inside_paths_are_fine(tmp_path: Path, rel: str, line: str) -> None:
    root = tmp_path / "checkout"
    _plant(root, "README.md", "# a checkout")
    _plant(root, rel, line)
    assert outside_paths(root) == []


def test_the_checkouts_own_location_is_outside(tmp_path: Path) -> None:
    """Wherever the clone is, a path of its parent folder (a sibling project) is refused,
    and so is the clone's own absolute path when it sits directly in /tmp."""
    root = tmp_path / "checkout"
    _plant(root, "tests/test_x.py", f'OTHER = "{tmp_path}/other-project/data"')
    assert [f.split(":")[0] for f in outside_paths(root)] == ["tests/test_x.py"]
    pattern = _absolute_pattern(Path("/tmp/checkout"))
    assert pattern.search('"/tmp/checkout/tests/data"')
    assert not pattern.search('"/tmp/stash-scratch"')


@pytest.mark.parametrize(
    ("link", "target", "outside"),
    [
        ("stash_plugin/operators", "../operators", False),
        ("tests/data", f"{UP}{UP}shared/compat", True),
        ("tests/data", f"{W}/shared/compat", True),
        ("tests/data", "/usr/share/zoneinfo", True),  # no clone has it where it points
    ],
)
def test_links_stay_inside_the_checkout(
    tmp_path: Path, link: str, target: str, outside: bool
) -> None:
    root = tmp_path / "checkout"
    (root / "operators").mkdir(parents=True)
    (root / link).parent.mkdir(parents=True, exist_ok=True)
    (root / link).symlink_to(target)
    expected = [f"{link}: a link to {target} (outside the checkout)"] if outside else []
    assert outside_paths(root) == expected


def test_a_file_planted_in_a_copy_of_this_checkout_is_found(tmp_path: Path) -> None:
    """End to end on the real files: a copy passes, the same copy plus one new file fails."""
    copy = tmp_path / "copy"
    for path in checkout_files(ROOT):
        target = copy / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target, follow_symlinks=False)
    assert outside_paths(copy) == []
    _plant(copy, "tests/test_planted.py", f'DATA = "{W}/shared/compat/stash-0.8.3"')
    findings = outside_paths(copy)
    assert findings == [
        f"tests/test_planted.py:1: {W}/shared/compat/stash-0.8.3 (an absolute path outside)"
    ]
