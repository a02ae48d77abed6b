"""The backup's Prometheus metrics, declared once; ``result`` is success or failure.

The alerting rules rely on these names. Gauges describe the backups on disk,
so ``refresh`` sets them from the directory when the scheduler starts: a
restarted container reports the age of the real newest backup, not zero.
``tillflow_backup_last_verify_ok`` is NaN until a verification has run.
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge, start_http_server

from backup.store import Backup

LAST_SUCCESS = Gauge(
    "tillflow_backup_last_success_timestamp_seconds", "When the newest complete backup was taken (Unix time)"
)
LAST_VERIFIED = Gauge(
    "tillflow_backup_last_verified_timestamp_seconds",
    "When the newest backup that passed a full restore verification was taken (Unix time)",
)
DURATION = Gauge("tillflow_backup_duration_seconds", "How long the last backup run took, whatever its result")
SIZE = Gauge("tillflow_backup_size_bytes", "Size of the newest complete backup (dump and globals)")
LAST_VERIFY_OK = Gauge(
    "tillflow_backup_last_verify_ok", "1 if the last verification pass succeeded, 0 if it failed (NaN: none yet)"
)
RUNS = Counter("tillflow_backup_runs_total", "Backup runs by result", ["result"])
VERIFY_DURATION = Gauge("tillflow_backup_verify_duration_seconds", "How long the last verification pass took")

RESULTS = ("success", "failure")
for _result in RESULTS:
    RUNS.labels(result=_result)
LAST_VERIFY_OK.set(float("nan"))


def refresh(backups: list[Backup]) -> None:
    """Set the gauges from the backups on disk (newest first)."""
    if backups:
        newest = backups[0].manifest
        LAST_SUCCESS.set(newest.created.timestamp())
        SIZE.set(newest.size_bytes)
        DURATION.set(newest.duration_seconds)
    verified = [b for b in backups if b.fully_verified]
    if verified:
        LAST_VERIFIED.set(verified[0].manifest.created.timestamp())
    fulls = [b.verifications["full"] for b in backups if "full" in b.verifications]
    if fulls:
        LAST_VERIFY_OK.set(1 if max(fulls, key=lambda v: v.moment).ok else 0)


def backup_succeeded(backup: Backup, duration: float) -> None:
    RUNS.labels(result="success").inc()
    DURATION.set(duration)
    LAST_SUCCESS.set(backup.manifest.created.timestamp())
    SIZE.set(backup.manifest.size_bytes)


def backup_failed(duration: float) -> None:
    RUNS.labels(result="failure").inc()
    DURATION.set(duration)


def verification_done(ok: bool, duration: float, newest_verified: Backup | None) -> None:
    LAST_VERIFY_OK.set(1 if ok else 0)
    VERIFY_DURATION.set(duration)
    if newest_verified is not None:
        LAST_VERIFIED.set(newest_verified.manifest.created.timestamp())


def serve(port: int) -> None:
    """Expose /metrics on ``port`` (all interfaces: Prometheus scrapes from its container)."""
    start_http_server(port)
