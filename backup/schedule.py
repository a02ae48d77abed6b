"""``tillflow backup schedule``: the backup service's long-running loop.

Takes a backup on ``BACKUP_SCHEDULE`` and runs a verification pass on
``BACKUP_VERIFY_SCHEDULE`` (every backup checked, the newest restored into a
scratch database), both cron expressions read in UTC, one job at a time; a
backup due with a verification goes first, so the pass sees it. On start it
catches up: a backup at once if none was taken since the schedule last fired
(a fresh install, or a container that was down at that time), then a pass if
none ran since its own schedule last fired. The metrics are served on
``METRICS_PORT``, set at start from the backups on disk. A failed job is
logged and counted, and the loop goes on. SIGTERM stops a running pg_dump or
pg_restore, removes its partial files, and ends the loop (exit 0): a dump can
outlast any stop grace period, an interrupted one leaves nothing behind, and
the catch-up takes it again at the next start.

With ``RECONCILE_SCHEDULE`` it also runs ``tillflow reconcile`` (every date,
every settled file; ``tillflow.reconcile``): at start, after each backup, and
on that schedule, and exports the result (``tillflow_reconcile_*``, see
``backup.metrics``). Differences are logged and exported, never fatal; a run
that cannot reach the database sets ``tillflow_reconcile_last_success`` to 0.
"""
from __future__ import annotations

import datetime
import logging
import time

from croniter import croniter

from backup import dump, metrics, recover, verify
from backup.context import Context
from backup.errors import BackupError, Cancelled
from backup.kafka_log import KafkaLog
from tillflow import reconcile
from tillflow.config import Settings
from tillflow.errors import SinkError, TillflowError

log = logging.getLogger(__name__)

_MAX_SLEEP = 60.0  # re-read the clock at least this often (it may jump)
_REPLAY_CHECK_EVERY = 300.0  # seconds between two looks at Kafka's log starts


def next_fire(expression: str, after: datetime.datetime) -> datetime.datetime:
    return croniter(expression, after).get_next(datetime.datetime)


def longest_interval(expression: str, now: datetime.datetime, *, days: int = 35) -> datetime.timedelta:
    """The longest time between two consecutive fires of ``expression`` over the next ``days``."""
    fires = croniter(expression, now)
    end = now + datetime.timedelta(days=days)
    previous = fires.get_next(datetime.datetime)
    longest = datetime.timedelta(0)
    while previous < end:
        fire = fires.get_next(datetime.datetime)
        longest = max(longest, fire - previous)
        previous = fire
    return longest


def first_due(expression: str, now: datetime.datetime, last_done: datetime.datetime | None) -> datetime.datetime:
    """When a job is first due: now if it has not run since the schedule last fired, else the next fire."""
    # get_prev is strictly before its start: a second later, so that a fire at `now` counts.
    previous = croniter(expression, now + datetime.timedelta(seconds=1)).get_prev(datetime.datetime)
    if last_done is None or last_done < previous:
        return now
    return next_fire(expression, now)


