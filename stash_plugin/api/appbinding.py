"""AppBinding (``appcatalog.appscode.com/v1alpha1``): how KubeDB publishes a database.

A ``Restic`` or ``Recovery`` names one through ``AppRef``; it says what kind of
database it is (``spec.type``, such as ``kubedb.com/postgres``), where it listens
(``spec.clientConfig.url``, or ``spec.clientConfig.service`` with scheme, name, port
and path) and which Secret holds the login (``spec.secret.name``, keys ``username``
and ``password``). Like Secrets and workloads it is not Stash's object: only those
fields are read, and a field of the wrong shape is an error naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import FieldError

APPBINDING_API_VERSION = "appcatalog.appscode.com/v1alpha1"
USERNAME_KEY = "username"
PASSWORD_KEY = "password"


@dataclass(frozen=True)
class AppBinding:
    namespace: str
    name: str
    type: str
    """``spec.type`` as written (``kubedb.com/postgres``, ``postgres``, ``mysql``...)."""
    url: str | None
    """``spec.clientConfig.url``, or the URL made from ``spec.clientConfig.service``."""
    secret_name: str | None

    @property
    def ref(self) -> str:
        return f"AppBinding {self.namespace}/{self.name}"


def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    if not value:
        return {}
    if not isinstance(value, Mapping):
        raise FieldError(field, f"must be a mapping, not {type(value).__name__}")
    return value


def _text(value: Any, field: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise FieldError(field, f"must be a string, not {type(value).__name__}")
    return value


def parse_appbinding(doc: Mapping[str, Any], namespace: str, name: str) -> AppBinding:
    spec = _mapping(doc.get("spec"), "spec")
    client = _mapping(spec.get("clientConfig"), "spec.clientConfig")
    url = _text(client.get("url"), "spec.clientConfig.url")
    service = _mapping(client.get("service"), "spec.clientConfig.service")
    if url is None and service:
        scheme = _text(service.get("scheme"), "spec.clientConfig.service.scheme")
        svc = _text(service.get("name"), "spec.clientConfig.service.name")
        if scheme is None or svc is None:
            raise FieldError("spec.clientConfig.service", "needs scheme and name")
        port = service.get("port")
        if port is not None and (not isinstance(port, int) or isinstance(port, bool)):
            raise FieldError("spec.clientConfig.service.port", "must be a number")
        path = _text(service.get("path"), "spec.clientConfig.service.path") or ""
        host = f"{svc}.{namespace}.svc"
        url = (
            f"{scheme}://{host}"
            + (f":{port}" if port else "")
            + (path if path.startswith("/") or not path else "/" + path)
        )
    secret = _mapping(spec.get("secret"), "spec.secret")
    return AppBinding(
        namespace=namespace,
        name=name,
        type=_text(spec.get("type"), "spec.type") or "",
        url=url,
        secret_name=_text(secret.get("name"), "spec.secret.name"),
    )
