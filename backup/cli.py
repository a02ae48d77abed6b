"""The ``tillflow backup`` subcommands; ``tillflow/cli.py`` parses their arguments.

Each prints what it did on stdout and returns 0, or raises a ``BackupError``
that the CLI prints as one line before exiting 1. SIGTERM stops a running
pg_dump or pg_restore, and the command cleans up after it.
"""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import TextIO

from backup import dump, metrics, verify
from backup.context import Context
from backup.errors import RestoreError, VerifyError
from backup.schedule import Scheduler
from backup.tools import Server
from tillflow.config import Settings


def _context(settings: Settings, directory: Path | None = None) -> Context:
    ctx = Context.from_settings(settings, directory=directory)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: ctx.tools.stop.set())
    return ctx


def _size(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def cli_run(settings: Settings, *, out: TextIO | None = None) -> int:
    """``tillflow backup run``: one backup now, then retention."""
    out = out or sys.stdout
    result = dump.run(_context(settings))
    manifest = result.backup.manifest
    print(
        f"backup {manifest.name}: {manifest.transactions.rows} rows of {manifest.transactions.table}, "
        f"{_size(manifest.size_bytes)}, {result.duration_seconds:.1f}s, in {result.backup.directory}",
        file=out,
    )
    for name in result.pruned:
        print(f"pruned {name}", file=out)
    return 0


def cli_list(settings: Settings, *, out: TextIO | None = None) -> int:
    """``tillflow backup list``: the backups, newest first, with what verified them."""
    out = out or sys.stdout
    ctx = _context(settings)
    backups = ctx.store.backups()
    if not backups:
        print(f"no backup in {ctx.store.directory}", file=out)
        return 0
    print(f"{'NAME':<34} {'TAKEN (UTC)':<20} {'ROWS':>10} {'SIZE':>9}  {'CHECKED':<8} RESTORE-TESTED", file=out)
    for backup in backups:
        manifest = backup.manifest
        quick, full = backup.verifications.get("quick"), backup.verifications.get("full")
        checked = "-" if quick is None else ("ok" if quick.ok else "FAILED")
        tested = "-" if full is None else f"{'ok' if full.ok else 'FAILED'} {full.at}"
        print(
            f"{manifest.name:<34} {manifest.created_at:<20} {manifest.transactions.rows:>10} "
            f"{_size(manifest.size_bytes):>9}  {checked:<8} {tested}",
            file=out,
        )
    print(f"{len(backups)} backup{'' if len(backups) == 1 else 's'} in {ctx.store.directory}", file=out)
    return 0


def cli_verify(settings: Settings, names: list[str], *, full: bool, out: TextIO | None = None) -> int:
    """``tillflow backup verify [NAME...] [--full]``."""
    out = out or sys.stdout
    ctx = _context(settings)
    outcomes = verify.run_pass(ctx, names or None, full=full)
    if not outcomes:
        raise VerifyError(f"no backup in {ctx.store.directory} to verify")
    for backup, outcome in outcomes:
        print(f"{backup.name}  {outcome.kind:<5}  {'ok' if outcome.ok else 'FAILED'}  {outcome.detail}", file=out)
    failed = [outcome for _, outcome in outcomes if not outcome.ok]
    if failed:
        raise VerifyError(f"{len(failed)} of {len(outcomes)} verifications failed; first: {failed[0].detail}")
    return 0


def cli_restore(
    settings: Settings, file: str, *, target: str | None, replace: bool, yes: bool, out: TextIO | None = None
) -> int:
    """``tillflow backup restore FILE [--target NAME] [--replace --yes]``."""
    from backup.restore import restore

    out = out or sys.stdout
    live = Server.from_url(settings.database_url).dbname if settings.database_url else "of DATABASE_URL"
    if replace and target:
        raise RestoreError("--replace restores over the database of DATABASE_URL; it takes no --target")
    if replace and not yes:
        raise RestoreError(
            f"--replace overwrites database {live} with the backup (its present contents are kept under "
            "another name): add --yes to go ahead"
        )
    ctx = _context(settings, directory=settings.backup_dir or Path(file).parent)
    backup = ctx.store.find(file)
    result = restore(ctx, backup, target=target, replace=replace)
    print(
        f"restored {backup.name} (taken {backup.manifest.created_at}) into database {result.database}: "
        f"{result.rows} rows of {backup.manifest.transactions.table}, checksum as in the manifest, "
        f"{result.duration_seconds:.1f}s",
        file=out,
    )
    if result.previous:
        print(
            f"the previous contents of {result.database} are kept as database {result.previous}: what was "
            "stored after the backup is there; DROP DATABASE it when you no longer need it",
            file=out,
        )
    if result.created_roles:
        print(
            f"created roles {', '.join(result.created_roles)}: a backup holds no passwords, so set them with "
            "`tillflow migrate` (make migrate) before the services connect",
            file=out,
        )
    return 0


def cli_schedule(settings: Settings) -> int:
    """``tillflow backup schedule``: the backup service."""
    ctx = _context(settings)
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
    Scheduler(ctx, settings.backup_schedule, settings.backup_verify_schedule, settings.reconcile_schedule).run()
    return 0
