"""Backups against a real PostgreSQL: taken, damaged, refused, pruned, restored.

Every test states its invariant and checks it on content: the set of stored
ids, and the row count and content checksum of sales.transactions computed in
SQL (backup.database), never on counts alone. Only PostgreSQL fixtures are
requested, so Kafka is not started for this file.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql

from backup import database, dump, verify
from backup.context import Context, utcnow
from backup.errors import BackupError, RestoreError
from backup.restore import restore
from backup.store import Store
from backup.tools import Server, find_bindir
from tillflow import sample
from devstack.proc import free_port
from support import services
from support.services import make_root
from tillflow.config import Settings

UTC = datetime.timezone.utc
TILLFLOW = str(Path(sys.executable).with_name("tillflow"))
OUR_SCHEMAS = ("sales", "ingest", "analytics", "api")
TEST_COLUMNS = "id, transaction_date, category, name, quantity, amount_excl_tax, amount_inc_tax"


# -- helpers ---------------------------------------------------------------------------


class StepClock:
    """An injectable clock: each backup run is stamped with the moment the test sets."""

    def __init__(self, start: datetime.datetime) -> None:
        self.now = start

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, **delta) -> None:
        self.now += datetime.timedelta(**delta)


def context(url: str, directory: Path, *, clock=utcnow, **env: str) -> Context:
    settings = Settings.from_env({"DATABASE_URL": url, "BACKUP_DIR": str(directory), "TILLFLOW_ENV": "test", **env})
    return Context.from_settings(settings, clock=clock)


def insert(db, count: int, seed: int) -> set[str]:
    """COPY ``count`` valid generated rows as the writer, the way the consumer stores them."""
    rows = list(sample.rows(count, seed=seed))
    buffer = io.StringIO("".join(
        f"{r.id}\t{r.transaction_date}\t{r.category}\t{r.name}\t{r.quantity}\t{r.amount_excl_tax}\t{r.amount_inc_tax}\n"
        for r in rows
    ))
    conn = db.connect("writer")
    try:
        with conn.cursor() as cur:
            cur.copy_expert(f"COPY sales.transactions ({TEST_COLUMNS}) FROM STDIN", buffer)
    finally:
        conn.close()
    return {r.id for r in rows}


def ids(server_url: str) -> set[str]:
    with contextlib.closing(psycopg2.connect(server_url)) as conn, conn.cursor() as cur:
        cur.execute("SELECT id::text FROM sales.transactions")
        return {row[0] for row in cur.fetchall()}


def content(server_url: str):
    server = Server.from_url(server_url)
    return database.content_of(server, server.dbname)


def url_of(db, dbname: str) -> str:
    return db.server.url(dbname=dbname)


def files(directory: Path) -> dict[str, str]:
    """Every file of the backup directory (the lock aside) with its sha256."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir()) if p.name != ".lock"
    }


def drop_database(db, name: str) -> None:
    with contextlib.closing(psycopg2.connect(db.server.url())) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def databases(db) -> set[str]:
    with contextlib.closing(psycopg2.connect(db.server.url())) as conn, conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database")
        return {row[0] for row in cur.fetchall()}


def foreign_owners(url: str) -> list[tuple]:
    """Objects of Tillflow's schemas not owned by tillflow_owner (there must be none)."""
    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        cur.execute(
            """SELECT n.nspname, c.relname, pg_get_userbyid(c.relowner)
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = ANY(%s) AND pg_get_userbyid(c.relowner) <> 'tillflow_owner'
               UNION ALL
               SELECT nspname, '', pg_get_userbyid(nspowner) FROM pg_namespace
                WHERE nspname = ANY(%s) AND pg_get_userbyid(nspowner) <> 'tillflow_owner'""",
            (list(OUR_SCHEMAS), list(OUR_SCHEMAS)),
        )
        return cur.fetchall()


def tillflow(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "BACKUP_", "PG", "METRICS_"))}
    return subprocess.run([TILLFLOW, *args], env={**base, "TILLFLOW_ENV": "test", **env},
                          capture_output=True, text=True, timeout=timeout)


