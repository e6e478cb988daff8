"""The ``stash`` command: check manifests, show plans and status, write a demo."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .api.errors import ResourceError
from .api.resourceset import ResourceSet
from .migrate import dump_documents
from .plan import PlanSet, make_plans
from .plan.model import Step
from .source import load_directory


def _plans(folder: str, runtime: str) -> PlanSet:
    return make_plans(load_directory(folder), runtime)  # type: ignore[arg-type]


def _print_errors(errors: list[ResourceError]) -> None:
    for e in errors:
        print(f"error: {e}", file=sys.stderr)


def _print_warnings(resources: ResourceSet) -> None:
    """Each object read in Stash 0.8's shape, and the new form it was read as."""
    for _key, legacy in sorted(resources.converted.items()):
        print(f"warning: {legacy.warning}", file=sys.stderr)
        for line in dump_documents(legacy.converted.documents).splitlines():
            print(f"    {line}", file=sys.stderr)


def cmd_validate(args: argparse.Namespace) -> int:
    resources = load_directory(args.folder)
    plans = make_plans(resources, args.runtime)
    _print_warnings(resources)
    _print_errors(plans.errors)
    print(
        f"{len(plans.backups)} backup DAG(s), {len(plans.recoveries)} recovery DAG(s), "
        f"{len(plans.errors)} error(s)"
        + (f", {len(plans.warnings)} deprecated object(s)" if plans.warnings else "")
    )
    return 1 if plans.errors else 0


def _step_text(step: Step) -> str:
    env = ", ".join(f"{k}={v}" for k, v in step.env)
    secrets = ", ".join(f"{s.name}<-{s.secret}[{s.key}]" for s in step.secret_env if not s.optional)
    return (
        f"    {step.task_id}: {json.dumps(list(step.argv))}\n      env: {env}; secrets: {secrets}"
    )


def cmd_plan(args: argparse.Namespace) -> int:
    plans = _plans(args.folder, args.runtime)
    for dag_id, plan in sorted(plans.backups.items()):
        sched = plan.schedule
        print(f"{dag_id}  schedule={sched.kind}:{sched.value}{' (paused)' if plan.paused else ''}")
        steps = [plan.backup, plan.retention, plan.verify]
        for step in steps:
            if step is not None:
                print(_step_text(step))
        print("    update_status")
    for dag_id, rplan in sorted(plans.recoveries.items()):
        print(f"{dag_id}  schedule=once")
        print(_step_text(rplan.restore))
        print("    update_status")
    _print_errors(plans.errors)
    return 1 if plans.errors else 0


def cmd_status(args: argparse.Namespace) -> int:
    """Every readable status on stdout; each unreadable file named on stderr, exit 1."""
    from .runtime.status import LocalStatusStore

    state = Path(args.state_dir) if args.state_dir else _settings().state_dir
    statuses, bad = LocalStatusStore(state).all_statuses()
    if args.json:
        print(json.dumps(statuses, indent=2))
    else:
        _print_statuses(statuses, state, none_bad=not bad)
    for obj, exc in bad.items():
        print(
            f"error: {obj}: status file {exc}; its next run keeps it aside and starts afresh",
            file=sys.stderr,
        )
    return 1 if bad else 0


def _print_statuses(statuses: dict[str, dict[str, Any]], state: Path, none_bad: bool) -> None:
    if not statuses and none_bad:
        print(f"no status recorded yet under {state}")
    for obj, status in statuses.items():
        print(obj)
        for entry in status.get("backupRepos", []):
            print(
                f"  {entry.get('workloadKind')}/{entry.get('workloadName')} "
                f"({entry['resticNamespace']}/{entry['resticName']}) {entry['repoDir']}: "
                f"{entry.get('backupCount', 0)} backup(s), last {entry.get('lastBackupTime', '-')} "
                f"took {entry.get('lastBackupDuration', '-')}, "
                f"{entry.get('snapshotCount', '-')} snapshot(s)"
                + (
                    f", last failure {entry.get('lastFailureTime', '-')}: {entry['lastFailure']}"
                    if entry.get("lastFailure")
                    else ""
                )
            )
        if "phase" in status:
            print(f"  phase {status['phase']}")
            for st in status.get("stats", []):
                print(f"    {st['path']}: {st['phase']} {st.get('duration') or ''}")


