"""Is a backup intact, and does it restore to what its manifest says?

``quick`` (every new backup, before it is committed; ``tillflow backup verify``
for every backup): each file's size and sha256 against the manifest, the
globals file complete, and ``pg_restore --list`` reads the archive's table of
contents and finds the data of ``sales.transactions`` in it.

``full`` (on ``BACKUP_VERIFY_SCHEDULE``; ``tillflow backup verify --full``):
quick, then ``pg_restore --exit-on-error`` of the dump into a scratch database
that the backup role creates (it has CREATEDB for this alone, see migration
0007), then the row count and content checksum of ``sales.transactions``
compared with the manifest, and the rollups (``sales.daily_store_totals``,
``sales.daily_product_totals``) reconciled with the restored rows
(``tillflow.reconcile``; a backup taken before migration 0009 has none): a
backup whose totals disagree with its rows would restore wrong dashboards.
The scratch database is dropped whatever happens,
and one left by a killed job is dropped by the next. Objects are restored
without owners and privileges (``--no-owner --no-acl``): the backup role is no
member of ``tillflow_owner``; ``restore``, as a superuser, restores both.

A ``VerifyError`` is a verdict on the backup and is recorded beside it (a
failed backup no longer counts for retention); any other ``BackupError`` (the
server is down, the role may not create a database) means it could not be
judged, and nothing is recorded.
"""
from __future__ import annotations

import datetime
import logging
import secrets
import time
from collections.abc import Callable

import psycopg2
import psycopg2.errors
from psycopg2 import sql

from backup import database
from backup.errors import BackupError, VerifyError
from backup.manifest import FileInfo, Manifest, Verification, iso
from backup.store import Backup, Store, reading, sha256_of
from backup.tools import Server, Tools
from tillflow import reconcile
from tillflow.errors import SinkError, first_line
from tillflow.pg import translated

log = logging.getLogger(__name__)

SCRATCH_PREFIX = "tillflow_verify_"
_GLOBALS_HEAD = "-- PostgreSQL database cluster dump"
_GLOBALS_TAIL = "-- PostgreSQL database cluster dump complete"
Clock = Callable[[], datetime.datetime]


def check_file(path, expected: FileInfo) -> None:
    try:
        size = path.stat().st_size
        digest = sha256_of(path) if size == expected.size_bytes else None
    except FileNotFoundError:
        raise VerifyError(f"{path} is missing") from None
    except OSError as exc:
        raise VerifyError(f"cannot read {path}: {exc.strerror}") from exc
    if size != expected.size_bytes:
        raise VerifyError(f"{path} has {size} bytes, its manifest says {expected.size_bytes}: truncated or replaced")
    if digest != expected.sha256:
        raise VerifyError(f"{path}: sha256 {digest[:16]}... differs from the manifest's {expected.sha256[:16]}...")


def check_archive(dump_path, globals_path, tools: Tools) -> None:
    """The globals file is complete and pg_restore reads the archive's contents."""
    try:
        text = globals_path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise VerifyError(f"cannot read {globals_path}: {exc.strerror}") from exc
    if _GLOBALS_HEAD not in text[:200] or _GLOBALS_TAIL not in text[-200:]:
        raise VerifyError(f"{globals_path} is not a complete pg_dumpall --globals-only file")
    try:
        listing = tools.run("pg_restore", ["--list", str(dump_path)], what=f"reading {dump_path}", capture=True)
    except BackupError as exc:
        raise VerifyError(str(exc)) from exc
    if not any(line.split()[-3:-1] == ["sales", "transactions"] and "TABLE DATA" in line for line in listing.splitlines()):
        raise VerifyError(f"{dump_path} holds no data of {database.TABLE}")


def quick(backup: Backup, tools: Tools) -> str:
    """Raise VerifyError unless the files match the manifest and the archive reads."""
    check_file(backup.dump_path, backup.manifest.dump)
    check_file(backup.globals_path, backup.manifest.globals)
    check_archive(backup.dump_path, backup.globals_path, tools)
    return f"sha256 of both files match, pg_restore --list reads {backup.dump_path.name}"