def fake_pg_dump(tmp_path: Path, script: str) -> Path:
    """A bindir whose pg_dump runs ``script`` (the real one is $REAL); the other programs are real."""
    real = find_bindir()
    bindir = tmp_path / "fakebin"
    bindir.mkdir(parents=True)
    for program in ("pg_dumpall", "pg_restore", "psql"):
        (bindir / program).symlink_to(real / program)
    wrapper = bindir / "pg_dump"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"REAL={real / 'pg_dump'}\n"
        'for a in "$@"; do case $a in --file=*) FILE=${a#--file=};; esac; done\n'
        f"{script}\n"
    )
    wrapper.chmod(0o755)
    return bindir


# -- taking and restoring ---------------------------------------------------------------


def test_backup_delete_rows_restore_gives_back_identical_content(migrated_db, tmp_path):
    """Invariant: after --replace the live database holds exactly the backed-up ids, with the
    same content checksum, owned as before, and the writers can write again."""
    live = migrated_db.url("postgres")
    stored = insert(migrated_db, 3000, seed=1)
    before = content(live)
    taken = dump.run(context(migrated_db.url("backup"), tmp_path)).backup
    assert (taken.manifest.transactions.rows, taken.manifest.transactions.checksum) == (3000, before.checksum)

    lost = sorted(stored)[:1000]
    with contextlib.closing(migrated_db.connect("postgres")) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM sales.transactions WHERE id = ANY(%s::uuid[])", (lost,))
    assert content(live).rows == 2000 and content(live).checksum != before.checksum
    writer = migrated_db.connect("writer")  # a consumer's session, open during the restore

    result = restore(context(live, tmp_path), taken, replace=True)
    try:
        assert result.database == migrated_db.name
        assert ids(live) == stored
        assert content(live) == before
        assert foreign_owners(live) == []
        with pytest.raises(psycopg2.Error), writer.cursor() as cur:
            cur.execute("SELECT 1")  # its session was ended before the swap
        more = insert(migrated_db, 10, seed=2)  # CONNECT is back: the writers resume
        assert ids(live) == stored | more
        # The old contents are kept: what was written after the backup (here: the deletions) is not lost.
        assert result.previous in databases(migrated_db)
        assert ids(url_of(migrated_db, result.previous)) == stored - set(lost)
    finally:
        writer.close()
        drop_database(migrated_db, result.previous)


def test_cli_run_list_verify_and_restore_into_a_new_database(migrated_db, tmp_path):
    """Invariant: the commands exit 0 and tell what they did; a restore without --replace
    leaves the live database alone and creates a new one with the same content and privileges."""
    stored = insert(migrated_db, 500, seed=3)
    as_backup = {"DATABASE_URL": migrated_db.url("backup"), "BACKUP_DIR": str(tmp_path)}
    as_admin = {"DATABASE_URL": migrated_db.url("postgres"), "BACKUP_DIR": str(tmp_path)}

    done = tillflow(["backup", "run"], as_backup)
    assert done.returncode == 0, done.stderr
    name = Store(tmp_path).backups()[0].name
    assert done.stdout.startswith(f"backup {name}: 500 rows of sales.transactions")
    assert name.startswith(f"{migrated_db.name}-")
    assert name in tillflow(["backup", "list"], {"BACKUP_DIR": str(tmp_path)}).stdout

    done = tillflow(["backup", "verify", "--full"], as_backup)
    assert done.returncode == 0, done.stderr
    assert [line.split()[:3] for line in done.stdout.splitlines()] == [[name, "quick", "ok"], [name, "full", "ok"]]
    assert not {d for d in databases(migrated_db) if d.startswith(verify.SCRATCH_PREFIX)}, "scratch database dropped"

    refused = tillflow(["backup", "restore", name, "--replace"], as_admin)
    assert refused.returncode == 1 and "add --yes" in refused.stderr and len(refused.stderr.splitlines()) == 1

    done = tillflow(["backup", "restore", f"{name}.dump"], as_admin)
    assert done.returncode == 0, done.stderr
    stamp = name.rsplit("-", 1)[1].lower().replace("t", "_").rstrip("z")
    restored = f"{migrated_db.name}_restored_{stamp}"
    try:
        assert f"into database {restored}: 500 rows" in done.stdout
        assert ids(url_of(migrated_db, restored)) == stored == ids(migrated_db.url("postgres"))
        assert foreign_owners(url_of(migrated_db, restored)) == []
        # The database's own privileges came back from the manifest: the writer may connect.
        with contextlib.closing(psycopg2.connect(migrated_db.server.url("tillflow_writer",
                                migrated_db.passwords["writer"], restored))) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM sales.transactions")
            assert cur.fetchone()[0] == 500
    finally:
        drop_database(migrated_db, restored)


