"""``stash sync`` at scale: time and memory of a full paged sync, then of following.

A fake API server (tests/kube/fakeapi.py, in its own process) holds ``--objects``
Deployments and as many Restics (plus one Repository per 100 Restics), each
Deployment shaped like what a real cluster returns (managedFields, the
last-applied-configuration annotation, status). Each measured sync runs in a fresh
process so its peak RSS is its own:

1. ``sync_once`` (what ``stash sync --once`` does): paged lists, reduced objects,
   the snapshot written; wall time, peak RSS and snapshot size;
2. ``sync_forever`` (what the chart runs): the first snapshot, then one Restic's
   schedule edited through the API and the time until the file shows it; then a
   status-only change of every Repository (what backups write) and whether the file
   was rewritten; the number of list requests after the first listing.

Usage::

    .venv/bin/python benchmarks/sync.py [--objects 10000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
NS = "bench"


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu() -> float:
    """This process's CPU seconds: the sync's own cost, without the fake server's."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def heavy_deployment(name: str) -> dict[str, Any]:
    from stash_plugin.manifests import deployment_doc

    doc = deployment_doc(name, NS, f"/data/{name}")
    doc["metadata"]["annotations"] = {
        "kubectl.kubernetes.io/last-applied-configuration": json.dumps(doc)
    }
    doc["metadata"]["managedFields"] = [
        {"manager": "kubectl", "operation": "Update", "fieldsV1": {"f:spec": {"f:replicas": {}}}}
    ]
    # observedGeneration == generation: the fake's controller leaves it alone.
    doc["status"] = {"replicas": 1, "readyReplicas": 1, "observedGeneration": 1}
    return doc


def serve(objects: int) -> None:
    """The fake API server, populated; prints its URL, then serves until stdin closes."""
    from kube.fakeapi import FakeKubeServer

    from stash_plugin.manifests import repository_doc, restic_doc

    server = FakeKubeServer().start()
    store = server.store
    deployments, restics = store.type_named("Deployment"), store.type_named("Restic")
    for r in range(max(objects // 100, 1)):
        doc = repository_doc(
            f"repo-{r}", NS, {"local": {"mountPath": "/repo", "hostPath": {"path": "/r"}}}
        )
        store.create(store.type_named("Repository"), NS, doc, from_api=False)
    for i in range(objects):
        store.create(deployments, NS, heavy_deployment(f"app-{i}"), from_api=False)
        doc = restic_doc(f"app-{i}", NS, f"repo-{i // 100}", f"app-{i}")
        store.create(restics, NS, doc, from_api=False)
    print(server.url, flush=True)
    sys.stdin.read()
    server.stop()


def _client(url: str) -> Any:
    from kubernetes import client

    config = client.Configuration()
    config.host = url
    return client.ApiClient(config)


def measure_once(url: str, out: Path) -> None:
    from stash_plugin.sync import sync_once

    client = _client(url)
    base, cpu = _rss_mib(), _cpu()
    start = time.perf_counter()
    sync_once(client, out)
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "cpu": _cpu() - cpu, "peak_mib": _rss_mib(), "import_mib": base}
    print(json.dumps(result))


def measure_follow(url: str, out: Path, objects: int) -> None:
    """First snapshot, one edit, one status-only storm; prints the figures."""
    from stash_plugin.sync import sync_forever

    stop = threading.Event()
    start = time.perf_counter()
    thread = threading.Thread(
        target=sync_forever,
        args=(lambda: _client(url), out),
        kwargs={"interval": 1.0, "stop": stop},
        daemon=True,
    )
    thread.start()
    first = _wait(lambda: out.exists(), 600)
    after_first = _rss_mib()
    mtime = out.stat().st_mtime_ns
    edited = time.perf_counter()
    _patch(
        url,
        f"/apis/stash.appscode.com/v1alpha1/namespaces/{NS}/restics/app-7",
        {"spec": {"schedule": "@every 2h"}},
    )
    _wait(lambda: '"@every 2h"' in out.read_text() and out.stat().st_mtime_ns != mtime, 120)
    edit_seconds = time.perf_counter() - edited
    mtime = out.stat().st_mtime_ns
    for r in range(max(objects // 100, 1)):
        path = f"/apis/stash.appscode.com/v1alpha1/namespaces/{NS}/repositories/repo-{r}/status"
        _patch(url, path, {"status": {"backupRepos": [{"backupCount": 1}]}})
    time.sleep(3.0)  # three write intervals
    rewritten = out.stat().st_mtime_ns != mtime
    stop.set()
    print(
        json.dumps(
            {
                "first_seconds": first - start,
                "edit_seconds": edit_seconds,
                "status_storm_rewrote_file": rewritten,
                "peak_mib": _rss_mib(),
                "after_first_mib": after_first,
            }
        )
    )


def _wait(check: Any, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.perf_counter()
        time.sleep(0.02)
    raise TimeoutError("timed out")


def _patch(url: str, path: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode(),
        method="PATCH",
        headers={"Content-Type": "application/merge-patch+json"},
    )
    with urllib.request.urlopen(request, timeout=30):  # noqa: S310 - the local fake
        pass


def _child(*args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, timeout=1200
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--once", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--follow", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return 0
    if args.once:
        measure_once(args.once[0], Path(args.once[1]))
        return 0
    if args.follow:
        measure_follow(args.follow[0], Path(args.follow[1]), int(args.follow[2]))
        return 0

    start = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(args.objects)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None and server.stdin is not None
    url = server.stdout.readline().strip()
    print(
        f"fake API server: {args.objects} Deployments + {args.objects} Restics "
        f"+ {max(args.objects // 100, 1)} Repositories, filled in "
        f"{time.perf_counter() - start:.1f} s"
    )
    try:
        with tempfile.TemporaryDirectory(prefix="stash-bench-sync-") as tmp:
            once = _child("--once", url, str(Path(tmp, "once.json")))
            size = Path(tmp, "once.json").stat().st_size
            print(
                f"sync --once: {once['seconds']:.1f} s ({once['cpu']:.1f} s CPU in the "
                "syncing process, the rest is the fake server), "
                f"peak RSS {once['peak_mib']:.0f} MiB "
                f"(after imports {once['import_mib']:.0f} MiB), snapshot {size / 2**20:.1f} MiB"
            )
            follow = _child("--follow", url, str(Path(tmp, "follow.json")), str(args.objects))
            print(
                f"sync (watching): first snapshot {follow['first_seconds']:.1f} s, "
                f"RSS {follow['after_first_mib']:.0f} MiB after it, peak "
                f"{follow['peak_mib']:.0f} MiB; one Restic edited -> file updated in "
                f"{follow['edit_seconds']:.2f} s; status of every Repository written -> "
                f"file {'rewritten' if follow['status_storm_rewrote_file'] else 'untouched'}"
            )
    finally:
        server.stdin.close()
        server.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
