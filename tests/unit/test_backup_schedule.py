"""The backup service's loop (backup.schedule) and metrics (backup.metrics), on a
fake clock, with the jobs replaced by recorders."""
from __future__ import annotations

import datetime
import math
import subprocess
import sys
import threading

import pytest
from prometheus_client import REGISTRY

from backup import metrics, schedule
from backup.context import Context
from backup.errors import BackupError
from backup.store import Store
from backup.tools import Tools
from tillflow import reconcile
from tillflow.errors import SinkError

UTC = datetime.timezone.utc


def t(day: int, hour: int, minute: int = 0) -> datetime.datetime:
    return datetime.datetime(2026, 1, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    "now, last, due",
    [
        (t(5, 13), None, t(5, 13)),              # never ran: at once
        (t(5, 13), t(5, 11, 59), t(5, 13)),      # missed the 12:00 fire (container down): at once
        (t(5, 13), t(5, 12, 0), t(5, 18)),       # ran at 12:00: the next fire
        (t(5, 18), t(5, 12, 1), t(5, 18)),       # exactly on a fire that has not run: now
    ],
)
def test_first_due_catches_up_a_missed_fire(now, last, due):
    assert schedule.first_due("0 */6 * * *", now, last) == due


class FakeTime(threading.Event):
    """An Event whose wait() moves a fake clock instead of sleeping."""

    def __init__(self, start: datetime.datetime, until: datetime.datetime) -> None:
        super().__init__()
        self.now, self.until = start, until

    def clock(self) -> datetime.datetime:
        return self.now

    def wait(self, timeout=None) -> bool:
        self.now += datetime.timedelta(seconds=timeout or 0)
        if self.now >= self.until:
            self.set()
        return self.is_set()


def test_the_loop_catches_up_then_follows_both_schedules(tmp_path, monkeypatch):
    fake = FakeTime(t(5, 13, 7), until=t(6, 6, 30))
    ctx = Context(Store(tmp_path), None, Tools(tmp_path, stop=fake), clock=fake.clock)
    jobs: list[tuple[str, datetime.datetime]] = []
    monkeypatch.setattr(schedule.Scheduler, "backup", lambda self: jobs.append(("backup", fake.now)))
    monkeypatch.setattr(schedule.Scheduler, "verify", lambda self: jobs.append(("verify", fake.now)))
    schedule.Scheduler(ctx, "0 */6 * * *", "30 3 * * *").run()
    assert jobs == [
        ("backup", t(5, 13, 7)),   # no backup yet: at once
        ("verify", t(5, 13, 7)),   # no restore test yet: at once, after the backup
        ("backup", t(5, 18)),
        ("backup", t(6, 0)),
        ("verify", t(6, 3, 30)),
        ("backup", t(6, 6)),
    ]


def test_a_failing_backup_is_counted_and_the_loop_goes_on(tmp_path, monkeypatch):
    fake = FakeTime(t(5, 13), until=t(5, 19))
    ctx = Context(Store(tmp_path), None, Tools(tmp_path, stop=fake), clock=fake.clock)
    calls = []

    def failing_run(context):
        calls.append(fake.now)
        raise BackupError("cannot connect to PostgreSQL at db:5432/tillflow: connection refused")

    before = REGISTRY.get_sample_value("tillflow_backup_runs_total", {"result": "failure"})
    monkeypatch.setattr(schedule.dump, "run", failing_run)
    monkeypatch.setattr(schedule.Scheduler, "verify", lambda self: None)
    schedule.Scheduler(ctx, "0 */6 * * *", "30 3 * * *").run()
    assert calls == [t(5, 13), t(5, 18)]
    assert REGISTRY.get_sample_value("tillflow_backup_runs_total", {"result": "failure"}) == before + 2