# -- damage is detected -------------------------------------------------------------------


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # one bit flipped in the middle, where the rows are
        data[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "bit-flipped"])
def test_verify_detects_a_damaged_dump_and_restore_refuses_it(migrated_db, tmp_path, how):
    """Invariant: a damaged dump never passes verification, and a restore refuses it
    before changing anything."""
    insert(migrated_db, 2000, seed=4)
    ctx = context(migrated_db.url("backup"), tmp_path)
    backup = dump.run(ctx).backup
    damage(backup.dump_path, how)

    [(_, outcome)] = verify.run_pass(ctx)
    assert not outcome.ok
    assert ("truncated" in outcome.detail) if how == "truncated" else ("sha256" in outcome.detail)
    assert not Store(tmp_path).load(backup.name).verified, "the verdict is recorded: retention stops counting it"

    done = tillflow(["backup", "verify"], {"BACKUP_DIR": str(tmp_path)})
    assert done.returncode == 1 and "1 of 1 verifications failed" in done.stderr
    assert "FAILED" in tillflow(["backup", "list"], {"BACKUP_DIR": str(tmp_path)}).stdout

    before = databases(migrated_db)
    with pytest.raises(RestoreError, match="is damaged, nothing was changed"):
        restore(context(migrated_db.url("postgres"), tmp_path), Store(tmp_path).load(backup.name), replace=True)
    assert databases(migrated_db) == before


def test_a_full_verification_catches_what_the_checksums_cannot(migrated_db, tmp_path):
    """Invariant: even with its manifest rewritten to match, a damaged dump fails the
    restore test; so does a dump whose content is not what the manifest recorded."""
    insert(migrated_db, 2000, seed=5)
    ctx = context(migrated_db.url("backup"), tmp_path)
    backup = dump.run(ctx).backup
    manifest_path = backup.path(".manifest.json")
    original = manifest_path.read_text()

    damage(backup.dump_path, "bit-flipped")
    data = json.loads(original)
    data["dump"].update(size_bytes=backup.dump_path.stat().st_size,
                        sha256=hashlib.sha256(backup.dump_path.read_bytes()).hexdigest())
    manifest_path.write_text(json.dumps(data))
    outcomes = verify.run_pass(ctx, full=True)
    assert [(o.kind, o.ok) for _, o in outcomes] == [("quick", True), ("full", False)]
    assert f"restoring {backup.name} into scratch database" in outcomes[1][1].detail

    backup = dump.run(context(migrated_db.url("backup"), tmp_path, clock=StepClock(utcnow() + datetime.timedelta(seconds=5)))).backup
    data = json.loads(backup.path(".manifest.json").read_text())
    data["transactions"]["checksum"] = "0" * 16
    backup.path(".manifest.json").write_text(json.dumps(data))
    [(_, quick), (_, full)] = verify.run_pass(ctx, [backup.name], full=True)
    assert quick.ok and not full.ok
    assert "holds 2000 rows of sales.transactions with checksum" in full.detail
    assert not {d for d in databases(migrated_db) if d.startswith(verify.SCRATCH_PREFIX)}, "scratch databases dropped"


