"""The per-node cap on concurrent agents (``[stash] node_slots``) in both runtimes.

Local runtime: real agent child processes started by ``run_step`` from several
threads (as several worker slots would), the slots held with ``flock``. Kubernetes
runtime: Leases on the fake API server over HTTP, and real pods run by the test
kubelet. Which agent ran when is read from what the agents themselves wrote (local)
or from the order of the pods' phase changes in the API server's history: no timing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kube.fakeapi import NO_KUBELET_ANNOTATION
from kube.harness import Cluster, slot_lease, start_cluster

from stash_plugin.plan.model import Step
from stash_plugin.runtime.nodeslots import (
    HOLDER_LABEL,
    SLOT_FOLDER,
    LeaseSlots,
    lease_name,
    lease_slots,
    local_slot,
)
from stash_plugin.runtime.steps import run_step
from stash_plugin.settings import Settings, load_settings

NS = "demo"
HOSTILE_NODES = ("../../x", "n" * 5000, "nœud/ünï\u202ecode", "/etc/passwd", ".", "a\0b")

# An agent that says when it starts and ends; with a partner, it keeps running until
# the partner has started (30 s at most), so "both ran at once" needs no timing.
AGENT = """
import pathlib, sys, time
log, name, partner = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
with log.open("a") as f:
    f.write(f"start {name}\\n")
deadline = time.monotonic() + 30
while partner and f"start {partner}" not in log.read_text() and time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(0.3)
with log.open("a") as f:
    f.write(f"end {name}\\n")
