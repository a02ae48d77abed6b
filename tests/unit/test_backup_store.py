"""The backup directory (backup.store) and the client-program runner (backup.tools),
without PostgreSQL: fake programs stand in for pg_dump."""
from __future__ import annotations

import fcntl
import os
import stat
import threading
import time

import pytest

from backup.errors import BackupError, Cancelled, VerifyError
from backup.manifest import Verification
from backup.store import COMMIT_ORDER, MANIFEST, VERIFY, Store, reading, write_atomic
from backup.tools import Server, Tools, first_error
from test_backup_manifest import manifest  # the one manifest factory

NAME = "tillflow-20260105T120000Z"


def write_partials(store: Store, name: str = NAME) -> None:
    store.directory.mkdir(parents=True, exist_ok=True)
    for suffix in COMMIT_ORDER:
        text = manifest(name=name).to_json() if suffix == MANIFEST else suffix
        store.partial(name, suffix).write_text(text)


def files(directory) -> set[str]:
    return {p.name for p in directory.iterdir()} - {".lock"}


def test_commit_renames_everything_into_place_manifest_last(tmp_path):
    store = Store(tmp_path)
    write_partials(store)
    store.commit(NAME)
    assert files(tmp_path) == {f"{NAME}{s}" for s in COMMIT_ORDER}
    assert [b.name for b in store.backups()] == [NAME]


def test_a_backup_without_manifest_is_not_one_and_cleanup_removes_it(tmp_path):
    store = Store(tmp_path)
    write_partials(store, "tillflow-20260104T120000Z")
    store.commit("tillflow-20260104T120000Z")
    (tmp_path / f"{NAME}.dump").write_text("a dump whose run died before its manifest")
    (tmp_path / f".{NAME}.globals.sql.partial").write_text("half")
    (tmp_path / "notes.txt").write_text("not ours")
    assert [b.name for b in store.backups()] == ["tillflow-20260104T120000Z"]
    assert sorted(store.cleanup()) == [f".{NAME}.globals.sql.partial", f"{NAME}.dump"]
    assert files(tmp_path) == {f"tillflow-20260104T120000Z{s}" for s in COMMIT_ORDER} | {"notes.txt"}


def test_discard_removes_only_that_runs_partials(tmp_path):
    store = Store(tmp_path)
    write_partials(store)
    write_partials(store, "tillflow-20260106T120000Z")
    store.discard(NAME)
    assert all(name.startswith(".tillflow-20260106") for name in files(tmp_path))


def test_the_lock_refuses_a_second_job(tmp_path):
    store = Store(tmp_path)
    with store.lock():
        with pytest.raises(BackupError, match="another backup job is running"), store.lock():
            pass
    with store.lock():
        pass  # released


def test_verifications_are_recorded_beside_the_backup(tmp_path):
    store = Store(tmp_path)
    write_partials(store)
    store.commit(NAME)
    backup = store.load(NAME)
    assert not backup.verified
    backup = store.record(backup, Verification("quick", "2026-01-05T12:01:00Z", True, "ok"))
    assert backup.verified and not backup.fully_verified
    backup = store.record(backup, Verification("full", "2026-01-06T03:30:00Z", False, "checksum differs"))
    assert not backup.verified, "a backup that failed its restore test counts for nothing"
    assert store.load(NAME).verifications["full"].detail == "checksum differs"
    assert stat.S_IMODE((tmp_path / f"{NAME}{VERIFY}").stat().st_mode) == 0o640


def test_find_by_name_file_name_or_path(tmp_path):
    store = Store(tmp_path / "here")
    write_partials(store)
    store.commit(NAME)
    elsewhere = Store(tmp_path / "copied")
    write_partials(elsewhere, "other-20260101T000000Z")
    elsewhere.commit("other-20260101T000000Z")
    assert store.find(NAME).name == NAME
    assert store.find(f"{NAME}.dump").name == NAME
    found = store.find(str(tmp_path / "copied" / "other-20260101T000000Z.dump"))
    assert found.name == "other-20260101T000000Z" and found.directory == tmp_path / "copied"
    with pytest.raises(VerifyError, match="neither a backup name"):
        store.find("latest")
    with pytest.raises(VerifyError, match="no backup tillflow-20990101T000000Z"):
        store.find("tillflow-20990101T000000Z")