def test_a_full_verification_reconciles_the_rollups_of_the_restored_copy(migrated_db, tmp_path):
    """Invariant: the restore test recomputes the rollups from the restored rows; a backup
    whose totals disagree with its rows fails it, naming the key and column."""
    insert(migrated_db, 1500, seed=21)
    written = list(sample.rows(1500, seed=21))
    keys = (len({(r.transaction_date, "main") for r in written}) + len({(r.transaction_date, r.name) for r in written})
            + len({r.name for r in written}))  # the store and product rollups, and the product list
    ctx = context(migrated_db.url("backup"), tmp_path)
    clean = dump.run(ctx).backup
    [_, (_, full)] = verify.run_pass(ctx, [clean.name], full=True)
    assert full.ok and full.detail.endswith(f"as in the manifest; the rollups agree with the rows ({keys} keys)")

    day = min(r.transaction_date for r in written)
    with contextlib.closing(migrated_db.connect("postgres")) as conn, conn.cursor() as cur:
        cur.execute("UPDATE sales.daily_store_totals SET buy_transactions = buy_transactions + 1"
                    " WHERE transaction_date = %s AND store_id = 'main'", (day,))
    later = context(migrated_db.url("backup"), tmp_path, clock=StepClock(utcnow() + datetime.timedelta(seconds=5)))
    tampered = dump.run(later).backup
    assert tampered.manifest.transactions.checksum == clean.manifest.transactions.checksum, "the rows are the same"
    [(_, quick), (_, full)] = verify.run_pass(ctx, [tampered.name], full=True)
    assert quick.ok and not full.ok
    assert "the rollups differ from sales.transactions in 1 value (of" in full.detail
    assert full.detail.endswith(f"first: sales.daily_store_totals {day} store_id='main' buy_transactions: "
                                f"rollup {sum(r.category == 'BUY' for r in written if r.transaction_date == day) + 1}, "
                                f"recomputed {sum(r.category == 'BUY' for r in written if r.transaction_date == day)}")
    assert not Store(tmp_path).load(tampered.name).fully_verified
    assert not {d for d in databases(migrated_db) if d.startswith(verify.SCRATCH_PREFIX)}, "scratch databases dropped"


def test_writes_during_a_backup_are_not_in_it_and_the_manifest_agrees(migrated_db, tmp_path):
    """Invariant: the dump and its manifest's count and checksum come from one snapshot,
    whatever is written while pg_dump runs."""
    first = insert(migrated_db, 1000, seed=6)
    bindir = fake_pg_dump(tmp_path, 'sleep 1.5; exec "$REAL" "$@"')  # pg_dump starts late
    ctx = context(migrated_db.url("backup"), tmp_path / "backups", PG_BINDIR=str(bindir))
    taken: list = []
    worker = threading.Thread(target=lambda: taken.append(dump.run(ctx)))
    worker.start()
    time.sleep(0.5)
    later = insert(migrated_db, 300, seed=7)  # committed after the snapshot, before pg_dump started
    worker.join(60)
    backup = taken[0].backup
    assert backup.manifest.transactions.rows == 1000
    outcomes = verify.run_pass(context(migrated_db.url("backup"), tmp_path / "backups"), full=True)
    assert all(o.ok for _, o in outcomes), outcomes
    assert ids(migrated_db.url("postgres")) == first | later


# -- failures leave no backup and keep the earlier ones -------------------------------------


def test_a_backup_with_the_database_stopped_fails_cleanly_and_keeps_the_earlier_ones(
    migrated_db, running_postgres, tmp_path
):
    """Invariant: a failed run exits non-zero with one line, adds no file, removes none,
    and prunes nothing (even with retention at 0 and 0)."""
    insert(migrated_db, 200, seed=8)
    clock = StepClock(datetime.datetime(2026, 1, 5, 12, tzinfo=UTC))
    ctx = context(migrated_db.url("backup"), tmp_path, clock=clock)
    dump.run(ctx)
    clock.advance(days=1)
    dump.run(ctx)
    kept = files(tmp_path)
    assert len(kept) == 10

    running_postgres.stop()
    try:
        clock.advance(days=1)
        strict = context(migrated_db.url("backup"), tmp_path, clock=clock,
                         BACKUP_KEEP_DAILY="0", BACKUP_KEEP_WEEKLY="0")
        with pytest.raises(BackupError, match="cannot connect to PostgreSQL"):
            dump.run(strict)
        done = tillflow(["backup", "run"], {"DATABASE_URL": migrated_db.url("backup"), "BACKUP_DIR": str(tmp_path),
                                            "BACKUP_KEEP_DAILY": "0", "BACKUP_KEEP_WEEKLY": "0"})
        assert done.returncode == 1
        assert done.stderr.startswith("tillflow backup: cannot connect to PostgreSQL at 127.0.0.1:")
        assert "Traceback" not in done.stderr
        assert files(tmp_path) == kept
    finally:
        running_postgres.start()


