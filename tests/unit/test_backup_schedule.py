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
