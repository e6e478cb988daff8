"""Storage backends of a Repository: the places restic can keep a repository.

The shapes are Stash's (``local``, ``s3``, ``gcs``, ``azure``, ``swift``, ``b2``,
``rest`` plus ``storageSecretName``) so that Stash 0.8 manifests keep working.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator, model_validator

from .common import AbsolutePath, Model, Name, RelativePrefix, clean_path


class HostPathSource(Model):
    path: AbsolutePath
    type: str | None = None


class NFSSource(Model):
    server: str
    path: AbsolutePath
    read_only: bool = False


class PVCSource(Model):
    claim_name: Name
    read_only: bool = False


class LocalSpec(Model):
    """A repository on a volume mounted into the agent at ``mountPath``.

    The volume source is inline, as in Stash (``hostPath``, ``nfs``,
    ``persistentVolumeClaim``...). Sources we do not model yet are kept as raw
    mappings for the Kubernetes runtime to pass through.
    """

    mount_path: AbsolutePath
    sub_path: RelativePrefix | None = None
    host_path: HostPathSource | None = None
    nfs: NFSSource | None = None
    persistent_volume_claim: PVCSource | None = None
    empty_dir: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> LocalSpec:
        sources = [self.host_path, self.nfs, self.persistent_volume_claim, self.empty_dir]
        if sum(s is not None for s in sources) != 1:
            raise ValueError(
                "exactly one volume source is needed (hostPath, nfs, persistentVolumeClaim "
                "or emptyDir)"
            )
        return self


class S3Spec(Model):
    endpoint: str | None = None
    bucket: str = Field(min_length=1)
    prefix: RelativePrefix | None = None
    region: str | None = None


class GCSSpec(Model):
    bucket: str = Field(min_length=1)
    prefix: RelativePrefix | None = None
    max_connections: int | None = Field(default=None, ge=1)


class AzureSpec(Model):
    container: str = Field(min_length=1)
    prefix: RelativePrefix | None = None
    max_connections: int | None = Field(default=None, ge=1)


class SwiftSpec(Model):
    container: str = Field(min_length=1)
    prefix: RelativePrefix | None = None


class B2Spec(Model):
    bucket: str = Field(min_length=1)
    prefix: RelativePrefix | None = None
    max_connections: int | None = Field(default=None, ge=1)


class RestSpec(Model):
    """A restic REST server. Credentials never go in ``url`` (it is shown in DAG docs):
    put ``RESTIC_REST_USERNAME``/``RESTIC_REST_PASSWORD`` in the storage Secret."""

    url: str = Field(min_length=1, pattern=r"^https?://[^@/]+(/.*)?$")

    @field_validator("url", mode="before")
    @classmethod
    def _no_userinfo(cls, value: object) -> object:
        if isinstance(value, str) and "@" in value.split("/", 3)[2 if "//" in value else 0]:
            raise ValueError(
                "must not contain credentials; put RESTIC_REST_USERNAME and "
                "RESTIC_REST_PASSWORD in the storage Secret"
            )
        return value

    @field_validator("url")
    @classmethod
    def _clean_url_path(cls, value: str) -> str:
        # The URL's path is a folder on a shared server: '..' (even percent-encoded)
        # would reach another tenant's repository.
        path = urlsplit(value).path
        if path:
            clean_path(unquote(path))
        return value


BACKEND_KINDS = ("local", "s3", "gcs", "azure", "swift", "b2", "rest")


class Backend(Model):
    """Exactly one storage location plus the Secret holding its credentials.

    ``storageSecretName`` names a Secret in the Repository's namespace whose keys
    (``RESTIC_PASSWORD``, ``AWS_ACCESS_KEY_ID``...) become the agent's environment.
    """

    storage_secret_name: Name | None = None
    local: LocalSpec | None = None
    s3: S3Spec | None = None
    gcs: GCSSpec | None = None
    azure: AzureSpec | None = None
    swift: SwiftSpec | None = None
    b2: B2Spec | None = None
    rest: RestSpec | None = None

    @model_validator(mode="after")
    def _one_backend(self) -> Backend:
        chosen = [k for k in BACKEND_KINDS if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError(
                f"exactly one backend is needed ({', '.join(BACKEND_KINDS)}); got "
                f"{', '.join(chosen) or 'none'}"
            )
        return self

    @property
    def kind(self) -> str:
        return next(k for k in BACKEND_KINDS if getattr(self, k) is not None)