def test_a_wrong_password_fails_cleanly(migrated_db, tmp_path):
    url = migrated_db.server.url("tillflow_backup", "not-the-password", migrated_db.name)
    with pytest.raises(BackupError, match="password authentication failed for user \"tillflow_backup\""):
        dump.run(context(url, tmp_path))
    assert files(tmp_path) == {}


def test_pg_dump_killed_midway_leaves_no_half_backup(migrated_db, tmp_path):
    """Invariant: a pg_dump killed after writing part of its file leaves nothing that
    looks like a backup, and the earlier backup intact."""
    insert(migrated_db, 200, seed=9)
    backups = tmp_path / "backups"
    clock = StepClock(datetime.datetime(2026, 1, 5, 12, tzinfo=UTC))
    dump.run(context(migrated_db.url("backup"), backups, clock=clock))
    kept = files(backups)
    bindir = fake_pg_dump(tmp_path, 'head -c 5000 /dev/urandom > "$FILE"; kill -9 $$')
    clock.advance(hours=6)
    with pytest.raises(BackupError, match="pg_dump was killed by SIGKILL"):
        dump.run(context(migrated_db.url("backup"), backups, clock=clock, PG_BINDIR=str(bindir)))
    assert files(backups) == kept


def test_a_full_disk_reported_by_pg_dump_fails_cleanly(migrated_db, tmp_path):
    insert(migrated_db, 200, seed=10)
    bindir = fake_pg_dump(
        tmp_path,
        'head -c 5000 /dev/zero > "$FILE"; '
        'echo "pg_dump: error: could not write to output file: No space left on device" >&2; exit 1',
    )
    with pytest.raises(BackupError, match="No space left on device"):
        dump.run(context(migrated_db.url("backup"), tmp_path / "b", PG_BINDIR=str(bindir)))
    assert files(tmp_path / "b") == {}