def full_check(backup: Backup, tools: Tools, server: Server, *, jobs: int) -> str:
    """Restore into a scratch database and compare it with the manifest; raise VerifyError if it differs."""
    quick(backup, tools)
    manifest = backup.manifest
    scratch = f"{SCRATCH_PREFIX}{secrets.token_hex(4)}"
    admin = server.connect()
    admin.autocommit = True
    try:
        with translated(BackupError, f"creating scratch database {scratch} failed",
                        denied=f"full verification restores into a scratch database, but role {server.user} may "
                               "not create one: run `tillflow migrate` (migration 0007 gives tillflow_backup "
                               "CREATEDB)"), admin.cursor() as cur:
            _drop_stale_scratch(cur)
            database.create_database(cur, scratch, manifest.database)
        try:
            with reading(backup.dump_path):
                tools.run(
                    "pg_restore",
                    ["--exit-on-error", "--no-owner", "--no-acl", f"--jobs={jobs}",
                     f"--dbname={server.conninfo(scratch, application='tillflow-backup-verify')}",
                     str(backup.dump_path)],
                    server=server, what=f"restoring {backup.name} into scratch database {scratch}",
                )
        except BackupError as exc:
            if isinstance(exc, VerifyError) or tools.stop.is_set():
                raise
            raise VerifyError(str(exc)) from exc
        found = database.content_of(server, scratch)
        compare(manifest, found.rows, found.checksum, where=f"scratch database {scratch}")
        rollups = check_rollups(server, scratch)
        return f"restored into {scratch}: {found.rows} rows, checksum {found.checksum} as in the manifest; {rollups}"
    finally:
        try:
            with admin.cursor() as cur:
                database.drop_database(cur, scratch)
        except psycopg2.Error as exc:
            log.error("could not drop scratch database %s: %s", scratch, first_line(exc))
        admin.close()


def compare(manifest: Manifest, rows: int, checksum: str, *, where: str) -> None:
    expected = manifest.transactions
    if rows != expected.rows or checksum != expected.checksum:
        raise VerifyError(
            f"{where} holds {rows} rows of {expected.table} with checksum {checksum}; backup {manifest.name} "
            f"recorded {expected.rows} rows with checksum {expected.checksum}"
        )


def check_rollups(server: Server, dbname: str) -> str:
    """Reconcile the rollups of ``dbname`` with its rows; raise VerifyError if any value differs."""
    conn = server.connect(dbname)
    try:
        with translated(BackupError, f"reading {server.where(dbname)} failed"), conn.cursor() as cur:
            cur.execute("SELECT to_regclass('sales.daily_store_totals') IS NOT NULL")
            (present,) = cur.fetchone()
        conn.rollback()
        if not present:
            return "no rollups to reconcile (taken before migration 0009)"
        try:
            result = reconcile.run(conn, files=False)
        except SinkError as exc:
            raise BackupError(f"reconciling the rollups in {server.where(dbname)}: {exc}") from exc
    finally:
        conn.close()
    keys = sum(check.keys for check in result.rollups)
    if result.ok:
        return f"the rollups agree with the rows ({keys} keys)"
    first = next(d for check in result.rollups for d in check.shown)
    raise VerifyError(
        f"scratch database {dbname}: the rollups differ from sales.transactions in {result.total} "
        f"value{'' if result.total == 1 else 's'} "
        f"(of {keys} keys); first: {reconcile.describe(first)}"
    )


def _drop_stale_scratch(cur) -> None:
    cur.execute(
        "SELECT datname FROM pg_catalog.pg_database WHERE datname LIKE %s"
        " AND datdba = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)",
        (SCRATCH_PREFIX.replace("_", r"\_") + "%",),
    )
    for (name,) in cur.fetchall():
        log.warning("dropping scratch database %s left by an interrupted verification", name)
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def judge(
    store: Store, backup: Backup, kind: str, check: Callable[[], str], clock: Clock
) -> tuple[Backup, Verification]:
    """Run ``check``; record its verdict beside the backup (not when it could not judge)."""
    started = time.monotonic()
    try:
        detail, ok = check(), True
    except VerifyError as exc:
        detail, ok = str(exc), False
    outcome = Verification(kind, iso(clock()), ok, detail, round(time.monotonic() - started, 3))
    (log.info if ok else log.error)("%s verification of %s %s: %s", kind, backup.name, "passed" if ok else "FAILED", detail)
    return store.record(backup, outcome), outcome


def run_pass(ctx, names: list[str] | None = None, *, full: bool = False) -> list[tuple[Backup, Verification]]:
    """Quick-check the named backups (default: all), then restore-test them with
    ``full`` (default: the newest only); return every verdict, in that order."""
    store = ctx.store
    with store.lock():
        chosen = [store.find(name) for name in names] if names else store.backups()
        outcomes = []
        for index, backup in enumerate(chosen):
            backup, outcome = judge(store, backup, "quick", lambda b=backup: quick(b, ctx.tools), ctx.clock)
            chosen[index] = backup
            outcomes.append((backup, outcome))
        if full:
            server = ctx.need_server()
            for backup in chosen if names else chosen[:1]:
                check = lambda b=backup: full_check(b, ctx.tools, server, jobs=ctx.restore_jobs)  # noqa: E731
                outcomes.append(judge(store, backup, "full", check, ctx.clock))
    return outcomes
