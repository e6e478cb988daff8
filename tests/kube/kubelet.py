"""A test "kubelet": runs each new pod's container command on this host, for real.

Why: the KubernetesPodOperator (and our agent pods) must be tested end to end
without a cluster or Docker. The kubelet watches the fake API's store; for every
new Pending pod (not a workload pod, see ``fakeapi.WORKLOAD_ANNOTATION``) it runs
the first container (not the operator's XCom sidecar) as a host process:

- argv is ``command + args`` (no image entrypoint exists here; ``$(VAR)`` is
  expanded from the container env like Kubernetes does); the image is ignored;
- env holds only the pod's env (``value``, ``valueFrom`` secretKeyRef /
  configMapKeyRef / fieldRef) plus ``PATH`` (the running Python's bin
  dir first, so ``stash-agent`` resolves to the venv's), ``HOME`` (a fresh dir per
  pod, like a container's) and ``HOSTNAME``;
- the host name is the pod's (``spec.hostname`` or the name cut to 63 characters),
  set in a private UTS namespace (``unshare --uts``), so restic's locks name the pod
  as in a cluster;
- every volumeMount is bind-mounted at its real ``mountPath`` in a private mount
  namespace (``unshare --mount``), read-only mounts remounted ``ro``, so the
  command sees exactly the paths a pod would. Sources: ``hostPath`` -> that path
  (created if missing and its type allows it),
  ``persistentVolumeClaim`` -> ``<pv_root>/<namespace>/<claimName>`` (the claim
  object must exist), ``emptyDir`` -> a temp dir, ``secret``/``configMap`` -> a
  temp dir with one file per key. Mount points this kubelet had to create on the
  host are removed afterwards when empty and unused;
- stdout and stderr, interleaved, are the container log, served while it runs;
- a pod with a ``serviceAccountName`` (and ``automountServiceAccountToken`` not
  false) gets in-cluster config when ``api`` is set: ``KUBERNETES_SERVICE_HOST`` and
  ``KUBERNETES_SERVICE_PORT`` (the fake's HTTPS port) in its env, and at
  ``/var/run/secrets/kubernetes.io/serviceaccount`` (read-only) ``token`` (issued by
  the store for that account), ``ca.crt`` and ``namespace``. Other pods get neither
  (a real kubelet mounts the ``default`` account's token in every pod).

With ``podman`` (``start_cluster(..., podman=...)``) each container runs instead from
its image, as a kubelet runs it: ``podman run --pull=never --network=host`` with the
image's entrypoint unless ``command`` is set, ``args``, the pod's env (values from
Secrets passed by name in podman's environment, never in its argv), every volume
bind-mounted at its ``mountPath`` (``ro`` where the pod says so), ``workingDir``, the
termination message file, and the security context (``containers.security_flags``:
user, groups, capabilities, no-new-privileges, read-only root). The image must be in
the suite's podman store (``containers.build_image``).

A missing Secret, ConfigMap, key or claim leaves the pod Pending with a waiting
reason (``CreateContainerConfigError``) and a Warning event, as on a real node,
and the kubelet retries until it appears or the pod is deleted (so an operator
fails after its startup timeout). A volume type this kubelet cannot provide
(``nfs``...) fails the pod at once with ``status.reason: Unsupported``.
Deleting a running pod kills its process group, and when the main process ends the
rest of its group is killed too (PID 1 semantics). restartPolicy is ignored
(every container runs once); ``do_xcom_push`` (exec into the sidecar) is not
supported and shows as an unhandled route; init containers and ``envFrom`` fail
the pod as Unsupported.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from containers import Podman, security_flags
from kube.fakeapi import (
    NO_KUBELET_ANNOTATION,
    START_DELAY_ANNOTATION,
    WORKLOAD_ANNOTATION,
    ApiError,
    ContainerLog,
    Obj,
    Store,
    dig,
    now_rfc3339,
)

#: Run inside ``unshare --uts --mount``: argv is HOSTNAME WORKDIR, then SRC DST MODE triples,
#: ``--``, the command.
_MOUNT_AND_EXEC = r"""
printf '%s' "$1" > /proc/sys/kernel/hostname || exit 125
workdir=$2; shift 2
while [ "$1" != "--" ]; do
  mount --bind -- "$1" "$2" || exit 125
  if [ "$3" = ro ]; then mount -o remount,bind,ro -- "$2" || exit 125; fi
  shift 3
