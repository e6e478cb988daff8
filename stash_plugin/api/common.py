"""Shared building blocks of the resource models.

Every model forbids unknown fields: a typo in a manifest must be an error that names
the field, never a silently ignored setting (a backup that quietly ignores its
retention policy is worse than one that refuses to start).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class Model(BaseModel):
    """Base of all resource models: camelCase keys, unknown keys rejected, immutable."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
    )


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _dns_subdomain(value: str) -> str:
    if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        raise ValueError(
            f"{value!r} is not a valid Kubernetes name (lower-case letters, digits, '-' and '.')"
        )
    return value


def _dns_label(value: str) -> str:
    if len(value) > 63 or not _DNS_LABEL.match(value):
        raise ValueError(f"{value!r} is not a valid namespace (lower-case letters, digits, '-')")
    return value


def _absolute_path(value: str) -> str:
    # Paths are passed to restic as argv: a relative path or one starting with '-'
    # could be read as a flag, so only clean absolute paths are accepted.
    if not value.startswith("/"):
        raise ValueError(f"{value!r} must be an absolute path")
    if "\x00" in value or "\n" in value:
        raise ValueError("path must not contain NUL or newline characters")
    return value


Name = Annotated[str, AfterValidator(_dns_subdomain)]
Namespace = Annotated[str, AfterValidator(_dns_label)]
AbsolutePath = Annotated[str, AfterValidator(_absolute_path)]


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
