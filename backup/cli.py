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

from backup import database, dump, metrics, recover, verify
from backup.context import Context
from backup.errors import RestoreError, VerifyError
from backup.schedule import Scheduler, longest_interval
from backup.tools import Server
from tillflow.config import Settings
from tillflow.errors import ConfigError, TillflowError


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
    for line in retention_check(settings, ctx):
        print(line, file=sys.stderr)
    failed = [outcome for _, outcome in outcomes if not outcome.ok]
    if failed:
        raise VerifyError(f"{len(failed)} of {len(outcomes)} verifications failed; first: {failed[0].detail}")
    return 0


def retention_check(settings: Settings, ctx: Context) -> list[str]:
    """Warnings, a line each, when Kafka's retention is too short for the backup schedule to cover."""
    if not settings.kafka_bootstrap_servers:
        return ["warning: KAFKA_BOOTSTRAP_SERVERS is not set: Kafka's retention against BACKUP_SCHEDULE "
                "was not checked"]
    try:
        interval = longest_interval(settings.backup_schedule, ctx.clock())
        return [f"warning: {line}" for line in recover.check_retention(settings, interval)]
    except TillflowError as exc:
        return [f"warning: Kafka's retention against BACKUP_SCHEDULE was not checked: {exc}"]


def cli_restore(
    settings: Settings, file: str, *, target: str | None, replace: bool, yes: bool, replay: bool = True,
    accept_loss: bool = False, out: TextIO | None = None,
) -> int:
    """``tillflow backup restore FILE [--target NAME] [--replace --yes [--accept-loss | --no-replay]]``."""
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
    if not replace and (accept_loss or not replay):
        raise RestoreError("--accept-loss and --no-replay go with --replace: a restore into a new database "
                           "replays nothing")
    replaying = replace and replay
    if replaying and not settings.kafka_bootstrap_servers:
        raise ConfigError("KAFKA_BOOTSTRAP_SERVERS is not set: a restore over the live database replays from Kafka "
                          "what was stored after the backup; set it, or add --no-replay")
    ctx = _context(settings, directory=settings.backup_dir or Path(file).parent)
    backup = ctx.store.find(file)
    if replaying:  # before anything changes: refused if Kafka lost records after the backup
        recover.check(settings, backup.manifest.positions, what=f"backup {backup.name}", accept_loss=accept_loss)
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
    if replaying:
        return _replay(settings, Server.from_url(settings.database_url), result.database, accept_loss, out)
    if replace:
        print("--no-replay: the consumer group's offsets were left as they were; what was stored after the "
              "backup is only in the previous database", file=out)
    return 0


def cli_replay(settings: Settings, *, accept_loss: bool, out: TextIO | None = None) -> int:
    """``tillflow backup replay [--accept-loss]``: point the consumer group at what the live database holds."""
    server = Server.from_url(settings.database_url)
    return _replay(settings, server, server.dbname, accept_loss, out or sys.stdout)


def _replay(settings: Settings, server: Server, dbname: str, accept_loss: bool, out: TextIO) -> int:
    positions = database.positions_of(server, dbname, error=RestoreError)
    plan = recover.set_offsets(settings, positions)
    for line in recover.describe(plan, settings.consumer_group):
        print(line, file=out)
    if plan.lost and not accept_loss:
        raise RestoreError(f"Kafka no longer holds {plan.lost_records:,} records written after the positions "
                           f"{dbname} holds: {'; '.join(str(lost) for lost in plan.lost)}; the consumer "
                           "group is set to read on from what Kafka has")
    return 0


def cli_schedule(settings: Settings) -> int:
    """``tillflow backup schedule``: the backup service."""
    ctx = _context(settings)
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
    Scheduler(ctx, settings.backup_schedule, settings.backup_verify_schedule, settings.reconcile_schedule,
              kafka=settings).run()
    return 0