"""


def settings(tmp_path: Path, slots: int) -> Settings:
    (tmp_path / "manifests").mkdir(exist_ok=True)
    return Settings(
        manifests_dir=tmp_path / "manifests",
        runtime="local",
        state_dir=tmp_path / "state",
        node_slots=slots,
        poll_interval=0.05,
    )


def agent_step(log: Path, name: str, node: str | None, partner: str = "") -> Step:
    return Step(
        "backup",
        (sys.executable, "-c", AGENT, str(log), name, partner),
        NS,
        "local",
        subject=f"Restic {NS}/{name}",
        node_name=node,
    )


def events(log: Path) -> list[str]:
    return log.read_text().splitlines()


def run_all(*calls: Callable[[], Any]) -> None:
    with ThreadPoolExecutor(len(calls)) as pool:
        for future in [pool.submit(c) for c in calls]:
            future.result(timeout=120)


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)


# ----------------------------------------------------------------------------- settings


def test_node_slots_setting_is_a_whole_number_and_off_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert (load_settings().node_slots, load_settings().lease_namespace) == (0, "default")
    monkeypatch.setenv("AIRFLOW__STASH__NODE_SLOTS", "3")
    monkeypatch.setenv("AIRFLOW__STASH__LEASE_NAMESPACE", "stash-system")
    assert (load_settings().node_slots, load_settings().lease_namespace) == (3, "stash-system")
    for bad, why in (("-1", "must be 0 or more"), ("two", "must be a whole number")):
        monkeypatch.setenv("AIRFLOW__STASH__NODE_SLOTS", bad)
        with pytest.raises(ValueError, match=rf"\[stash\] node_slots = '{bad}': {why}"):
            load_settings()
    monkeypatch.setenv("AIRFLOW__STASH__NODE_SLOTS", "1")
    monkeypatch.setenv("AIRFLOW__STASH__LEASE_NAMESPACE", "../Kube-System")
    with pytest.raises(ValueError, match=r"\[stash\] lease_namespace = '../Kube-System'"):
        load_settings()


# -------------------------------------------------------------------------------- local


def test_local_agents_of_one_node_take_turns_and_other_nodes_run_meanwhile(
    tmp_path: Path,
) -> None:
    config, log = settings(tmp_path, 1), tmp_path / "agents.log"

    def run(step: Step) -> Callable[[], Any]:
        return lambda: run_step(step, None, settings=config)

    def second_wave() -> None:
        wait_for(lambda: log.exists() and "start a" in events(log), "agent a to start")
        run_all(run(agent_step(log, "b", "node-1")), run(agent_step(log, "c", "node-2")))

    run_all(run(agent_step(log, "a", "node-1", partner="c")), second_wave)
    lines = events(log)
    # c (another node) started while a ran; b (a's node) only once a had ended.
    assert lines.index("start c") < lines.index("end a") < lines.index("start b"), lines
    folders = list((config.state_dir / SLOT_FOLDER).iterdir())
    assert len(folders) == 2 and all(re.fullmatch(r"[0-9a-f]{16}", f.name) for f in folders)


def test_local_agents_without_a_node_share_this_machines_slots(tmp_path: Path) -> None:
    config, log = settings(tmp_path, 1), tmp_path / "agents.log"
    run_all(
        lambda: run_step(agent_step(log, "a", None), None, settings=config),
        lambda: run_step(agent_step(log, "b", None), None, settings=config),
    )
    lines = events(log)
    assert {lines[0], lines[2]} == {"start a", "start b"}, lines  # one after the other
    assert [line.split()[0] for line in lines] == ["start", "end", "start", "end"]


def test_no_cap_takes_no_lock(tmp_path: Path) -> None:
    config, log = settings(tmp_path, 0), tmp_path / "agents.log"
    run_all(
        lambda: run_step(agent_step(log, "a", "node-1", partner="b"), None, settings=config),
        lambda: run_step(agent_step(log, "b", "node-1", partner="a"), None, settings=config),
    )
    lines = events(log)
    assert lines.index("start b") < lines.index("end a") and lines.index("start a") < lines.index(
        "end b"
    ), lines
    assert not (config.state_dir / SLOT_FOLDER).exists()


def test_the_slot_of_a_killed_worker_is_free_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The kernel drops a dead process's flock: no stale slot, no grace period."""
    config, log = settings(tmp_path, 1), tmp_path / "agents.log"
    holder = subprocess.Popen(  # noqa: S603 - a worker that took node-1's slot, then hangs
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path\n"
            "from stash_plugin.runtime.nodeslots import local_slot\n"
            "with local_slot('node-1', 1, Path(sys.argv[1]), 'pid 4242: hung worker', 0.05):\n"
            "    print('held', flush=True); time.sleep(600)\n",
            str(config.state_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        caplog.set_level(logging.INFO, "stash_plugin.runtime.nodeslots")
        waiting = threading.Thread(
            target=run_step,
            args=(agent_step(log, "a", "node-1"), None),
            kwargs={"settings": config},
        )
        waiting.start()
        wait_for(
            lambda: any(
                "node 'node-1': all 1 agent slots are taken (pid 4242: hung worker)" in r.message
                for r in caplog.records
            ),
            "the step to report the slot's holder",
        )
        assert not log.exists()  # it waits
        os.killpg(holder.pid, signal.SIGKILL)
        waiting.join(timeout=60)
        assert not waiting.is_alive()
        assert events(log) == ["start a", "end a"]
    finally:
        os.killpg(holder.pid, signal.SIGKILL) if holder.poll() is None else None
        holder.wait()


def test_hostile_node_names_stay_in_the_slot_folder(tmp_path: Path) -> None:
    state = tmp_path / "deep" / "state"
    for node in HOSTILE_NODES:
        with local_slot(node, 2, state, "holder", 0.05):
            pass
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert len(files) == len(HOSTILE_NODES)
    assert all(re.fullmatch(r"deep/state/node-slots/[0-9a-f]{16}/slot-0", f) for f in files), files


# --------------------------------------------------------------------------- kubernetes


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    c = start_cluster(tmp_path, monkeypatch, namespace=NS)
    yield c
    c.stop()


def token(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:32]


def agent_pod(name: str, holder: str, command: str, run: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {HOLDER_LABEL: holder},
            "annotations": {} if run else {NO_KUBELET_ANNOTATION: "true"},
        },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "base", "image": "agent", "command": ["sh", "-c", command]}],
        },
    }


def lease(node: str, holder: str, acquired: datetime, namespace: str = NS) -> dict[str, Any]:
    return slot_lease(node, holder, acquired, "default", namespace)


def phase_changes(cluster: Cluster, pod: str) -> dict[str, int]:
    """The history position (resourceVersion) at which ``pod`` first had each phase."""
    seen: dict[str, int] = {}
    for ev in cluster.server.store.history:
        if ev.rt.kind == "Pod" and ev.obj["metadata"]["name"] == pod:
            seen.setdefault((ev.obj.get("status") or {}).get("phase", ""), ev.rv)
    return seen


def test_pods_of_one_node_take_turns_and_other_nodes_run_meanwhile(
    cluster: Cluster, tmp_path: Path
) -> None:
    from kubernetes import client

    from stash_plugin.runtime.kube import hook

    core = client.CoreV1Api(hook().api_client)
    slots = lease_slots("kubernetes_default", "default")
    marks = tmp_path / "marks"
    marks.mkdir()

    def agent(name: str, node: str, partner: str = "") -> None:
        wait = f"for i in $(seq 300); do [ -e {marks}/{partner} ] && break; sleep 0.1; done; "
        command = f"touch {marks}/{name}; {wait if partner else ''}sleep 0.3"
        slots.take(node, 1, token(name), NS, poll=0.05)
        core.create_namespaced_pod(NS, agent_pod(name, token(name), command))
        cluster.wait_for(
            lambda: cluster.get("Pod", name)["status"]["phase"] == "Succeeded",
            timeout=60,
            what=f"pod {name}",
        )
        slots.release(token(name))

    def second_wave() -> None:
        wait_for(lambda: (marks / "a").exists(), "pod a to start")
        run_all(lambda: agent("b", "node-1"), lambda: agent("c", "node-2"))

    run_all(lambda: agent("a", "node-1", partner="c"), second_wave)
    a, b, c = (phase_changes(cluster, p) for p in "abc")
    assert a["Running"] < c["Running"] < a["Succeeded"]  # another node: at once
    assert a["Succeeded"] < b["Running"]  # the same node: after a finished
    assert cluster.objects("Lease", "default") == []  # every slot given back


