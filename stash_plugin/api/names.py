"""Kubernetes object and namespace names: the checks every layer shares (the models,
the planner, the ``[stash]`` settings). Plain ``re``, no pydantic: the settings are
read before every task.
"""

from __future__ import annotations

import re

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def dns_subdomain(value: str) -> str:
    if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        raise ValueError(
            f"{value!r} is not a valid Kubernetes name (lower-case letters, digits, '-' and '.')"
        )
    return value


def dns_label(value: str) -> str:
    if len(value) > 63 or not _DNS_LABEL.match(value):
        raise ValueError(f"{value!r} is not a valid namespace (lower-case letters, digits, '-')")
    return value
