"""A step as a Kubernetes Pod manifest (plain data; no kubernetes client).

The pod runs the same argv with the same environment names as the local runtime;
credentials come only through ``secretKeyRef``, and the agent's result travels back
in the container's termination message (read by the operator from the pod status).
"""

from __future__ import annotations

import hashlib
from copy import deepcopy
from typing import Any

from .. import GROUP
from ..api.resources import AGENT_CAPABILITIES
from .model import Step

CONTAINER = "base"  # the name KubernetesPodOperator follows for logs and exit codes
TERMINATION_LOG = "/dev/termination-log"
GROUP_LABEL = GROUP
#: Agent pod names (and so host names in restic locks) start with this: a lock of such
#: a host whose pod is gone may be removed (``stash_plugin.agent.clear_dead_locks``).
AGENT_POD_PREFIX = "stash-"

#: The container's security context unless ``runtimeSettings.container.securityContext``
#: sets one. The agent image runs as root so that a backup reads files of every owner
#: (mode 0600 included) and a restore gives each file back its owner and mode; of
#: root's powers it keeps only those: reading past permissions, changing owners, modes
#: and times of files it does not own, and keeping set-group-id bits.
AGENT_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {
        "drop": ["ALL"],
        "add": list(AGENT_CAPABILITIES),
    },
}


def label_value(value: str) -> str:
    """Kubernetes label values hold at most 63 characters: longer names are cut and end
    in a short hash, so that two long names stay apart."""
    if len(value) <= 63:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:8]
    return f"{value[:54].rstrip('-._')}-{digest}"


def security_context(tenant: dict[str, Any] | None) -> dict[str, Any]:
    """The agent's own context with a Restic's settings laid over it.

    Replacing it outright would hand the container the runtime's default capabilities
    (``NET_RAW``, ``SETUID``, ...) as soon as a Restic sets, say, ``runAsUser``. The API
    refuses settings that widen it; here every capability stays dropped but those the
    tenant keeps of the agent's own.
    """
    context = deepcopy(AGENT_SECURITY_CONTEXT)
    for key, value in (tenant or {}).items():
        if key != "capabilities":
            context[key] = deepcopy(value)
            continue
        if "add" in (value or {}):
            context["capabilities"]["add"] = list(value["add"] or [])
    return context


def _env(step: Step) -> list[dict[str, Any]]:
    for ref in step.secret_env:
        if ref.namespace not in (None, step.namespace):  # planning refuses this already
            raise ValueError(
                f"{step.subject}: a pod in namespace {step.namespace} cannot read Secret "
                f"{ref.namespace}/{ref.secret}"
            )
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in step.env]
    env += [
        {
            "name": ref.name,
            "valueFrom": {
                "secretKeyRef": {"name": ref.secret, "key": ref.key, "optional": ref.optional}
            },
        }
        for ref in step.secret_env
    ]
    env.append({"name": "STASH_TERMINATION_MESSAGE_PATH", "value": TERMINATION_LOG})
    return env


def _volumes(step: Step) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: dict[str, dict[str, Any]] = {}
    mounts: list[dict[str, Any]] = []
    for m in step.mounts:
        volumes.setdefault(m.name, {"name": m.name, **m.source})
        mount: dict[str, Any] = {"name": m.name, "mountPath": m.path}
        if m.read_only:
            mount["readOnly"] = True
        mounts.append(mount)
    return list(volumes.values()), mounts


def pod_manifest(step: Step, image: str) -> dict[str, Any]:
    """The pod that runs ``step``; ``image`` is the BackupAgent's (or the default agent)."""
    settings = step.runtime_settings or {}
    pod_settings: dict[str, Any] = dict(settings.get("pod") or {})
    container_settings: dict[str, Any] = dict(settings.get("container") or {})
    volumes, mounts = _volumes(step)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        ("args" if step.keep_entrypoint else "command"): list(step.argv),
        "env": _env(step) + list(container_settings.get("env") or []),
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if container_settings.get("resources"):
        container["resources"] = container_settings["resources"]
    container["securityContext"] = security_context(container_settings.get("securityContext"))
    labels = {f"{GROUP_LABEL}/{k}": label_value(v) for k, v in step.labels}
    labels.update(pod_settings.get("labels") or {})
    spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container], "volumes": volumes}
    if step.node_name:
        spec["nodeName"] = step.node_name
    for key in (
        "nodeSelector",
        "tolerations",
        "affinity",
        "securityContext",
        "serviceAccountName",
        "imagePullSecrets",
        "priorityClassName",
    ):
        if pod_settings.get(key):
            spec[key] = pod_settings[key]
    metadata: dict[str, Any] = {"labels": labels}
    if pod_settings.get("annotations"):
        metadata["annotations"] = dict(pod_settings["annotations"])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