def test_delete_removes_the_manifest_first_and_skips_a_dump_being_restored(tmp_path):
    store = Store(tmp_path)
    write_partials(store)
    store.commit(NAME)
    backup = store.load(NAME)
    with reading(backup.dump_path):
        assert store.delete(backup) is False
    assert files(tmp_path) == {f"{NAME}{s}" for s in COMMIT_ORDER}
    assert store.delete(backup) is True
    assert files(tmp_path) == set()


def test_write_atomic_leaves_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "x.json"
    target.write_text("old")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError):
        write_atomic(target, "new")
    assert target.read_text() == "old"
    assert files(tmp_path) == {"x.json"}


# -- backup.tools ------------------------------------------------------------------------


def test_a_password_never_reaches_argv():
    server = Server.from_url("postgresql://tillflow_backup:s3cr%40t@db.example:5433/tillflow?sslmode=require")
    conninfo = server.conninfo()
    assert "s3cr" not in conninfo
    assert "sslmode=require" in conninfo and "dbname=tillflow" in conninfo
    assert server.child_env()["PGPASSWORD"] == "s3cr@t"
    assert server.where() == "db.example:5433/tillflow as tillflow_backup"
    assert server.dbname == "tillflow"


def fake_bindir(tmp_path, body: str):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for program in ("pg_dump", "pg_dumpall", "pg_restore", "psql"):
        path = bindir / program
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    return bindir


def test_a_failing_program_is_reported_with_its_error_line(tmp_path):
    tools = Tools(fake_bindir(tmp_path, 'echo "pg_dump: error: connection failed: FATAL: password authentication failed" >&2; exit 1'))
    with pytest.raises(BackupError) as caught:
        tools.run("pg_dump", [], what="pg_dump of db")
    assert str(caught.value) == (
        "pg_dump of db failed: pg_dump exited with status 1: "
        "pg_dump: error: connection failed: FATAL: password authentication failed"
    )


def test_a_killed_program_is_reported_as_killed(tmp_path):
    tools = Tools(fake_bindir(tmp_path, "kill -9 $$"))
    with pytest.raises(BackupError, match="pg_dump was killed by SIGKILL"):
        tools.run("pg_dump", [], what="pg_dump of db")


def test_stop_terminates_the_program_and_cancels(tmp_path):
    tools = Tools(fake_bindir(tmp_path, "exec sleep 30"))
    threading.Timer(0.3, tools.stop.set).start()
    started = time.monotonic()
    with pytest.raises(Cancelled, match="stopped"):
        tools.run("pg_dump", [], what="pg_dump of db")
    assert time.monotonic() - started < 5


def test_the_child_environment_is_not_inherited(tmp_path, monkeypatch):
    monkeypatch.setenv("PGHOST", "somewhere-else")
    tools = Tools(fake_bindir(tmp_path, 'echo "host=${PGHOST:-none} pass=$PGPASSWORD"'))
    out = tools.run("psql", [], what="x", server=Server.from_url("postgresql://u:pw@h/db"), capture=True)
    assert out.strip() == "host=none pass=pw"


def test_the_lock_is_inherited_by_a_child_that_outlives_its_job(tmp_path):
    store = Store(tmp_path / "b")
    tools = Tools(fake_bindir(tmp_path, "sleep 3 </dev/null >/dev/null 2>&1 &"))  # it keeps the lock fd
    with store.lock() as fd:
        tools.run("pg_dump", [], what="x", pass_fds=(fd,))
    probe = os.open(tmp_path / "b" / ".lock", os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(probe)


@pytest.mark.parametrize(
    "stderr, expected",
    [
        ("pg_restore: warning: x\npg_restore: error: could not read input file: end of file\n",
         "pg_restore: error: could not read input file: end of file"),
        ("psql:<stdin>:12: ERROR:  role \"x\" does not exist\n", 'psql:<stdin>:12: ERROR:  role "x" does not exist'),
        ("just this\n", "just this"),
        ("", "no message"),
    ],
)
def test_first_error(stderr, expected):
    assert first_error(stderr) == expected
