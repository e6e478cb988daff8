"""Errors that name the object and the field, so a user can find and fix them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def printable(text: str) -> str:
    """``text`` on one line: control characters (a newline in a hostile name or key)
    are shown escaped, so an error can never forge a second error line."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


@dataclass(frozen=True)
class ResourceError:
    """Why one object (or one document) could not be used.

    ``field`` is a dotted path such as ``spec.volumeSelector.targetVolumes[0].name``;
    ``origin`` is where the object came from (``file.yaml#2`` for the second document).
    Messages never carry a Secret's values.
    """

    kind: str
    namespace: str | None
    name: str | None
    field: str | None
    message: str
    origin: str | None = None

    @property
    def object_ref(self) -> str:
        if self.name is None:
            return self.kind or "document"
        if self.namespace:
            return f"{self.kind} {self.namespace}/{self.name}"
        return f"{self.kind} {self.name}"

    def __str__(self) -> str:
        where = f" ({self.origin})" if self.origin else ""
        field = f"{self.field}: " if self.field else ""
        return printable(f"{self.object_ref}: {field}{self.message}{where}")


class FieldError(ValueError):
    """A field of a plain Kubernetes object that Stash cannot read."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def field_path(loc: tuple[Any, ...]) -> str:
    """Turn a pydantic error location into ``a.b[0].c``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "":  # a key that is the empty string must still show where it is
            out += '[""]'
        else:
            out += ("." if out else "") + str(part)
    return out