done
shift
if [ -n "$workdir" ]; then cd -- "$workdir" || exit 125; fi
exec "$@"
"""

#: The container that the KubernetesPodOperator adds for XCom; never ours to run.
SIDECARS = {"airflow-xcom-sidecar"}
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SERVICE_ACCOUNT_VOLUME = "kube-api-access"


class NotReady(Exception):
    """The pod cannot start yet (missing Secret, key or claim): stay Pending, retry."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


class Unsupported(Exception):
    """Something this test kubelet cannot do: the pod fails at once."""


class Kubelet:
    """Runs pods from ``store`` on the host. ``workdir`` holds per-pod scratch dirs."""

    def __init__(
        self, store: Store, pv_root: Path, workdir: Path, podman: Podman | None = None
    ) -> None:
        self.store, self.pv_root, self.workdir = store, pv_root, workdir
        self.podman = podman  # None: containers run as host processes
        self.api: tuple[str, int, str] | None = None
        """(host, HTTPS port, CA certificate PEM) of the API for in-cluster config."""
        self.errors: list[str] = []  # crashes of this kubelet itself: a fixture asserts none
        self.procs: dict[str, subprocess.Popen[bytes]] = {}  # pod uid -> running container
        self.started: list[tuple[str, str]] = []  # (pod name, image run, or "" on the host)
        self._mountpoints: dict[str, list[str]] = {}  # pod uid -> mount paths in use
        self._lock = threading.Lock()
        self._stopped = False
        self._runners: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._watch, name="fake-kubelet", daemon=True)
        self.pod_type = store.type_of("v1", "Pod")

    def start(self) -> Kubelet:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            procs = list(self.procs.values())
        for proc in procs:
            _kill(proc)
        self._thread.join(timeout=5)
        for runner in self._runners:  # they clean up mount points and scratch dirs
            runner.join(timeout=5)

    def _watch(self) -> None:
        rv = 0
        while not self.store.stopping:
            for ev in self.store.events_after(rv):
                rv = max(rv, ev.rv)
                if ev.rt != self.pod_type:
                    continue
                annotations = ev.obj["metadata"].get("annotations") or {}
                uid = ev.obj["metadata"]["uid"]
                if ev.type == "DELETED":
                    with self._lock:
                        proc = self.procs.get(uid)
                    if proc:  # killing waits for the process: not on this thread
                        threading.Thread(target=_kill, args=(proc,), daemon=True).start()
                elif (
                    ev.type == "ADDED"
                    and ev.obj["status"].get("phase") == "Pending"
                    and not {WORKLOAD_ANNOTATION, NO_KUBELET_ANNOTATION} & annotations.keys()
                ):
                    name = f"pod-{ev.obj['metadata']['name']}"
                    runner = threading.Thread(
                        target=self._guarded, args=(ev.obj,), name=name, daemon=True
                    )
                    self._runners.append(runner)
                    runner.start()
            self.store.wait(0.2)

    def _guarded(self, pod: Obj) -> None:
        try:
            self._run_pod(pod)
        except Exception:  # a kubelet bug must not look like a pod that never started
            self.errors.append(
                f"test kubelet crashed on pod {pod['metadata']['name']}:\n" + traceback.format_exc()
            )

    # ------------------------------------------------------------------ pod lifecycle

    def _patch_status(self, pod: Obj, status: Obj) -> bool:
        """Merge into the pod's status (one write). False if the pod is gone."""
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]

        def change(obj: Obj) -> Obj:
            if obj["metadata"]["uid"] != pod["metadata"]["uid"]:
                raise ApiError(404, "NotFound", "replaced")
            obj["status"] = {**obj.get("status", {}), **status}
            return obj

        try:
            self.store.update(self.pod_type, ns, name, change, subresource="status")
            return True
        except ApiError:
            return False

    def _event(
        self, pod: Obj, reason: str, message: str, warning: bool = False, container: str = ""
    ) -> None:
        meta, t = pod["metadata"], now_rfc3339()
        event = {
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}"},
            "involvedObject": {
                "kind": "Pod",
                "apiVersion": "v1",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                **({"fieldPath": f"spec.containers{{{container}}}"} if container else {}),
            },
            "reason": reason,
            "message": message,
            "type": "Warning" if warning else "Normal",
            "count": 1,
            "firstTimestamp": t,
            "lastTimestamp": t,
            "source": {"component": "kubelet", "host": "fakekube-node"},
        }
        self.store.create(self.store.type_of("v1", "Event"), meta["namespace"], event)

    def _alive(self, pod: Obj) -> bool:
        try:
            current = self.store.get(
                self.pod_type, pod["metadata"]["namespace"], pod["metadata"]["name"]
            )
        except ApiError:
            return False
        return current["metadata"]["uid"] == pod["metadata"]["uid"]

    def _run_pod(self, pod: Obj) -> None:
        spec, scratch = pod["spec"], self.workdir / pod["metadata"]["uid"]
        main = next((c for c in spec["containers"] if c["name"] not in SIDECARS), None)
        main = main or spec["containers"][0]
        t0 = now_rfc3339()
        scheduled = {"type": "PodScheduled", "status": "True", "lastTransitionTime": t0}
        status = {"conditions": [scheduled], "hostIP": "127.0.0.1", "podIP": "127.0.0.1"}
        self._patch_status(pod, {**status, "startTime": t0})
        self._event(pod, "Scheduled", f"Successfully assigned {pod['metadata']['name']}")
        delay = float((pod["metadata"].get("annotations") or {}).get(START_DELAY_ANNOTATION, 0))
        if delay:  # a slow image pull: lets a test see the operator's Pending-phase calls
            self._event(
                pod, "Pulling", f"Pulling image {main.get('image')!r}", container=main["name"]
            )
            time.sleep(delay)
        try:
            if spec.get("initContainers"):
                raise Unsupported("initContainers are not supported by the test kubelet")
            while True:  # a missing Secret or claim keeps the pod Pending until it appears
                try:
                    volumes = self._volumes(pod, scratch)
                    env = self._env(pod, main)
                    security = self._security(pod, main)
                    main = self._service_account(pod, main, volumes, env, scratch)
                    break
                except NotReady as e:
                    waiting = {"waiting": {"reason": e.reason, "message": e.message}}
                    self._patch_status(pod, {"containerStatuses": [_status(main, waiting)]})
                    if not any(e.message in x["message"] for x in self._events_of(pod)):
                        self._event(pod, "Failed", f"Error: {e.message}", warning=True)
                    self.store.wait(1.0)
                    if not self._alive(pod) or self.store.stopping:
                        return

            self._run_container(pod, main, env, volumes, scheduled, security)
        except Unsupported as e:
            self._patch_status(pod, {"phase": "Failed", "reason": "Unsupported", "message": str(e)})
        finally:
            shutil.rmtree(scratch, ignore_errors=True)  # secrets and emptyDirs die with the pod

    def _events_of(self, pod: Obj) -> list[Obj]:
        selector = f"involvedObject.uid={pod['metadata']['uid']}"
        ns = pod["metadata"]["namespace"]
        return self.store.select(self.store.type_of("v1", "Event"), ns, fields=selector)

    def _run_container(
        self,
        pod: Obj,
        c: Obj,
        env: dict[str, str],
        volumes: dict[str, Path],
        scheduled: Obj,
        security: list[str],
    ) -> None:
        """Run the container to the end (or until the pod is deleted).

        The terminal status is written before the log stream ends, so a client
        following the log sees the container terminated when the log ends.
        """
        uid = pod["metadata"]["uid"]
        argv = [_expand(a, env) for a in (c.get("command") or []) + (c.get("args") or [])]
        if not argv and self.podman is None:
            raise Unsupported(f"container {c['name']}: no command (images have no entrypoint here)")
        mounts: list[str] = []  # SRC DST MODE triples for the wrapper
        for m in c.get("volumeMounts") or []:
            if m["name"] not in volumes:
                raise Unsupported(f"volumeMount {m['name']!r} names no volume of the pod")
            src = volumes[m["name"]] / m.get("subPath", "")
            if m.get("subPath") and not src.exists():
                src.mkdir(parents=True)
            mounts += [str(src), m["mountPath"], "ro" if m.get("readOnly") else "rw"]
        # The termination message: a file of the pod's own at terminationMessagePath,
        # read back into state.terminated.message when the container ends.
        message_file = self.workdir / uid / f"termination-{c['name']}"
        message_file.parent.mkdir(parents=True, exist_ok=True)
        message_file.write_bytes(b"")
        mounts += [
            str(message_file),
            c.get("terminationMessagePath") or "/dev/termination-log",
            "rw",
        ]
        if self.podman is not None:
            wrapper, proc_env = self._podman_run(pod, c, env, mounts, security)
        else:
            unshare = [shutil.which("unshare") or "unshare", "--uts", "--mount", "--propagation"]
            sh = [shutil.which("sh") or "sh", "-c", _MOUNT_AND_EXEC, "fakekube-kubelet"]
            hostname = env["HOSTNAME"]
            wrapper = [*unshare, "private", "--", *sh, hostname, c.get("workingDir", ""), *mounts]
            wrapper += ["--", *argv]
            proc_env = env
        started, log = now_rfc3339(), ContainerLog()
        with self._lock:
            if self._stopped or not self._alive(pod):
                return
            hold = _hold_mountpoints(mounts[1::3]) if self.podman is None else []
            created = (
                []
                if self.podman is not None
                else [
                    made
                    for src, dst in zip(mounts[0::3], mounts[1::3], strict=True)
                    for made in _make_mountpoint(Path(dst), directory=Path(src).is_dir())
                ]
            )
            self._mountpoints[uid] = mounts[1::3]
            proc = subprocess.Popen(  # noqa: S603 - argv, never a shell string with values in it
                wrapper,
                env=proc_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.procs[uid] = proc
            self.started.append((pod["metadata"]["name"], c["image"] if self.podman else ""))
        threading.Thread(target=_reap, args=(proc,), daemon=True).start()
        with self.store.cond:
            self.store.logs[(uid, c["name"])] = log
        self._event(pod, "Started", f"Started container {c['name']}", container=c["name"])
        ready = {"type": "Ready", "status": "True", "lastTransitionTime": started}
        running = _status(c, {"running": {"startedAt": started}}, ready=True)
        self._patch_status(
            pod,
            {"phase": "Running", "conditions": [scheduled, ready], "containerStatuses": [running]},
        )
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, b""):
            with self.store.cond:
                log.lines.append((now_rfc3339(nanos=True), line))
                self.store.cond.notify_all()
        code = proc.wait()
        if self.podman is not None:  # the client may have been killed: the container goes too
            self.podman.run("rm", "--force", "--time=0", _container_name(uid), check=False)
        with self._lock:
            self.procs.pop(uid, None)
            self._mountpoints.pop(uid, None)
            in_use = [p for paths in self._mountpoints.values() for p in paths]
            for handle in hold:
                handle.close()
            for path in reversed(created):  # deepest first; only if empty and nobody mounts there
                if not any(u == str(path) or u.startswith(f"{path}/") for u in in_use):
                    with _sole_user_of(path) as alone:
                        if alone:
                            _remove_if_empty(path)
        state = {
            "exitCode": code if code >= 0 else 128 - code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": started,
            "finishedAt": now_rfc3339(),
            "containerID": f"fakekube://{uid}/{c['name']}",
        }
        message = _termination_message(c, message_file, log, code)
        if message:
            state["message"] = message
        done = {
            "type": "Ready",
            "status": "False",
            "reason": "PodCompleted",
            "lastTransitionTime": state["finishedAt"],
        }
        self._patch_status(
            pod,
            {  # one write: phase and terminated state, as the operator needs
                "phase": "Succeeded" if code == 0 else "Failed",
                "conditions": [scheduled, done],
                "containerStatuses": [_status(c, {"terminated": state})],
            },
        )
        with self.store.cond:
            log.done = True
            self.store.cond.notify_all()

    # ------------------------------------------------------------------ env and volumes

    def _lookup(self, kind: str, ns: str, name: str, key: str | None, optional: bool) -> str | None:
        """A key of a Secret (decoded) or ConfigMap; NotReady if missing and not optional."""
        plural = "secrets" if kind == "Secret" else "configmaps"
        try:
            obj = self.store.get(self.store.type_named(plural), ns, name)
        except ApiError:
            if optional:
                return None
            raise NotReady(
                "CreateContainerConfigError", f'{kind.lower()} "{name}" not found'
            ) from None
        if key is None:
            return ""
        if key in (obj.get("data") or {}):
            value = obj["data"][key]
            return base64.b64decode(value).decode() if kind == "Secret" else value
        if optional:
            return None
        raise NotReady(
            "CreateContainerConfigError", f"couldn't find key {key} in {kind} {ns}/{name}"
        )

    def _podman_run(
        self, pod: Obj, c: Obj, env: dict[str, str], mounts: list[str], security: list[str]
    ) -> tuple[list[str], dict[str, str]]:
        """``podman run`` argv for the container, and podman's environment, which carries
        the container's values: the argv holds only their names."""
        assert self.podman is not None
        reserved = sorted(env.keys() & _PODMAN_OWN_ENV)
        if reserved:
            raise Unsupported(f"env {reserved}: names podman itself reads (test kubelet limit)")
        flags = [
            "run",
            "--rm",
            f"--name={_container_name(pod['metadata']['uid'])}",
            "--pull=never",
            "--network=host",
            f"--hostname={_hostname(pod)}",
            *security,
            *(f"--env={name}" for name in env),
            *(
                f"--volume={src}:{dst}:{mode}"
                for src, dst, mode in zip(mounts[0::3], mounts[1::3], mounts[2::3], strict=True)
            ),
        ]
        if c.get("workingDir"):
            flags.append(f"--workdir={c['workingDir']}")
        command = [_expand(a, env) for a in c.get("command") or []]
        if command:
            flags.append("--entrypoint=" + json.dumps(command))
        args = [_expand(a, env) for a in c.get("args") or []]
        return self.podman.argv(*flags, c["image"], *args), {**self.podman.env, **env}

    def _security(self, pod: Obj, c: Obj) -> list[str]:
        """podman flags for the security context (podman mode only); a context the image
        cannot meet keeps the pod Pending, as a kubelet does."""
        if self.podman is None:
            return []
        try:
            return security_flags(self.podman, c["image"], c, pod["spec"])
        except PermissionError as e:
            raise NotReady("CreateContainerConfigError", f"Error: {e}") from None
        except ValueError as e:
            raise Unsupported(str(e)) from None

    def _env(self, pod: Obj, c: Obj) -> dict[str, str]:
        ns, scratch = pod["metadata"]["namespace"], self.workdir / pod["metadata"]["uid"]
        env: dict[str, str] = {}
        if self.podman is None:  # a container's own PATH and HOME (podman: the image's)
            home = scratch / "home"
            home.mkdir(parents=True, exist_ok=True)
            path = os.pathsep.join(
                [
                    str(Path(sys.executable).parent),
                    "/usr/local/sbin",
                    "/usr/local/bin",
                    "/usr/sbin",
                    "/usr/bin",
                    "/sbin",
                    "/bin",
                ]
            )
            env = {"PATH": path, "HOME": str(home), "HOSTNAME": _hostname(pod)}
        if c.get("envFrom"):
            raise Unsupported("envFrom is not supported by the test kubelet")
        for var in c.get("env") or []:
            source = var.get("valueFrom")
            if source is None:
                env[var["name"]] = _expand(var.get("value", ""), env)
                continue
            if ref := source.get("secretKeyRef") or source.get("configMapKeyRef"):
                kind = "Secret" if "secretKeyRef" in source else "ConfigMap"
                value = self._lookup(kind, ns, ref["name"], ref["key"], bool(ref.get("optional")))
            elif ref := source.get("fieldRef"):
                value = {
                    "spec.nodeName": "fakekube-node",
                    "status.podIP": "127.0.0.1",
                    "status.hostIP": "127.0.0.1",
                }.get(ref["fieldPath"]) or str(dig(pod, ref["fieldPath"]) or "")  # metadata.name...
            else:
                raise Unsupported(f"env {var['name']}: valueFrom {sorted(source)} is not supported")
            if value is not None:
                env[var["name"]] = value
        return env

    def _service_account(
        self, pod: Obj, c: Obj, volumes: dict[str, Path], env: dict[str, str], scratch: Path
    ) -> Obj:
        """``c`` with the in-cluster config a kubelet gives a pod of a ServiceAccount
        (see the module docstring); ``volumes`` and ``env`` get their part."""
        spec, ns = pod["spec"], pod["metadata"]["namespace"]
        account = spec.get("serviceAccountName")
        if self.api is None or not account or spec.get("automountServiceAccountToken") is False:
            return c
        host, port, ca = self.api
        folder = volumes[SERVICE_ACCOUNT_VOLUME] = scratch / "serviceaccount"
        folder.mkdir(parents=True, exist_ok=True)
        token = self.store.issue_token(ns, account)
        for name, text in (("token", token), ("ca.crt", ca), ("namespace", ns)):
            (folder / name).write_text(text)
        env.setdefault("KUBERNETES_SERVICE_HOST", host)
        env.setdefault("KUBERNETES_SERVICE_PORT", str(port))
        mount = {"name": SERVICE_ACCOUNT_VOLUME, "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": True}
        return {**c, "volumeMounts": [*(c.get("volumeMounts") or []), mount]}

    def _volumes(self, pod: Obj, scratch: Path) -> dict[str, Path]:
        """Host folder for each pod volume (see the module docstring)."""
        ns, out = pod["metadata"]["namespace"], {}
        for vol in pod["spec"].get("volumes") or []:
            name = vol["name"]
            if "hostPath" in vol:
                path, kind = Path(vol["hostPath"]["path"]), vol["hostPath"].get("type", "")
                if not path.exists() and kind in ("", "DirectoryOrCreate"):
                    path.mkdir(parents=True)
                elif not path.exists() and kind == "FileOrCreate":
                    path.touch()
                elif not path.exists():
                    raise NotReady("ContainerCreating", f"hostPath type check failed: {path}")
                out[name] = path
            elif "persistentVolumeClaim" in vol:
                claim = vol["persistentVolumeClaim"]["claimName"]
                try:
                    self.store.get(self.store.type_named("persistentvolumeclaims"), ns, claim)
                except ApiError:
                    raise NotReady(
                        "ContainerCreating", f'persistentvolumeclaim "{claim}" not found'
                    ) from None
                out[name] = self.pv_root / ns / claim
                out[name].mkdir(parents=True, exist_ok=True)
            elif "emptyDir" in vol:
                out[name] = scratch / "empty-dirs" / name
                out[name].mkdir(parents=True, exist_ok=True)
            elif "secret" in vol or "configMap" in vol:
                kind, ref = (
                    ("Secret", vol["secret"])
                    if "secret" in vol
                    else ("ConfigMap", vol["configMap"])
                )
                obj_name = ref.get("secretName") or ref.get("name")
                folder = out[name] = scratch / "files" / name
                folder.mkdir(parents=True, exist_ok=True)
                if self._lookup(kind, ns, obj_name, None, bool(ref.get("optional"))) is None:
                    continue
                obj = self.store.get(self.store.type_named(kind), ns, obj_name)
                keys = obj.get("data") or {}
                items = ref.get("items") or [{"key": k, "path": k} for k in keys]
                for item in items:
                    value = self._lookup(kind, ns, obj_name, item["key"], bool(ref.get("optional")))
                    target = folder / item["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(value or "")
                    target.chmod(item.get("mode", ref.get("defaultMode", 0o644)))
            else:
                kinds = sorted(set(vol) - {"name"})
                raise Unsupported(
                    f"volume {name!r}: {kinds} volumes are not supported by the test kubelet"
                )
        return out


#: Variables the podman client itself reads: a container's value cannot travel in them.
_PODMAN_OWN_ENV = {
    "PATH",
    "HOME",
    "CONTAINERS_CONF",
    "TMPDIR",
    "XDG_RUNTIME_DIR",
    "XDG_CONFIG_HOME",
}


def _hostname(pod: Obj) -> str:
    """The pod's host name, as a kubelet sets it (restic records it in snapshots)."""
    return str(pod["spec"].get("hostname") or pod["metadata"]["name"][:63].rstrip("-."))


def _container_name(uid: str) -> str:
    return f"fakekube-{uid}"


def _status(c: Obj, state: Obj, ready: bool = False) -> Obj:
    """A containerStatus with every field the operator reads."""
    return {
        "name": c["name"],
        "image": c.get("image", ""),
        "imageID": f"fakekube://{c.get('image', '')}",
        "ready": ready,
        "restartCount": 0,
        "started": "running" in state,
        "state": state,
    }


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: known names only, ``$$`` escapes."""
    return re.sub(r"\$\$|\$\((\w+)\)", lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), text)


def _make_mountpoint(target: Path, directory: bool) -> list[Path]:
    """Create the mount point on the host; return what was created, outermost first."""
    created = []
    for parent in reversed([target, *target.parents] if directory else list(target.parents)):
        if not parent.exists():
            parent.mkdir()
            created.append(parent)
    if not directory and not target.exists():
        target.touch()
        created.append(target)
    return created


def _termination_message(c: Obj, path: Path, log: ContainerLog, code: int) -> str:
    """What a kubelet reports: the file (4 KiB at most), or with FallbackToLogsOnError and
    a failed container, the log's tail (80 lines, 2 KiB at most)."""
    try:
        text = path.read_bytes()[:4096].decode(errors="replace")
    except OSError:
        text = ""
    if not text and code != 0 and c.get("terminationMessagePolicy") == "FallbackToLogsOnError":
        tail = b"".join(line for _, line in log.lines[-80:])[-2048:]
        text = tail.decode(errors="replace")
    return text


#: Host mount points (``/source/data``) are shared by every test process on the
#: machine: a pod here must not lose its bind mount because a kubelet of another
#: process removed the empty folder under it (the mount would vanish with it). A
#: running host pod holds a lock file of each of its mount points and their parents
#: shared; a kubelet removes a mount point it made only when it can take that one's
#: lock exclusively, that is when no pod anywhere mounts there or below.
MOUNTPOINT_LOCKS = Path(tempfile.gettempdir()) / "fakekube-kubelet-mountpoints"


def _lock_file(path: Path) -> Any:
    MOUNTPOINT_LOCKS.mkdir(mode=0o700, exist_ok=True)
    name = hashlib.sha256(str(path).encode()).hexdigest()[:32]
    return open(MOUNTPOINT_LOCKS / name, "a")  # noqa: SIM115 - the caller closes it


def _hold_mountpoints(targets: list[str]) -> list[Any]:
    paths = {p for t in targets for p in (Path(t), *Path(t).parents) if p != p.parent}
    handles = []
    for path in sorted(paths):  # one order everywhere
        handle = _lock_file(path)
        fcntl.flock(handle, fcntl.LOCK_SH)
        handles.append(handle)
    return handles


@contextlib.contextmanager
def _sole_user_of(path: Path) -> Iterator[bool]:
    with _lock_file(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def _remove_if_empty(path: Path) -> None:
    try:
        if path.is_dir():
            path.rmdir()
        elif path.stat().st_size == 0:
            path.unlink()
    except OSError:
        pass


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """When the main process ends, so does the rest of the container (as when PID 1 exits)."""
    proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill the container's whole process group: TERM, then KILL after 2 s."""
    for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue
