"""What each generated DAG says about itself (``doc_md``), and the Recovery manifest
that restores a target's snapshot (shown in DAG docs and on the Stash page).

Documents are built from the plans and the resources they came from; Secrets appear
only as references (name and keys), never with a value. Every value in them is a
tenant's, so each is shown as code (inline or in a fence longer than any backtick run
it holds), never as Markdown or HTML of its own.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

import yaml

from .. import API_VERSION
from ..api.errors import ResourceError
from ..api.resources import Recovery, Repository, Restic
from .maintenance import MaintenancePlan
from .model import BackupPlan, RecoveryPlan, SecretEnv, Step, TargetRef
from .schedules import describe_schedule
from .templates import RESTORE_IF_EMPTY, TEMPLATE

RESTORE_PLACEHOLDER = "/path/to/an/empty/folder"


def code(value: object) -> str:
    """``value`` as inline code, whatever backticks it holds."""
    text = str(value).replace("\n", " ")
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    return f"{fence} {text} {fence}"


def block(text: str, lang: str = "yaml") -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


def manifest(obj: Restic | Recovery | Repository | None) -> str:
    """The resource as YAML, without status (a Repository's spec holds only the storage
    Secret's name)."""
    if obj is None:
        return "(not available)"
    data = obj.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"status"})
    return _yaml_of_json(json.dumps(data))


@functools.lru_cache(maxsize=256)
def _yaml_of_json(text: str) -> str:
    """The YAML of a JSON document, remembered: one Repository shared by 10,000 targets
    is in each of their docs, and PyYAML's emitter was most of the index build (the C
    emitter is faster but writes some hostile strings differently)."""
    return yaml.safe_dump(json.loads(text), sort_keys=False)


def secret_references(step: Step) -> str:
    """``Secret demo/x: RESTIC_PASSWORD (required), CA_CERT_DATA (optional)``."""
    by_secret: dict[str, list[SecretEnv]] = {}
    for ref in step.secret_env:
        by_secret.setdefault(f"{ref.namespace or step.namespace}/{ref.secret}", []).append(ref)
    if not by_secret:
        return "none"
    return "; ".join(
        f"Secret {code(name)}: "
        + ", ".join(f"{r.key} ({'optional' if r.optional else 'required'})" for r in refs)
        for name, refs in sorted(by_secret.items())
    )


def _repository_url(step: Step) -> str:
    return dict(step.env).get("RESTIC_REPOSITORY", "?")


def recovery_manifest(
    target: TargetRef,
    paths: tuple[str, ...],
    snapshot: str = "latest",
    destination: str = RESTORE_PLACEHOLDER,
    name: str | None = None,
) -> dict[str, Any]:
    """A Recovery that restores ``snapshot`` of ``target`` (every folder it backs up)
    into ``destination`` (one sub-folder per folder when there are several)."""
    short = snapshot[:8] if snapshot != "latest" else "latest"
    recover_to = []
    for path in paths:
        where = destination if len(paths) == 1 else f"{destination.rstrip('/')}{path}"
        recover_to.append({"mountPath": path, "hostPath": {"path": where}})
    return {
        "apiVersion": API_VERSION,
        "kind": "Recovery",
        "metadata": {
            "name": name or f"{target.restic_name}-{short}-restore"[:63].rstrip("-."),
            "namespace": target.restic_namespace,
        },
        "spec": {
            "targetType": "Volume",
            "repository": {
                "name": target.repository_name,
                "namespace": target.repository_namespace,
            },
            "volumeRestorer": {
                "repoDir": target.repo_dir,
                "snapshot": snapshot,
                "restic": target.restic_name,
                "target": target.target,
                "recoverTo": recover_to,
            },
        },
    }


def _run_now(dag_id: str, conf: str | None = None) -> str:
    """How to start a run by hand; ``conf``: an example of the params a run takes."""
    trigger = f"airflow dags trigger {dag_id}" + (f" --conf '{conf}'" if conf else "")
    page = ", the *Back up now* button of the *Stash* page" if conf else ""
    return f"**Run it now:** the ▶ *Trigger* button of this DAG{page}, or\n\n{block(trigger, 'sh')}"


def deprecation(warning: ResourceError | None) -> list[str]:
    """The note on an object read in Stash 0.8's shape: the manifests this doc shows
    are its new form."""
    if warning is None:
        return []
    return [
        f"**Deprecated:** {warning}. The manifests below are its new form; run "
        "`stash migrate FILE` to rewrite the file with them."
    ]


