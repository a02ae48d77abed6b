"""The backup service's Prometheus metrics, declared once; ``result`` is success or failure.

The alerting rules rely on these names. Gauges describe the backups on disk,
so ``refresh`` sets them from the directory when the scheduler starts: a
restarted container reports the age of the real newest backup, not zero.
``tillflow_backup_last_verify_ok`` is NaN until a verification has run.

The service also runs ``tillflow reconcile`` (``tillflow.reconcile``):
``tillflow_reconcile_differences{check="rollups"|"files"}`` holds what the last
completed run found (NaN until one completed; a run that could not complete
leaves it as it was and sets ``tillflow_reconcile_last_success`` to 0).
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge, start_http_server

from backup.store import Backup
from tillflow.reconcile import CHECKS, Result

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

RECONCILE_DIFFERENCES = Gauge(
    "tillflow_reconcile_differences",
    "Values that differ in the last completed reconciliation: rollups against the rows they sum, or a file's "
    "control totals against where its rows ended (NaN: none completed yet)",
    ["check"],
)
RECONCILE_PENDING = Gauge(
    "tillflow_reconcile_pending_files", "Files the last completed reconciliation left for later: still settling"
)
RECONCILE_LAST_RUN = Gauge(
    "tillflow_reconcile_last_run_timestamp_seconds",
    "When the last reconciliation ended, whatever its result (Unix time)",
)
RECONCILE_LAST_SUCCESS = Gauge(
    "tillflow_reconcile_last_success",
    "1 if the last reconciliation completed its checks (whatever it found), 0 if it could not (NaN: none yet)",
)
RECONCILE_DURATION = Gauge("tillflow_reconcile_duration_seconds", "How long the last reconciliation took")

REPLAY_MISSING = Gauge(
    "tillflow_backup_replay_missing_records",
    "Records after the newest backup's Kafka positions that Kafka no longer holds (retention deleted them): "
    "not zero means a lost database could not be rebuilt from that backup plus Kafka (NaN: not known)",
    ["topic_kind"],
)

RESULTS = ("success", "failure")
for _result in RESULTS:
    RUNS.labels(result=_result)
LAST_VERIFY_OK.set(float("nan"))
for _check in CHECKS:
    RECONCILE_DIFFERENCES.labels(check=_check).set(float("nan"))
RECONCILE_PENDING.set(float("nan"))
RECONCILE_LAST_SUCCESS.set(float("nan"))


def replay_missing(missing: dict[str, int | None], settings) -> None:
    """Set ``tillflow_backup_replay_missing_records`` per topic (None: not known)."""
    kinds = {settings.topic_transactions: "transactions", settings.topic_rejects: "rejects"}
    for topic, count in missing.items():
        REPLAY_MISSING.labels(topic_kind=kinds[topic]).set(float("nan") if count is None else count)


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


def reconcile_done(result: Result, duration: float, ended: float) -> None:
    for check in CHECKS:
        RECONCILE_DIFFERENCES.labels(check=check).set(result.differences(check))
    if result.files is not None:
        RECONCILE_PENDING.set(result.files.pending)
    RECONCILE_LAST_SUCCESS.set(1)
    RECONCILE_LAST_RUN.set(ended)
    RECONCILE_DURATION.set(duration)


def reconcile_failed(duration: float, ended: float) -> None:
    RECONCILE_LAST_SUCCESS.set(0)
    RECONCILE_LAST_RUN.set(ended)
    RECONCILE_DURATION.set(duration)


def serve(port: int) -> None:
    """Expose /metrics on ``port`` (all interfaces: Prometheus scrapes from its container)."""
    start_http_server(port)