def test_a_vanished_holders_lease_is_taken_over_a_live_ones_never(cluster: Cluster) -> None:
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    cluster.apply(lease("node-1", token("old"), long_ago))
    cluster.apply(agent_pod("old", token("old"), "sleep 600", run=False))
    cluster.apply({**cluster.get("Pod", "old"), "status": {"phase": "Running"}})
    slots = lease_slots("kubernetes_default", "default")
    said: list[str] = []
    taker = threading.Thread(
        target=slots.take, args=("node-1", 1, token("new"), NS, 0.05, said.append)
    )
    taker.start()
    wait_for(lambda: said, "a waiting message")
    assert said[0] == f"node 'node-1': all 1 agent slots are held by {NS}/old; waiting"
    assert taker.is_alive()  # a running holder keeps its slot, however old the Lease

    cluster.apply({**cluster.get("Pod", "old"), "status": {"phase": "Failed"}})
    taker.join(timeout=30)
    assert not taker.is_alive()
    taken = cluster.get("Lease", lease_name("node-1", 0), "default")
    assert taken["spec"]["holderIdentity"] == token("new")
    assert taken["metadata"]["labels"][HOLDER_LABEL] == token("new")
    # taken over by an update carrying the version it read (a stale one would be 409)
    assert [c.method for c in cluster.requests if "/leases" in c.path][-1] == "PUT"

    # The old holder's task resumes late and releases: the slot is no longer its own.
    slots.release(token("old"))
    assert cluster.get("Lease", lease_name("node-1", 0), "default")["spec"]["holderIdentity"] == (
        token("new")
    )


def test_a_fresh_lease_waits_for_its_pod_and_two_takers_never_both_win(
    cluster: Cluster,
) -> None:
    """Within the grace period a Lease without a pod is a pod being created; after it,
    of two workers that find its holder gone, exactly one takes the slot over."""
    from kubernetes import client

    from stash_plugin.runtime.kube import hook

    api = hook().api_client
    grace = 2.0
    now = datetime.now(UTC)
    cluster.apply(lease("node-1", token("starting"), now))
    said: list[str] = []

    def taker(name: str) -> threading.Thread:
        slots = LeaseSlots(client.CoordinationV1Api(api), client.CoreV1Api(api), "default", grace)
        thread = threading.Thread(
            target=slots.take, args=("node-1", 1, token(name), NS, 0.05, said.append), daemon=True
        )
        thread.start()
        return thread

    first, second = taker("x"), taker("y")
    wait_for(lambda: said, "a waiting message")
    assert said[0].endswith(f"held by {lease_name('node-1', 0)} (its pod is starting); waiting")
    wait_for(lambda: not first.is_alive() or not second.is_alive(), "a taker to win", timeout=30)
    holder = cluster.get("Lease", lease_name("node-1", 0), "default")["spec"]["holderIdentity"]
    assert holder in (token("x"), token("y"))
    assert first.is_alive() != second.is_alive()  # the other one waits
    # The winner's own Lease is fresh again: the loser waits until it is released.
    LeaseSlots(client.CoordinationV1Api(api), client.CoreV1Api(api), "default").release(holder)
    for thread in (first, second):
        thread.join(timeout=30)
        assert not thread.is_alive()
    last = cluster.get("Lease", lease_name("node-1", 0), "default")["spec"]["holderIdentity"]
    assert {holder, last} == {token("x"), token("y")}


def test_hostile_node_names_make_valid_lease_names(cluster: Cluster) -> None:
    slots = lease_slots("kubernetes_default", "default")
    for node in HOSTILE_NODES:
        # the fake refuses (422) names and labels a real API server would refuse
        assert slots.take(node, 2, token(node), NS, 0.05) == lease_name(node, 0)
        held = cluster.get("Lease", lease_name(node, 0), "default")
        assert re.fullmatch(r"stash-node-[0-9a-f]{16}-0", held["metadata"]["name"])
        assert held["metadata"]["annotations"]["stash.appscode.com/node"] == node[:253]
        slots.release(token(node))
    assert cluster.objects("Lease", "default") == []