class Scheduler:
    def __init__(self, ctx: Context, backup_schedule: str, verify_schedule: str,
                 reconcile_schedule: str | None = None, *, kafka: Settings | None = None) -> None:
        self.ctx = ctx
        self.backup_schedule = backup_schedule
        self.verify_schedule = verify_schedule
        self.reconcile_schedule = reconcile_schedule  # None: no reconciliation
        # Kafka's topics, to check the newest backup plus Kafka still covers
        # everything (None or no servers: not checked).
        self.kafka = kafka if kafka is not None and kafka.kafka_bootstrap_servers else None
        # One admin connection for the service's life, not one per look at Kafka.
        self._kafka_log = KafkaLog(self.kafka.kafka_bootstrap_servers) if self.kafka else None
        self._replay_checked = float("-inf")
        self._replay_failing = False
        self.stop = ctx.tools.stop

    def run(self) -> None:
        backups = self.ctx.store.backups()
        metrics.refresh(backups)
        now = self.ctx.clock()
        fulls = [b.verifications["full"].moment for b in backups if "full" in b.verifications]
        next_backup = first_due(self.backup_schedule, now, backups[0].manifest.created if backups else None)
        next_verify = first_due(self.verify_schedule, now, max(fulls) if fulls else None)
        # Nothing records when it last ran: at once, so a restarted service exports a result soon.
        next_reconcile = now if self.reconcile_schedule else None
        log.info("backup schedule %r (next %s), verification %r (next %s), reconciliation %r, UTC",
                 self.backup_schedule, next_backup.isoformat(timespec="minutes"), self.verify_schedule,
                 next_verify.isoformat(timespec="minutes"), self.reconcile_schedule or "off")
        self.check_retention()
        while not self.stop.is_set():
            if time.monotonic() - self._replay_checked >= _REPLAY_CHECK_EVERY:
                self.check_replay()
            now = self.ctx.clock()
            if now >= next_backup:
                self.backup()
                next_backup = next_fire(self.backup_schedule, self.ctx.clock())
                if self.reconcile_schedule and not self.stop.is_set():
                    self.reconcile()
                    next_reconcile = next_fire(self.reconcile_schedule, self.ctx.clock())
            elif now >= next_verify:
                self.verify()
                next_verify = next_fire(self.verify_schedule, self.ctx.clock())
            elif next_reconcile is not None and now >= next_reconcile:
                self.reconcile()
                next_reconcile = next_fire(self.reconcile_schedule, self.ctx.clock())
            else:
                due = min(moment for moment in (next_backup, next_verify, next_reconcile) if moment is not None)
                wait = (due - now).total_seconds()
                self.stop.wait(min(max(wait, 0.0), _MAX_SLEEP))
        log.info("stopped")

    def backup(self) -> None:
        started = time.monotonic()
        try:
            result = dump.run(self.ctx)
        except Cancelled:
            metrics.backup_failed(time.monotonic() - started)
            log.warning("backup stopped by SIGTERM; its partial files were removed")
            return
        except Exception as exc:  # noqa: BLE001 - the service must outlive any one failed backup
            metrics.backup_failed(time.monotonic() - started)
            if isinstance(exc, BackupError):
                log.error("backup failed: %s", exc)
            else:
                log.exception("backup failed unexpectedly")
            return
        metrics.backup_succeeded(result.backup, result.duration_seconds)
        self.check_replay()

    def check_retention(self) -> None:
        """At start: warn when Kafka keeps records for less than twice the longest gap between backups."""
        if self.kafka is None:
            log.warning("KAFKA_BOOTSTRAP_SERVERS is not set: whether Kafka still holds what the newest backup "
                        "lacks is not checked")
            return
        try:
            interval = longest_interval(self.backup_schedule, self.ctx.clock())
            for line in recover.check_retention(self.kafka, interval):
                log.warning("%s", line)
        except TillflowError as exc:
            log.warning("Kafka's retention against BACKUP_SCHEDULE could not be checked: %s", exc)

    def check_replay(self) -> None:
        """Export the records after the newest backup's positions that Kafka no longer holds."""
        self._replay_checked = time.monotonic()
        if self.kafka is None:
            return
        backups = self.ctx.store.backups()
        positions = backups[0].manifest.positions if backups else None
        try:
            missing = recover.missing_records(self.kafka, positions, self._kafka_log)
        except TillflowError as exc:
            if not self._replay_failing:
                log.warning("cannot read Kafka's log starts (retried every %.0fs): %s", _REPLAY_CHECK_EVERY, exc)
            self._replay_failing = True
            metrics.replay_missing({topic: None for topic in recover.topics(self.kafka)}, self.kafka)
            return
        if self._replay_failing:
            log.info("Kafka's log starts are readable again")
        self._replay_failing = False
        metrics.replay_missing(missing, self.kafka)
        lost = sum(count for count in missing.values() if count)
        if lost:
            log.error("Kafka no longer holds %d records written after the newest backup's positions: losing the "
                      "database now would lose them; take a backup (make backup)", lost)

    def verify(self) -> None:
        started = time.monotonic()
        try:
            outcomes = verify.run_pass(self.ctx, full=True)
            ok = bool(outcomes) and all(outcome.ok for _, outcome in outcomes)
            if not outcomes:
                log.error("verification: there is no backup to verify")
        except Cancelled:
            return
        except Exception as exc:  # noqa: BLE001
            ok = False
            if isinstance(exc, BackupError):
                log.error("verification could not run: %s", exc)
            else:
                log.exception("verification failed unexpectedly")
        newest = next((b for b in self.ctx.store.backups() if b.fully_verified), None)
        metrics.verification_done(ok, time.monotonic() - started, newest)

    def reconcile(self) -> None:
        """``tillflow reconcile`` over every date and settled file, into the metrics and the log."""
        started = time.monotonic()
        try:
            server = self.ctx.need_server()
            conn = server.connect(application="tillflow-reconcile", purpose="to reconcile", error=SinkError)
            try:
                result = reconcile.run(conn)
            finally:
                conn.close()
        except Exception as exc:  # noqa: BLE001 - the service must outlive any one failed run
            metrics.reconcile_failed(time.monotonic() - started, self.ctx.clock().timestamp())
            if isinstance(exc, TillflowError):
                log.error("reconciliation could not run: %s", exc)
            else:
                log.exception("reconciliation failed unexpectedly")
            return
        metrics.reconcile_done(result, time.monotonic() - started, self.ctx.clock().timestamp())
        pending = result.files.pending if result.files is not None else 0
        if result.ok:
            log.info("reconciliation: every total agrees (%d files checked, %d pending)",
                     result.files.checked if result.files is not None else 0, pending)
            return
        shown = [*(d for check in result.rollups for d in check.shown),
                 *(result.files.shown if result.files is not None else ())]
        log.error("reconciliation: %d rollup and %d file differences%s; tillflow reconcile lists them",
                  result.differences("rollups"), result.differences("files"),
                  f", first: {reconcile.describe(shown[0])}" if shown else "")
