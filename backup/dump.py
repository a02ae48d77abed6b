"""``tillflow backup run``: one backup, checked, committed, then retention.

1. Under the directory's lock, remove what a failed or killed run left.
2. Export a snapshot and read the database's properties in it. ``pg_dump -Fc
   --snapshot`` dumps that snapshot while the exporting session counts and
   checksums ``sales.transactions`` in it, in parallel: the manifest describes
   exactly the rows dumped, whatever is written meanwhile.
3. ``pg_dumpall --globals-only --no-role-passwords``: the roles. A
   non-superuser cannot read ``pg_authid``, where the password hashes live;
   without them ``pg_roles`` is enough. Restored roles therefore have no
   password until ``tillflow migrate`` sets them again (from ``make secrets``).
4. fsync both files, hash them, check them (``backup.verify.check_archive``),
   write the ``.sha256`` and the manifest, and rename everything into place,
   the manifest last.
5. Prune (``backup.retention``): only now that the new backup is verified.

Any failing step (database down, wrong password, disk full, pg_dump killed)
raises ``BackupError`` after removing the new backup's partial files; earlier
backups are never touched by a failed run. Files are created 0640: a backup
holds every row of the database.
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from backup import database, retention
from backup.context import Context
from backup.errors import BackupError, VerifyError
from backup.manifest import STAMP, Content, FileInfo, Manifest, Verification, iso
from backup.store import DUMP, GLOBALS, MANIFEST, SHA256, Backup, Store, fsync_file, sha256_of
from backup.verify import check_archive

log = logging.getLogger(__name__)

# pg_dump waits this long for a table lock (a migration holding one) before failing.
LOCK_WAIT_TIMEOUT = "300s"
FILE_MODE = 0o640


@dataclass(frozen=True)
class RunResult:
    backup: Backup
    pruned: list[str]
    duration_seconds: float


def run(ctx: Context) -> RunResult:
    """Take one backup; raise BackupError (after cleaning up) if any step fails."""
    try:
        return _run(ctx)
    except OSError as exc:  # the directory itself: permissions, a full disk for the records
        raise BackupError(f"backup in {ctx.store.directory} failed: {exc.strerror or exc}") from exc


def _run(ctx: Context) -> RunResult:
    server = ctx.need_server()
    store = ctx.store
    started = ctx.clock()
    clock_start = time.monotonic()
    with store.lock() as lock_fd:
        store.cleanup()
        with database.snapshot(server) as snap, ThreadPoolExecutor(1, thread_name_prefix="checksum") as pool:
            name = f"{snap.database.name}-{started.strftime(STAMP)}"
            if store.taken(name):
                raise BackupError(f"backup {name} exists already in {store.directory}: at most one per second")
            # The checksum reads the snapshot in its own session while pg_dump runs.
            counted = pool.submit(snap.content)
            try:
                _create(store.partial(name, DUMP))
                ctx.tools.run(
                    "pg_dump",
                    ["--format=custom", f"--snapshot={snap.id}", f"--lock-wait-timeout={LOCK_WAIT_TIMEOUT}",
                     f"--file={store.partial(name, DUMP)}", f"--dbname={server.conninfo()}"],
                    server=server, what=f"pg_dump of {server.where()}",
                    pass_fds=(lock_fd,),  # an orphaned pg_dump keeps the directory locked
                )
                transactions = counted.result()
            except BaseException:
                snap.cancel()
                store.discard(name)
                raise
        try:
            manifest = _finish(ctx, store, name, snap, transactions, started, clock_start)
            store.commit(name)
        except OSError as exc:
            store.discard(name)
            raise BackupError(f"writing backup {name} to {store.directory} failed: {exc.strerror}") from exc
        except BaseException:
            store.discard(name)
            raise
        backup = store.record(
            store.load(name), Verification("quick", iso(ctx.clock()), True, "checked before it was committed")
        )
        pruned = prune(store, ctx.keep_daily, ctx.keep_weekly)
    duration = time.monotonic() - clock_start
    log.info(
        "backup %s: %d rows, %d bytes, %.1fs%s", name, manifest.transactions.rows, manifest.size_bytes, duration,
        f"; pruned {', '.join(pruned)}" if pruned else "",
    )
    return RunResult(backup, pruned, duration)


def _create(path) -> None:
    """Create the empty file a program will write, with the backup's mode (not the umask's)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE))


def _finish(
    ctx: Context, store: Store, name: str, snap: database.Snapshot, transactions: Content, started, clock_start: float
) -> Manifest:
    server = ctx.need_server()
    globals_path = store.partial(name, GLOBALS)
    _create(globals_path)
    ctx.tools.run(
        "pg_dumpall",
        ["--globals-only", "--no-role-passwords", f"--file={globals_path}",
         f"--dbname={server.conninfo()}", f"--database={server.dbname}"],
        server=server, what=f"pg_dumpall --globals-only of {server.where()}",
    )
    dump_path = store.partial(name, DUMP)
    for path in (dump_path, globals_path):
        fsync_file(path)
    try:
        check_archive(dump_path, globals_path, ctx.tools)
    except VerifyError as exc:
        raise BackupError(f"the new backup {name} failed its check: {exc}") from exc
    dump = FileInfo(f"{name}{DUMP}", dump_path.stat().st_size, sha256_of(dump_path))
    globals_ = FileInfo(f"{name}{GLOBALS}", globals_path.stat().st_size, sha256_of(globals_path))
    manifest = Manifest(
        name=name,
        created_at=iso(started),
        finished_at=iso(ctx.clock()),
        duration_seconds=round(time.monotonic() - clock_start, 3),
        server_version=snap.server_version,
        server_version_num=snap.server_version_num,
        pg_dump_version=ctx.tools.version("pg_dump"),
        taken_by=snap.user,
        dump=dump,
        globals=globals_,
        database=snap.database,
        transactions=transactions,
        kafka_positions=None if snap.positions is None else [
            [topic, partition, offset] for (topic, partition), offset in sorted(snap.positions.items())],
    )
    _write(store.partial(name, SHA256), f"{dump.sha256}  {dump.file}\n{globals_.sha256}  {globals_.file}\n")
    _write(store.partial(name, MANIFEST), manifest.to_json())
    return manifest


def _write(path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def prune(store: Store, keep_daily: int, keep_weekly: int) -> list[str]:
    """Delete the backups retention does not keep; return their names."""
    backups = store.backups()
    keep = retention.to_keep(
        [retention.Candidate(b.name, b.manifest.created, b.verified, b.fully_verified) for b in backups], keep_daily, keep_weekly
    )
    return [b.name for b in backups if b.name not in keep and store.delete(b)]