def cmd_sync(args: argparse.Namespace) -> int:
    """Copy the cluster's Stash objects and workloads into a snapshot file."""
    from .runtime.kube import hook
    from .sync import sync_forever, sync_once

    settings = _settings()
    out = Path(args.output) if args.output else settings.manifests_dir
    # The index is of [stash] manifests_dir: only a snapshot written there changes it.
    source = settings.manifests_dir.resolve()
    indexed = out.resolve() == source or source in out.resolve().parents

    def client():  # type: ignore[no-untyped-def]
        return hook(args.conn_id or settings.kubernetes_conn_id).api_client

    if args.once:
        try:
            changed = sync_once(client(), out)
        except Exception as exc:
            print(f"error: cluster sync failed, {out} left as it was: {exc}", file=sys.stderr)
            return 1
        print(f"{out} {'updated' if changed else 'unchanged'}")
        if changed and indexed:
            _index_after_write()
        return 0
    sync_forever(
        client, out, interval=args.interval, on_write=_index_after_write if indexed else None
    )
    return 0


def cmd_discover(args: argparse.Namespace) -> int:
    """Repositories found under a backend prefix on stderr; the Repository objects to
    recreate on stdout, in ``--out``, or created in the cluster with ``--apply``."""
    import os

    import yaml

    from .discover import (
        DiscoverError,
        apply_objects,
        discover,
        manifest_file_name,
        report_lines,
        secret_env,
    )

    try:
        env = secret_env(Path(args.secret) if args.secret else None, os.environ)
        found = discover(args.url, env)
    except DiscoverError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    for line in report_lines(found):
        print(line, file=sys.stderr)
    ok = not found.failed
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for (ns, name), manifest in sorted(found.objects.items()):
            path = out / manifest_file_name(ns, name)
            path.write_text(yaml.safe_dump(manifest, sort_keys=False))
            print(f"wrote {path}", file=sys.stderr)
    elif not args.apply:
        docs = [m for _, m in sorted(found.objects.items())]
        if docs:
            sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False))
    if args.apply:
        from .runtime.kube import hook

        kube = hook(args.conn_id or _settings().kubernetes_conn_id)
        lines, applied = apply_objects(
            found.objects, set(args.namespace), kube.custom_object_client, kube.core_v1_client
        )
        for line in lines:
            print(line, file=sys.stderr)
        ok = ok and applied
    return 0 if ok else 1


def cmd_migrate(args: argparse.Namespace) -> int:
    """Stash 0.8 manifests in the new shape: on stdout, in place (a backup copy of
    each rewritten file is kept), or applied to the cluster."""
    from .migrate import migrate, rewrite

    result = migrate([Path(p) for p in args.files])
    if result.errors:
        _print_errors(result.errors)
        print("nothing written: fix the errors first", file=sys.stderr)
        return 1
    converted = [ref for f in result.files for ref in f.converted]
    if args.apply:
        from .runtime.kube import hook
        from .sync import apply_objects

        api_client = hook(args.conn_id or _settings().kubernetes_conn_id).api_client
        for line in apply_objects(api_client, result.stash_objects):
            print(line)
    if args.in_place:
        for f in result.files:
            backup = rewrite(f)
            if backup is not None:
                print(f"{f.path}: {', '.join(f.converted)} rewritten (was kept as {backup})")
        if not converted:
            print("nothing to migrate: no Stash 0.8 Restic or Recovery")
    if not args.apply and not args.in_place:
        sys.stdout.write(dump_documents(result.documents))
    for ref in converted:
        print(f"migrated: {ref}", file=sys.stderr)
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    """Build the DAG index now, so that the DAG processor's shards only read it."""
    from .factory import build_index_in_background, refresh_index

    start = time.monotonic()
    if args.settings_file:  # started by a DAG file, which handed over the build lock
        index, built = build_index_in_background(Path(args.settings_file))
    else:
        index, built = refresh_index(_settings())
    took = time.monotonic() - start
    state = "built" if built else "already up to date"
    print(f"DAG index {state}: {len(index.dag_ids)} DAGs in {took:.2f} s")
    return 0


