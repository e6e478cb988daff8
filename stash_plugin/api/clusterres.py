"""What a Cluster target may select: API groups as users write them, and the resources
every Kubernetes server has, so that a typo in a built-in name is refused when the
manifest is read rather than at two in the morning when the backup runs.

Custom resources can only be checked against the cluster itself (API discovery, in
the agent's dump step); names in the groups below cannot be custom, so they are
checked here, with the closest known name suggested.
"""

from __future__ import annotations

import difflib
import re

CORE = ""
"""The core group (``v1``): written as ``""``, ``core`` or ``v1``."""

BUILTIN_RESOURCES: dict[str, frozenset[str]] = {
    CORE: frozenset(
        "bindings componentstatuses configmaps endpoints events limitranges namespaces "
        "nodes persistentvolumeclaims persistentvolumes pods podtemplates "
        "replicationcontrollers resourcequotas secrets serviceaccounts services".split()
    ),
    "apps": frozenset(
        "controllerrevisions daemonsets deployments replicasets statefulsets".split()
    ),
    "batch": frozenset(["cronjobs", "jobs"]),
    "autoscaling": frozenset(["horizontalpodautoscalers"]),
    "policy": frozenset(["poddisruptionbudgets"]),
    "rbac.authorization.k8s.io": frozenset(
        ["clusterrolebindings", "clusterroles", "rolebindings", "roles"]
    ),
    "networking.k8s.io": frozenset(["ingressclasses", "ingresses", "networkpolicies"]),
    "storage.k8s.io": frozenset(
        "csidrivers csinodes csistoragecapacities storageclasses volumeattachments".split()
    ),
    "apiextensions.k8s.io": frozenset(["customresourcedefinitions"]),
    "scheduling.k8s.io": frozenset(["priorityclasses"]),
    "coordination.k8s.io": frozenset(["leases"]),
    "discovery.k8s.io": frozenset(["endpointslices"]),
    "node.k8s.io": frozenset(["runtimeclasses"]),
    "admissionregistration.k8s.io": frozenset(
        ["mutatingwebhookconfigurations", "validatingwebhookconfigurations"]
    ),
}

_GROUP = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_VERSION = re.compile(r"^v[0-9]+((alpha|beta)[0-9]+)?$")
_RESOURCE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$|^\*$")


def split_group(text: str) -> tuple[str, str | None]:
    """``apps/v1`` -> (``apps``, ``v1``); ``""``, ``core`` and ``v1`` are the core group.

    The specification's sample writes groups with their version; the version only
    picks which one to read (the server's preferred one when none is given)."""
    text = text.strip()
    if text in ("", "core"):
        return CORE, None
    if _VERSION.match(text):
        return CORE, text
    group, sep, version = text.partition("/")
    if group == "core":
        group = CORE
    if group and not _GROUP.match(group) or len(group) > 253:
        raise ValueError(f"{text!r} is not an API group (such as '', 'apps' or 'apps/v1')")
    if sep and not _VERSION.match(version):
        raise ValueError(f"{text!r}: {version!r} is not an API version (such as v1 or v1beta1)")
    return group, version or None


def closest(name: str, known: set[str] | frozenset[str]) -> str:
    """`` (did you mean 'persistentvolumeclaims'?)`` or nothing."""
    match = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def resource_problem(group: str, name: str) -> str | None:
    """Why ``name`` cannot be a resource of ``group``, when that is known without a
    cluster: a malformed name, or a name no built-in group has."""
    if not _RESOURCE.match(name) or len(name) > 253:
        return f"{name!r} is not a resource name (lower-case plural such as 'deployments')"
    known = BUILTIN_RESOURCES.get(group)
    if known is None or name == "*" or name in known:
        return None
    where = f"group {group!r}" if group else "the core group"
    return f"{name!r} is not a resource of {where}{closest(name, known)}"
