"""Cluster backup of many API objects: does the backup's memory grow with their number?

For each object count, a fresh fake API server (``tests/kube/fakeapi.py``, in this
process) is filled with ConfigMaps (about 1 KiB of data each), Secrets and Deployments
spread over namespaces, and ``stash-agent cluster-dump`` backs up all of them in one run
into a fresh repository: discovery, paged lists (500 a page), sanitizing, one file per
object, then ``restic backup`` of the tree. The step runs under a small launcher that
reports the peak resident memory of the agent and of restic (the larger of the two,
``wait4``'s ``ru_maxrss``: restic's, as it turns out). The dump alone (the agent's
Python, ``clusterdump.dump`` into a folder, no restic) is measured the same way, so
that growth in the agent could not hide under restic's peak.

Usage::

    .venv/bin/python benchmarks/cluster.py [--counts 1000,5000] [--workdir DIR]

Prints, per count: objects written, wall seconds and peak RSS (MiB) of the whole step
and of the dump alone; then the ratios of the peaks of the largest and smallest counts
against the ratio of the counts.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from kube.fakeapi import FakeKubeServer  # noqa: E402
from stashtest import run_with_peak  # noqa: E402

PASSWORD = secrets.token_urlsafe(24)
NAMESPACES = 20
SELECTOR = ("--resource=:namespaces", "--resource=:configmaps", "--resource=:secrets")
SELECTOR += ("--resource=apps/v1:deployments",)


def fill(server: FakeKubeServer, count: int) -> None:
    """``count`` objects: 70% ConfigMaps, 20% Secrets, 10% Deployments, in namespaces."""
    store = server.store
    cm, secret = store.type_of("v1", "ConfigMap"), store.type_of("v1", "Secret")
    deploy = store.type_of("apps/v1", "Deployment")
    payload = "x" * 1000
    server.controller.stop()  # Deployments without pods: the count stays the count
    for i in range(count):
        ns = f"app-{i % NAMESPACES:02d}"
        name = f"obj-{i:06d}"
        kind = i % 10
        if kind < 7:
            store.create(cm, ns, {"metadata": {"name": name}, "data": {"payload": payload}})
        elif kind < 9:
            store.create(secret, ns, {"metadata": {"name": name}, "stringData": {"k": payload}})
        else:
            labels = {"app": name}
            spec = {
                "replicas": 0,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]},
                },
            }
            store.create(deploy, ns, {"metadata": {"name": name}, "spec": spec})


DUMP_ALONE = """
import os, sys
from pathlib import Path
from stash_plugin.clusterdump import Kube, Selection, dump, parse_resource
kube = Kube.from_env(os.environ)
res = [parse_resource(a.split("=", 1)[1]) for a in sys.argv[2:]]
print(sum(dump(kube, Selection(res, sanitize=True), Path(sys.argv[1])).values()))
"""


def run(count: int, work: Path) -> tuple[int, float, float, float, float]:
    server = FakeKubeServer().start()
    try:
        fill(server, count)
        here = work / f"n{count}"
        here.mkdir()
        env = {
            "PATH": os.environ["PATH"],
            "RESTIC_REPOSITORY": str(here / "repo"),
            "RESTIC_PASSWORD": PASSWORD,
            "STASH_KUBE_SERVER": server.url,
            "STASH_RESULT_FILE": str(here / "result.json"),
            "TMPDIR": str(here),
            "PYTHONPATH": str(ROOT),
        }
        argv = [sys.executable, "-m", "stash_plugin.agent", "cluster-dump", "--init"]
        argv += [*SELECTOR, "--sanitize", "::", "/cluster", "restic", "backup", "--json"]
        argv += ["--quiet", "--host=cluster", "--tag=namespace=bench,target=cluster"]
        code, _, err, seconds, peak = run_with_peak(argv, env, here, timeout=1800)
        if code != 0:
            raise SystemExit(f"backup of {count} objects failed:\n{err}")
        objects = json.loads((here / "result.json").read_text())["objects"]
        tree = here / "tree"
        tree.mkdir()
        code, out, err, dump_seconds, dump_peak = run_with_peak(
            [sys.executable, "-c", DUMP_ALONE, str(tree), *SELECTOR], env, here, timeout=1800
        )
        if code != 0 or int(out) != sum(objects.values()):
            raise SystemExit(f"dump of {count} objects failed:\n{err}")
        return sum(objects.values()), seconds, peak, dump_seconds, dump_peak
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--counts", default="1000,5000")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    work = Path(tempfile.mkdtemp(prefix="stash-bench-cluster-", dir=args.workdir))
    try:
        rows = []
        print(
            f"{'objects':>8} | {'written':>8} | {'step s':>7} | {'step peak MiB':>13} | "
            f"{'dump s':>7} | {'dump peak MiB':>13}"
        )
        for count in counts:
            written, seconds, peak, dump_seconds, dump_peak = run(count, work)
            rows.append((count, peak, dump_peak))
            print(
                f"{count:>8} | {written:>8} | {seconds:>7.2f} | {peak:>13.1f} | "
                f"{dump_seconds:>7.2f} | {dump_peak:>13.1f}",
                flush=True,
            )
        (small, p_small, d_small), (large, p_large, d_large) = rows[0], rows[-1]
        print(
            f"peak RSS {large} / {small} objects: step {p_large / p_small:.2f}, dump alone "
            f"{d_large / d_small:.2f} (objects: {large / small:.1f}x)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