def backup_doc(
    plan: BackupPlan,
    restic: Restic | None,
    repository: Repository | None,
    warning: ResourceError | None = None,
) -> str:
    t = plan.target
    restore = yaml.safe_dump(recovery_manifest(t, plan.snapshot_paths), sort_keys=False)
    kind = repository.spec.backend.kind if repository else "?"
    return "\n\n".join(
        [
            f"### Stash backup of {code(t.target)} for {_owner(plan)}",
            plan.description,
            *deprecation(warning),
            f"**Schedule:** {describe_schedule(plan.schedule, plan.paused)}.",
            f"**Where the data goes:** Repository "
            f"{code(f'{t.repository_namespace}/{t.repository_name}')} ({kind} backend), "
            f"restic repository {code(_repository_url(plan.backup))} (repoDir "
            f"{code(t.repo_dir)}), one snapshot per folder: "
            + ", ".join(code(p) for p in plan.snapshot_paths)
            + ".",
            f"**Secrets used (references only):** {secret_references(plan.backup)}.",
            _run_now(plan.dag_id, '{"retention": false}')
            + "\n\n(the `retention` param, default "
            + ("true" if plan.retention else "false")
            + ", applies the retention policy after the backup).",
            "**Restore:** the *Restore* button of a snapshot on the *Stash* page, or write "
            "this Recovery next to the other manifests (set `snapshot` to an id for an older "
            "one, and `recoverTo` to an empty folder):\n\n" + block(restore),
            *([] if plan.owner else ["**From Restic:**\n\n" + block(manifest(restic))]),
            "**Repository:**\n\n" + block(manifest(repository)),
        ]
    )


def _owner(plan: BackupPlan) -> str:
    t = plan.target
    if plan.owner is None:
        return "Restic " + code(f"{t.restic_namespace}/{t.restic_name}")
    kind, ns, name = plan.owner
    return f"{kind} {code(f'{ns}/{name}')} (its annotation {code(TEMPLATE)})"


def recovery_doc(
    plan: RecoveryPlan,
    recovery: Recovery | None,
    repo: Repository | None,
    warning: ResourceError | None = None,
) -> str:
    kind = repo.spec.backend.kind if repo else "?"
    return "\n\n".join(
        [
            f"### Stash recovery {code(f'{plan.namespace}/{plan.name}')}",
            plan.description,
            *deprecation(warning),
            _recovery_schedule(plan),
            f"**Where the data comes from:** Repository "
            f"{code(f'{plan.repository_namespace}/{plan.repository_name}')} ({kind} backend), "
            f"restic repository {code(_repository_url(plan.restore))}; it is restored into "
            + ", ".join(code(p) for p in plan.paths)
            + " as the Recovery's `recoverTo` says.",
            f"**Secrets used (references only):** {secret_references(plan.restore)}.",
            _run_now(plan.dag_id)
            + (
                "\n\n(again: a folder that is not empty is skipped, never written)."
                if plan.owner
                else "\n\n(again: a non-empty target is refused unless `overwrite` is set)."
            ),
            *([] if plan.owner else ["**From Recovery:**\n\n" + block(manifest(recovery))]),
        ]
    )


def _recovery_schedule(plan: RecoveryPlan) -> str:
    if plan.owner is None:
        return (
            "**Schedule:** once, as soon as Airflow sees the Recovery; its status (phase and "
            "per-path results) shows on the *Stash* page."
        )
    kind, ns, name = plan.owner
    return (
        f"**Schedule:** once, when Airflow first sees {kind} {code(f'{ns}/{name}')} with "
        f"its annotation {code(RESTORE_IF_EMPTY)} (a workload recreated with a new uid "
        "gets a new DAG); each folder that is not empty is left untouched and reported "
        "`Skipped` in the `update_status` task's log and result."
    )


def maintenance_doc(plan: MaintenancePlan, repository: Repository | None) -> str:
    first = plan.checks[0].step
    subset = (
        f"`restic check --read-data-subset={plan.read_data_subset}` (the structure and that "
        "part of the data)"
        if plan.read_data_subset
        else "`restic check` (the structure; `[stash] check_read_data_subset` reads data too)"
    )
    dirs = "\n".join(
        f"- {code(c.repo_dir)}: " + ", ".join(code(t.target) for t in c.targets)
        for c in plan.checks
    )
    return "\n\n".join(
        [
            f"### Stash maintenance of Repository {code(f'{plan.namespace}/{plan.name}')}",
            plan.description,
            f"**Schedule:** {describe_schedule(plan.schedule)} (`[stash] maintenance_schedule`).",
            f"**What it does:** for each restic repository below: clears stale locks only "
            f"(locks whose process is gone or that were not refreshed for 30 minutes), runs "
            f"{subset}, counts snapshots and measures the size; the result goes to the "
            "Repository's `status.lastCheck`, the targets' snapshot counts and the "
            "`stash_repository_*` metrics. A failed check makes the run red.",
            "**Restic repositories (repoDir: targets):**\n\n" + dirs,
            f"**Secrets used (references only):** {secret_references(first)}.",
            _run_now(plan.dag_id),
            "**Repository:**\n\n" + block(manifest(repository)),
        ]
    )
