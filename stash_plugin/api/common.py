"""Shared building blocks of the resource models.

Every model forbids unknown fields: a typo in a manifest must be an error that names
the field, never a silently ignored setting (a backup that quietly ignores its
retention policy is worse than one that refuses to start).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from .names import dns_label, dns_subdomain


class Model(BaseModel):
    """Base of all resource models: camelCase keys, unknown keys rejected, immutable."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
    )


PATH_MAX = 4096
"""Longest path or prefix accepted (Linux's PATH_MAX): keeps every check bounded."""


def _segments(value: str) -> list[str]:
    """The folders of a path or prefix, refusing what could change its meaning.

    A ``..`` segment is refused outright, not normalised away: whatever it climbs out
    of, the value was written to reach a folder it does not belong to. Control
    characters (NUL, newline...) are refused because they cut or split the value in
    argv, logs and restic's own output. Empty and ``.`` segments mean nothing and are
    dropped.
    """
    if not value:
        raise ValueError("must not be empty")
    if len(value) > PATH_MAX:
        raise ValueError(f"is longer than {PATH_MAX} characters")
    if any(ord(c) < 0x20 or c == "\x7f" for c in value):
        raise ValueError("must not contain control characters (NUL, newline, tab...)")
    parts = [s for s in value.split("/") if s not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"{value!r} must not contain a '..' segment")
    return parts


def clean_path(value: str) -> str:
    """A clean absolute path: starts with ``/``, no ``..``, normalised on load.

    ``/a//b/./c/`` becomes ``/a/b/c`` (the same folder); ``/`` stays ``/``. Starting
    with ``/`` means restic or the agent can never read it as an option, and without
    ``..`` it stays under every folder it is lexically under.
    """
    if not value.startswith("/"):
        raise ValueError(f"{value!r} must be an absolute path (starting with '/')")
    return "/" + "/".join(_segments(value))


def clean_prefix(value: str) -> str:
    """A folder below a storage root (``prefix``, ``subPath``): relative, normalised.

    Leading and trailing ``/`` are dropped (it is always joined under a root), so
    ``/a//b/`` becomes ``a/b``. No segment may be ``..`` (it would climb out of the
    root, into another tenant's folder) or start with ``-``.
    """
    parts = _segments(value)
    if not parts:
        raise ValueError(f"{value!r} must name a folder (leave the field out for none)")
    if any(p.startswith("-") for p in parts):
        raise ValueError(f"{value!r}: no folder name may start with '-'")
    return "/".join(parts)


def path_under(path: str, root: str) -> bool:
    """Whether clean absolute ``path`` is ``root`` or inside it, folder by folder:
    ``/source/data2`` is not under ``/source/data``."""
    return path == root or path.startswith(root.rstrip("/") + "/")


Name = Annotated[str, AfterValidator(dns_subdomain)]
Namespace = Annotated[str, AfterValidator(dns_label)]
AbsolutePath = Annotated[str, AfterValidator(clean_path)]
"""Every absolute path a resource carries (see ``clean_path``)."""
RelativePrefix = Annotated[str, AfterValidator(clean_prefix)]
"""Every folder joined under a storage root (see ``clean_prefix``)."""


class ObjectMeta(Model):
    """The part of Kubernetes object metadata that Stash reads.

    Server-populated fields are accepted (manifests exported with ``kubectl get -o
    yaml`` carry them) but not used.
    """

    model_config = ConfigDict(extra="ignore", frozen=True, alias_generator=to_camel)

    name: Name
    namespace: Namespace | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None
    resource_version: str | None = None
    uid: str | None = None


class ObjectRef(Model):
    """A reference to a named object, optionally in another namespace."""

    name: Name
    namespace: Namespace | None = None


class LocalObjectReference(Model):
    name: Name


class LabelSelectorRequirement(Model):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)


class LabelSelector(Model):
    """A Kubernetes label selector (``matchLabels`` and ``matchExpressions``)."""

    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)

    def matches(self, labels: dict[str, str]) -> bool:
        """Whether ``labels`` satisfy every term; an empty selector matches nothing.

        Kubernetes treats an empty selector as "everything"; for a backup target that
        would silently back up every workload of the namespace, so we refuse it.
        """
        if not self.match_labels and not self.match_expressions:
            return False
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator == "In" and (not present or labels[req.key] not in req.values):
                return False
            if req.operator == "NotIn" and present and labels[req.key] in req.values:
                return False
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
        return True


class RetentionPolicy(Model):
    """restic ``forget`` options; a named policy that directories refer to."""

    name: str = Field(min_length=1)
    keep_last: int | None = Field(default=None, ge=0)
    keep_hourly: int | None = Field(default=None, ge=0)
    keep_daily: int | None = Field(default=None, ge=0)
    keep_weekly: int | None = Field(default=None, ge=0)
    keep_monthly: int | None = Field(default=None, ge=0)
    keep_yearly: int | None = Field(default=None, ge=0)
    keep_tags: list[str] = Field(default_factory=list)
    prune: bool = False
    dry_run: bool = False


class AppRef(Model):
    """A reference to an AppBinding (KubeDB and other operators publish one per database)."""

    name: Name
    namespace: Namespace | None = None
    api_version: str | None = None
    kind: str | None = None


class Credentials(Model):
    """Where a database's user and password live: keys of a Secret."""

    secret_name: Name
    namespace: Namespace | None = None
    user_key: str = "username"
    password_key: str = "password"


class ConnectionURL(Model):
    """A database reached by URL, for databases that no AppBinding describes."""

    url: str = Field(min_length=1)
    database: str | None = None
    credentials: Credentials | None = None


class SecretKeyRef(Model):
    """``valueFrom.secretKeyRef`` of a container env entry."""

    name: Name
    key: str
    optional: bool = False