@pytest.fixture
def small_disk():
    """A 256 KiB tmpfs (needs root and mount rights, which make test has: it runs as root)."""
    mount_point = make_root()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(mount_point, ignore_errors=True)
        pytest.fail(f"cannot mount a small tmpfs for the full-disk test: {done.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)
    shutil.rmtree(mount_point, ignore_errors=True)


def test_a_really_full_disk_fails_cleanly_and_keeps_the_earlier_backup(migrated_db, small_disk):
    """Invariant: ENOSPC in the middle of a dump leaves the earlier backup byte for byte."""
    insert(migrated_db, 100, seed=11)
    clock = StepClock(datetime.datetime(2026, 1, 5, 12, tzinfo=UTC))
    dump.run(context(migrated_db.url("backup"), small_disk, clock=clock))
    kept = files(small_disk)
    insert(migrated_db, 20000, seed=12)  # a dump of about 800 kB: it cannot fit
    clock.advance(hours=6)
    with pytest.raises(BackupError, match="No space left on device"):
        dump.run(context(migrated_db.url("backup"), small_disk, clock=clock))
    assert files(small_disk) == kept


# -- retention --------------------------------------------------------------------------------


def test_retention_over_n_plus_3_runs_keeps_exactly_the_right_backups(migrated_db, tmp_path):
    """Invariant: with BACKUP_KEEP_DAILY=3 and BACKUP_KEEP_WEEKLY=3, after 6 runs exactly the
    newest backup of each of the last 3 days with backups and of each of the last 3 ISO weeks
    remain, every file of each, and nothing else."""
    insert(migrated_db, 100, seed=13)
    moments = [
        datetime.datetime(2025, 12, 27, 12, tzinfo=UTC),  # Sat, ISO week 2025-52
        datetime.datetime(2026, 1, 1, 12, tzinfo=UTC),    # Thu, week 2026-01
        datetime.datetime(2026, 1, 2, 12, tzinfo=UTC),    # Fri, week 2026-01
        datetime.datetime(2026, 1, 5, 6, tzinfo=UTC),     # Mon, week 2026-02
        datetime.datetime(2026, 1, 5, 18, tzinfo=UTC),    # Mon again, later
        datetime.datetime(2026, 1, 7, 12, tzinfo=UTC),    # Wed, week 2026-02
    ]
    clock = StepClock(moments[0])
    ctx = context(migrated_db.url("backup"), tmp_path, clock=clock, BACKUP_KEEP_DAILY="3", BACKUP_KEEP_WEEKLY="3")
    names, pruned = [], []
    for moment in moments:
        clock.now = moment
        result = dump.run(ctx)
        names.append(result.backup.name)
        pruned += result.pruned
    expected = {names[5], names[4], names[2], names[0]}  # days Jan 7, Jan 5 (18:00), Jan 2; week 52: Dec 27
    assert {b.name for b in Store(tmp_path).backups()} == expected
    assert sorted(pruned) == sorted({names[1], names[3]})
    suffixes = (".dump", ".globals.sql", ".sha256", ".manifest.json", ".verify.json")
    assert set(files(tmp_path)) == {f"{name}{suffix}" for name in expected for suffix in suffixes}


def test_backups_taken_after_a_restore_test_never_prune_the_restore_tested_one(migrated_db, tmp_path):
    """The report: a restore test at night, then `make backup` (keep 1 day, 0 weeks) pruned the
    only restore-tested backup, and `backup list` showed none until the next night."""
    insert(migrated_db, 50, seed=17)
    clock = StepClock(datetime.datetime(2026, 3, 2, 3, tzinfo=UTC))
    ctx = context(migrated_db.url("backup"), tmp_path, clock=clock, BACKUP_KEEP_DAILY="1", BACKUP_KEEP_WEEKLY="0")
    tested = dump.run(ctx).backup.name
    assert [(v.kind, v.ok) for _, v in verify.run_pass(ctx, [tested], full=True)] == [("quick", True), ("full", True)]
    for hour in (9, 15, 21):
        clock.now = clock.now.replace(hour=hour)
        dump.run(ctx)
    clock.now = datetime.datetime(2026, 3, 3, 9, tzinfo=UTC)
    newest = dump.run(ctx).backup.name
    left = {b.name: b.fully_verified for b in Store(tmp_path).backups()}
    assert left == {tested: True, newest: False}
    listed = tillflow(["backup", "list"], {"BACKUP_DIR": str(tmp_path)}).stdout
    assert tested in listed


# -- a restore into a new server ----------------------------------------------------------------


def test_a_restore_into_a_fresh_server_recreates_roles_without_ownership_errors(migrated_db, role_passwords, tmp_path):
    """Invariant: on a server that never saw Tillflow, a restore creates the roles, every
    object belongs to tillflow_owner, the content is identical, and after `tillflow migrate`
    sets the passwords each role does its job there."""
    from tillflow.migrate import apply_migrations

    stored = insert(migrated_db, 1500, seed=14)
    backup = dump.run(context(migrated_db.url("backup"), tmp_path)).backup
    root = make_root()
    fresh = services.start_postgres(root)  # a server of the session's kind that never saw Tillflow
    try:
        result = restore(context(fresh.url(dbname="tillflow"), tmp_path), backup, target="tillflow")
        assert {"tillflow_owner", "tillflow_writer", "tillflow_reader", "tillflow_backup"} <= set(result.created_roles)
        url = fresh.url(dbname="tillflow")
        assert foreign_owners(url) == []
        assert ids(url) == stored
        assert content(url) == content(migrated_db.url("postgres"))
        with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
            cur.execute("SELECT rolname, rolcanlogin, rolconfig FROM pg_roles WHERE rolname LIKE 'tillflow\\_%' ORDER BY 1")
            roles = {name: (login, config) for name, login, config in cur.fetchall()}
            cur.execute("SELECT pg_has_role('tillflow_backup', 'pg_read_all_data', 'MEMBER')")
            assert cur.fetchone()[0]
        assert roles["tillflow_reader"][1] == ["default_transaction_read_only=on", "statement_timeout=60s"]

        assert apply_migrations(url, role_passwords=role_passwords) == [], "the history came with the backup"
        writer = fresh.url("tillflow_writer", role_passwords["writer"], "tillflow")
        with contextlib.closing(psycopg2.connect(writer)) as conn, conn.cursor() as cur:
            cur.execute(f"INSERT INTO sales.transactions ({TEST_COLUMNS}) VALUES "
                        "(gen_random_uuid(), '2026-02-01', 'SELL', 'Milk', 1, 1.00, 1.20)")
            conn.commit()
        reader = fresh.url("tillflow_reader", role_passwords["reader"], "tillflow")
        with contextlib.closing(psycopg2.connect(reader)) as conn, conn.cursor() as cur:
            cur.execute("SELECT sum(transactions) FROM analytics.daily_transactions")
            assert cur.fetchone()[0] == len(stored) + 1
        again = dump.run(context(fresh.url("tillflow_backup", role_passwords["backup"], "tillflow"), tmp_path / "again"))
        assert again.backup.manifest.transactions.rows == len(stored) + 1
    finally:
        fresh.destroy()
        shutil.rmtree(root, ignore_errors=True)


def test_a_failed_replace_leaves_the_live_database_as_it_was(migrated_db, tmp_path):
    """Invariant: when a --replace restore fails after pg_restore, the live database keeps
    its content, its writers get CONNECT back, and no restored database is left over."""
    stored = insert(migrated_db, 800, seed=15)
    backup = dump.run(context(migrated_db.url("backup"), tmp_path)).backup
    more = insert(migrated_db, 50, seed=16)
    data = json.loads(backup.path(".manifest.json").read_text())
    data["transactions"]["checksum"] = "f" * 16  # the restored content will not match
    backup.path(".manifest.json").write_text(json.dumps(data))
    before = databases(migrated_db)
    with pytest.raises(RestoreError, match="the restored database .* holds 800 rows"):
        restore(context(migrated_db.url("postgres"), tmp_path), Store(tmp_path).load(backup.name), replace=True)
    assert databases(migrated_db) == before
    assert ids(migrated_db.url("postgres")) == stored | more
    assert insert(migrated_db, 5, seed=17), "the writer connects and writes again"


# -- the service ----------------------------------------------------------------------------------


def metric(port: int, name: str) -> float | None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return None


def test_the_backup_service_catches_up_exports_metrics_and_stops_on_sigterm(migrated_db, tmp_path):
    """Invariant: a fresh service takes a backup, reconciles and restore-tests it at once,
    exports both times, the verdict and the reconciliation, and exits 0 on SIGTERM."""
    insert(migrated_db, 300, seed=18)
    port = free_port()
    env = {"DATABASE_URL": migrated_db.url("backup"), "BACKUP_DIR": str(tmp_path), "METRICS_PORT": str(port)}
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "BACKUP_", "PG", "METRICS_"))}
    proc = subprocess.Popen([TILLFLOW, "backup", "schedule"], env={**base, "TILLFLOW_ENV": "test", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        verified = None
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                verified = metric(port, "tillflow_backup_last_verify_ok")
                if verified == 1:
                    break
            time.sleep(0.3)
        assert verified == 1, proc.stderr.read() if proc.poll() is not None else "no verification within 60s"
        [backup] = Store(tmp_path).backups()
        created = backup.manifest.created.timestamp()
        assert metric(port, "tillflow_backup_last_success_timestamp_seconds") == created
        assert metric(port, "tillflow_backup_last_verified_timestamp_seconds") == created
        assert metric(port, "tillflow_backup_size_bytes") == backup.manifest.size_bytes
        assert metric(port, 'tillflow_backup_runs_total{result="success"}') == 1
        assert backup.fully_verified
        # tillflow reconcile ran after the backup, as the backup role: everything agrees.
        assert metric(port, "tillflow_reconcile_last_success") == 1
        assert metric(port, 'tillflow_reconcile_differences{check="rollups"}') == 0
        assert metric(port, 'tillflow_reconcile_differences{check="files"}') == 0
        assert metric(port, "tillflow_reconcile_last_run_timestamp_seconds") >= created
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