def _index_after_write() -> None:
    """Refresh the index in a child process: planning every object takes far more
    memory than the sync's mirror, and the sync keeps running."""
    done = subprocess.run([sys.executable, "-m", "stash_plugin.cli", "index"], check=False)
    if done.returncode != 0:
        print("warning: stash index failed; the DAG processor builds it", file=sys.stderr)


def cmd_pools(args: argparse.Namespace) -> int:
    """Create the namespace pools the DAGs use with ``[stash] pools = true``."""
    from .factory import load_plans
    from .runtime.pools import ensure_pools, wanted_pools

    settings = _settings()
    names = wanted_pools(load_plans(settings))
    created = ensure_pools(names, args.slots or settings.pool_slots)
    for name in names:
        print(f"{name}: {'created' if name in created else 'exists'}")
    if not settings.pools:
        print("note: [stash] pools is off, so no task uses these pools yet", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import write_demo

    print(write_demo(Path(args.folder), schedule=args.schedule))
    return 0


def _settings():  # type: ignore[no-untyped-def]
    from .settings import load_settings

    return load_settings()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stash", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (
        ("validate", cmd_validate, "check every manifest; exit 1 naming each error"),
        ("plan", cmd_plan, "show the DAGs and steps the manifests make"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("folder", help="folder of manifests")
        p.add_argument("--runtime", choices=("local", "kubernetes"), default="local")
        p.set_defaults(func=func)
    p = sub.add_parser("status", help="show recorded Repository and Recovery status")
    p.add_argument("--state-dir", help="default: [stash] state_dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("sync", help="copy the cluster's Stash objects into a snapshot file")
    p.add_argument("--output", help="snapshot file (default: [stash] manifests_dir)")
    p.add_argument("--conn-id", help="Airflow Kubernetes connection (default: kubernetes_default)")
    p.add_argument("--once", action="store_true", help="sync once and exit")
    p.add_argument("--interval", type=float, default=10.0, help="least seconds between two writes")
    p.set_defaults(func=cmd_sync)
    p = sub.add_parser(
        "discover",
        help="find the repositories under a backend prefix and the Repository objects to "
        "recreate (disaster recovery)",
    )
    p.add_argument("url", help="a folder, s3:[http(s)://]HOST/BUCKET[/PREFIX], or one repository")
    p.add_argument(
        "--secret",
        help="a Secret manifest with RESTIC_PASSWORD and the backend's keys "
        "(default: the same variables from the environment)",
    )
    p.add_argument("--out", help="write one file per Repository into this folder")
    p.add_argument("--apply", action="store_true", help="create the Repositories in the cluster")
    p.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="with --apply: a namespace whose Repositories may be created (repeatable)",
    )
    p.add_argument("--conn-id", help="Airflow Kubernetes connection (default: kubernetes_default)")
    p.set_defaults(func=cmd_discover)

    p = sub.add_parser("migrate", help="rewrite Stash 0.8 Restics and Recoveries in the new shape")
    p.add_argument("files", nargs="+", help="manifest files")
    p.add_argument("--in-place", action="store_true", help="rewrite the files (FILE.bak kept)")
    p.add_argument("--apply", action="store_true", help="create or replace them in the cluster")
    p.add_argument("--conn-id", help="Airflow Kubernetes connection (default: kubernetes_default)")
    p.set_defaults(func=cmd_migrate)
    p = sub.add_parser("index", help="build the DAG index of [stash] manifests_dir now")
    # A DAG file's background build: its settings, and the build lock's descriptor it
    # inherits (held for as long as this process runs).
    p.add_argument("--settings-file", help=argparse.SUPPRESS)
    p.add_argument("--held-lock", type=int, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_index)
    p = sub.add_parser("pools", help="create the missing stash-ns-<namespace> Airflow pools")
    p.add_argument("--slots", type=int, help="slots of a new pool (default: [stash] pool_slots)")
    p.set_defaults(func=cmd_pools)
    p = sub.add_parser("demo", help="write the demo manifests and data under a folder")
    p.add_argument("folder")
    p.add_argument("--schedule", default="@every 1m")
    p.set_defaults(func=cmd_demo)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