def test_the_metric_names_the_alerts_rely_on():
    names = {metric.name for metric in REGISTRY.collect()}
    for name in (
        "tillflow_backup_last_success_timestamp_seconds",
        "tillflow_backup_last_verified_timestamp_seconds",
        "tillflow_backup_duration_seconds",
        "tillflow_backup_size_bytes",
        "tillflow_backup_last_verify_ok",
        "tillflow_backup_runs",  # exposed as tillflow_backup_runs_total
    ):
        assert name in names
    for result in metrics.RESULTS:
        assert REGISTRY.get_sample_value("tillflow_backup_runs_total", {"result": result}) is not None


def test_refresh_sets_the_gauges_from_the_backups_on_disk(tmp_path):
    from test_backup_manifest import manifest  # the one manifest factory

    from backup.manifest import Verification
    from backup.store import Backup

    newest = Backup(tmp_path, manifest(name="db-20260105T120000Z", created_at="2026-01-05T12:00:00Z"),
                    {"quick": Verification("quick", "2026-01-05T12:00:10Z", True, "ok"),
                     "full": Verification("full", "2026-01-06T03:30:00Z", False, "checksum differs")})
    older = Backup(tmp_path, manifest(name="db-20260104T120000Z", created_at="2026-01-04T12:00:00Z"),
                   {"quick": Verification("quick", "2026-01-04T12:00:10Z", True, "ok"),
                    "full": Verification("full", "2026-01-05T03:30:00Z", True, "ok")})
    metrics.refresh([newest, older])
    value = REGISTRY.get_sample_value
    assert value("tillflow_backup_last_success_timestamp_seconds") == t(5, 12).timestamp()
    assert value("tillflow_backup_size_bytes") == newest.manifest.size_bytes
    assert value("tillflow_backup_last_verified_timestamp_seconds") == t(4, 12).timestamp()
    assert value("tillflow_backup_last_verify_ok") == 0  # the latest restore test failed


