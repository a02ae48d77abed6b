"""Restore plus replay: the database as the backup had it, then everything after
it from Kafka (``tillflow backup restore --replace``, ``tillflow backup replay``).

1. Before anything changes: Kafka's log offsets are compared with the backup's
   positions (its manifest, read in the dump's snapshot). Records retention
   deleted before they were stored are lost for good: the restore names each
   partition and offset range and stops, unless ``--accept-loss``. The writer's
   consumer group must be empty (no consumer running): its offsets can only be
   set then.
2. The restore (``backup.restore``).
3. The positions stored in the restored database set the consumer group's
   offsets; the consumer, once started again, re-reads everything after them.
   Storing is idempotent, so what the backup already holds is not stored
   twice.

The retention check: a topic that keeps records for less than twice the time
between two backups may delete records no backup holds yet
(``retention_warnings``); ``tillflow_backup_replay_missing_records`` counts
those Kafka no longer has after the newest backup's positions.
"""
from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping

from backup import replay
from backup.errors import RestoreError
from backup.kafka_log import KafkaLog
from tillflow.config import Settings

log = logging.getLogger(__name__)

# A consumer stopped cleanly leaves its group at once; a killed one only when
# its session times out (consumer/worker.py: 30 s).
GROUP_WAIT_SECONDS = 90.0


def topics(settings: Settings) -> tuple[str, str]:
    return settings.topic_transactions, settings.topic_rejects


def check(settings: Settings, positions: Mapping[tuple[str, int], int] | None, *, what: str,
          accept_loss: bool) -> replay.Plan:
    """Step 1: what the replay of ``positions`` will take, refused if Kafka lost some of it."""
    kafka = KafkaLog(settings.kafka_bootstrap_servers)
    plan = replay.plan(positions, kafka.offsets(topics(settings)))
    if plan.lost and not accept_loss:
        raise RestoreError(
            f"Kafka no longer holds {plan.lost_records:,} records written after {what} (retention deleted "
            f"them): {'; '.join(str(lost) for lost in plan.lost)}. Nothing was changed. Restore a newer "
            "backup, or add --accept-loss to restore this one without them"
        )
    kafka.wait_group_empty(settings.consumer_group, GROUP_WAIT_SECONDS)
    return plan


def set_offsets(settings: Settings, positions: Mapping[tuple[str, int], int] | None) -> replay.Plan:
    """Step 3: point the writer's consumer group at ``positions`` (what the database holds)."""
    kafka = KafkaLog(settings.kafka_bootstrap_servers)
    plan = replay.plan(positions, kafka.offsets(topics(settings)))
    kafka.wait_group_empty(settings.consumer_group, GROUP_WAIT_SECONDS)
    kafka.set_group_offsets(settings.consumer_group, plan.starts)
    log.info("consumer group %s set to replay %d records", settings.consumer_group, plan.records)
    return plan


def describe(plan: replay.Plan, group: str) -> list[str]:
    """What the replay does, for the admin: a line each."""
    lines = []
    if not plan.known:
        lines.append("the backup records no Kafka positions (taken before migration 0010): the consumer replays "
                     f"everything Kafka holds, {plan.records:,} records; what Kafka deleted before cannot be told")
    else:
        starts = ", ".join(f"{t}[{p}] from {o}" for (t, p), o in plan.starts.items() if plan.replay[t, p])
        lines.append(f"replay: consumer group {group} reads on from the backup's positions, {plan.records:,} "
                     f"records to store again" + (f" ({starts})" if starts else ""))
    for topic, partition in plan.recreated:
        lines.append(f"{topic}[{partition}]: Kafka's log is shorter than the backup saw (the topic was made anew): "
                     "replaying all it holds")
    for topic, partition in plan.orphaned:
        lines.append(f"{topic}[{partition}]: the backup has a position there, but Kafka has no such partition")
    if plan.lost:
        lines.append(f"LOST: Kafka no longer holds {plan.lost_records:,} records written after the backup "
                     "(accepted with --accept-loss):")
        lines += [f"  {lost}" for lost in plan.lost]
    return lines


def retention_warnings(settings: Settings, retention: Mapping[str, int | None],
                       interval: datetime.timedelta) -> list[str]:
    """A line per topic that keeps records for less than twice ``interval``, the longest gap between
    two backups (``backup.schedule.longest_interval``)."""
    warnings = []
    for topic, ms in sorted(retention.items()):
        if ms is not None and ms < 2 * interval.total_seconds() * 1000:
            warnings.append(
                f"topic {topic} keeps records for {_hours(ms / 1000)}, less than twice the longest gap between "
                f"two backups ({_hours(interval.total_seconds())}, BACKUP_SCHEDULE={settings.backup_schedule!r}): "
                "a lost database may not be recoverable from the newest backup plus Kafka; raise the topic's "
                "retention.ms or back up more often"
            )
    return warnings


def check_retention(settings: Settings, interval: datetime.timedelta) -> list[str]:
    """``retention_warnings`` for the cluster as it is."""
    kafka = KafkaLog(settings.kafka_bootstrap_servers)
    return retention_warnings(settings, kafka.retention_ms(topics(settings)), interval)


def missing_records(settings: Settings, positions: Mapping[tuple[str, int], int] | None,
                    kafka: KafkaLog) -> dict[str, int | None]:
    """Per topic: records after ``positions`` (the newest backup's) that Kafka no longer holds."""
    logs = kafka.offsets(topics(settings))
    return {topic: replay.missing_after(positions, {k: low for k, (low, _) in logs.items() if k[0] == topic})
            for topic in topics(settings)}


def _hours(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours / 24:g} days" if hours >= 48 else f"{hours:g} hours"