def test_verify_ok_is_nan_until_a_verification_ran():
    # A fresh process: no verification known, so no alert on "== 0" before the first one.
    probe = (
        "import backup.metrics; from prometheus_client import REGISTRY; "
        "print(REGISTRY.get_sample_value('tillflow_backup_last_verify_ok'))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert math.isnan(float(done.stdout))


# -- the reconciliation the service runs (tillflow.reconcile) ----------------------------


def reconciled(rollups: int = 0, files: int = 0, pending: int = 0) -> reconcile.Result:
    return reconcile.Result(
        t(5, 13), None, None, 600.0,
        (reconcile.RollupCheck("sales.daily_store_totals", "store_id", 10, rollups, ()),
         reconcile.RollupCheck("sales.daily_product_totals", "name", 40, 0, ())),
        reconcile.FileCheck(3, files, (), pending, ()),
    )


def test_the_reconciliation_runs_at_start_after_each_backup_and_on_its_schedule(tmp_path, monkeypatch):
    fake = FakeTime(t(5, 13, 7), until=t(5, 19, 30))
    ctx = Context(Store(tmp_path), None, Tools(tmp_path, stop=fake), clock=fake.clock)
    jobs: list[tuple[str, datetime.datetime]] = []
    for job in ("backup", "verify", "reconcile"):
        monkeypatch.setattr(schedule.Scheduler, job, lambda self, job=job: jobs.append((job, fake.now)))
    schedule.Scheduler(ctx, "0 */6 * * *", "30 3 * * *", "15 * * * *").run()
    assert jobs == [
        ("backup", t(5, 13, 7)), ("reconcile", t(5, 13, 7)),   # after the backup
        ("verify", t(5, 13, 7)),
        ("reconcile", t(5, 13, 15)), ("reconcile", t(5, 14, 15)), ("reconcile", t(5, 15, 15)),
        ("reconcile", t(5, 16, 15)), ("reconcile", t(5, 17, 15)),
        ("backup", t(5, 18)), ("reconcile", t(5, 18)),
        ("reconcile", t(5, 18, 15)), ("reconcile", t(5, 19, 15)),
    ]


def test_without_a_reconcile_schedule_only_backups_and_verifications_run(tmp_path, monkeypatch):
    fake = FakeTime(t(5, 13, 7), until=t(5, 19, 30))
    ctx = Context(Store(tmp_path), None, Tools(tmp_path, stop=fake), clock=fake.clock)
    jobs: list[str] = []
    for job in ("backup", "verify", "reconcile"):
        monkeypatch.setattr(schedule.Scheduler, job, lambda self, job=job: jobs.append(job))
    schedule.Scheduler(ctx, "0 */6 * * *", "30 3 * * *").run()
    assert jobs == ["backup", "verify", "backup"]


class _Connection:
    closed = False

    def close(self) -> None:
        self.closed = True


def test_a_reconciliation_exports_what_it_found_and_a_failed_one_says_so(tmp_path, monkeypatch):
    from backup.tools import Server

    fake = FakeTime(t(5, 13), until=t(5, 14))
    server = Server.from_url("postgresql://tillflow_backup@db:5432/tillflow")
    ctx = Context(Store(tmp_path), server, Tools(tmp_path, stop=fake), clock=fake.clock)
    conn = _Connection()
    monkeypatch.setattr(Server, "connect", lambda self, dbname=None, **_: conn)
    monkeypatch.setattr(schedule.reconcile, "run", lambda connection: reconciled(rollups=3, files=1, pending=2))
    scheduler = schedule.Scheduler(ctx, "0 */6 * * *", "30 3 * * *", "15 * * * *")
    value = REGISTRY.get_sample_value

    scheduler.reconcile()
    assert conn.closed
    assert value("tillflow_reconcile_differences", {"check": "rollups"}) == 3
    assert value("tillflow_reconcile_differences", {"check": "files"}) == 1
    assert value("tillflow_reconcile_pending_files") == 2
    assert value("tillflow_reconcile_last_success") == 1
    assert value("tillflow_reconcile_last_run_timestamp_seconds") == t(5, 13).timestamp()

    def down(connection):
        raise SinkError("recomputing sales.daily_store_totals failed: terminating connection")

    fake.now = t(5, 13, 15)
    monkeypatch.setattr(schedule.reconcile, "run", down)
    scheduler.reconcile()
    assert value("tillflow_reconcile_last_success") == 0
    assert value("tillflow_reconcile_last_run_timestamp_seconds") == t(5, 13, 15).timestamp()
    assert value("tillflow_reconcile_differences", {"check": "rollups"}) == 3, "what is known stays"

    fake.now = t(5, 14, 15)
    monkeypatch.setattr(schedule.reconcile, "run", lambda connection: reconciled())
    scheduler.reconcile()
    assert value("tillflow_reconcile_last_success") == 1
    assert value("tillflow_reconcile_differences", {"check": "rollups"}) == 0
    assert value("tillflow_reconcile_differences", {"check": "files"}) == 0


def test_a_reconciliation_without_a_database_fails_without_stopping_the_service(tmp_path):
    fake = FakeTime(t(5, 13), until=t(5, 14))
    ctx = Context(Store(tmp_path), None, Tools(tmp_path, stop=fake), clock=fake.clock)
    schedule.Scheduler(ctx, "0 */6 * * *", "30 3 * * *", "15 * * * *").reconcile()
    assert REGISTRY.get_sample_value("tillflow_reconcile_last_success") == 0


def test_the_reconcile_gauges_are_nan_until_a_run_completed():
    probe = (
        "import backup.metrics; from prometheus_client import REGISTRY; v = REGISTRY.get_sample_value; "
        "print(v('tillflow_reconcile_differences', {'check': 'rollups'}), "
        "v('tillflow_reconcile_differences', {'check': 'files'}), v('tillflow_reconcile_last_success'))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert all(math.isnan(float(word)) for word in done.stdout.split())
