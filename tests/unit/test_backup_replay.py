"""What a restore replays from Kafka and what it reports lost (backup.replay), and the
retention check against the backup schedule (backup.recover), without a cluster."""
from __future__ import annotations

import datetime

from hypothesis import given
from hypothesis import strategies as st

from backup import recover, replay
from backup.schedule import longest_interval
from tillflow.config import Settings

TX, REJ = "tillflow.transactions", "tillflow.rejects"


def test_everything_after_the_backup_is_replayed_when_kafka_still_holds_it():
    plan = replay.plan({(TX, 0): 100, (TX, 1): 40}, {(TX, 0): (0, 150), (TX, 1): (30, 40), (TX, 2): (0, 7)})
    assert plan.starts == {(TX, 0): 100, (TX, 1): 40, (TX, 2): 0}
    assert plan.replay == {(TX, 0): 50, (TX, 1): 0, (TX, 2): 7}
    assert plan.records == 57 and plan.lost == () and plan.known


def test_records_retention_deleted_before_they_were_stored_are_named_exactly():
    plan = replay.plan({(TX, 0): 100}, {(TX, 0): (250, 300), (REJ, 0): (5, 9)})
    assert [str(lost) for lost in plan.lost] == [
        "tillflow.rejects[0] offsets 0-4 (5 records)",
        "tillflow.transactions[0] offsets 100-249 (150 records)",
    ]
    assert plan.lost_records == 155
    assert plan.starts == {(TX, 0): 250, (REJ, 0): 5}, "the group starts at what Kafka still has"


def test_a_log_shorter_than_the_backup_saw_is_replayed_whole():
    plan = replay.plan({(TX, 0): 500}, {(TX, 0): (0, 12)})
    assert plan.recreated == ((TX, 0),) and plan.starts == {(TX, 0): 0} and plan.records == 12
    assert plan.lost == ()


def test_a_backup_without_positions_replays_everything_and_claims_no_loss():
    plan = replay.plan(None, {(TX, 0): (40, 90)})
    assert not plan.known and plan.starts == {(TX, 0): 40} and plan.lost == () and plan.records == 50
    assert "before migration 0010" in recover.describe(plan, "tillflow-writer")[0]


def test_positions_of_partitions_kafka_does_not_have_are_reported():
    plan = replay.plan({(TX, 0): 1, (TX, 9): 5}, {(TX, 0): (0, 1)})
    assert plan.orphaned == ((TX, 9),)
    assert any("no such partition" in line for line in recover.describe(plan, "g"))


def test_the_description_lists_each_lost_range():
    plan = replay.plan({(TX, 0): 1}, {(TX, 0): (3, 4)})
    lines = recover.describe(plan, "tillflow-writer")
    assert lines[-1] == "  tillflow.transactions[0] offsets 1-2 (2 records)"
    assert "LOST" in lines[-2]


offsets = st.integers(0, 10_000)


@given(st.dictionaries(st.tuples(st.sampled_from([TX, REJ]), st.integers(0, 3)),
                       st.tuples(offsets, offsets).map(sorted), max_size=8),
       st.dictionaries(st.tuples(st.sampled_from([TX, REJ]), st.integers(0, 3)), offsets, max_size=8))
def test_every_offset_after_the_backup_is_either_replayed_or_reported_lost(logs, stored):
    plan = replay.plan(stored, logs)
    for key, (low, high) in logs.items():
        position = stored.get(key, 0)
        if position > high:
            continue  # a made-anew log: all of it replayed
        lost = {o for item in plan.lost if (item.topic, item.partition) == key for o in range(item.first, item.last + 1)}
        replayed = set(range(plan.starts[key], high))
        assert lost | replayed == set(range(position, high)), "nothing after the backup falls through"
        assert not lost & replayed
        assert all(o < low for o in lost), "only what Kafka no longer holds is called lost"
    assert replay.missing_after(stored, {k: low for k, (low, _) in logs.items()}) == sum(
        max(0, low - stored.get(k, 0)) for k, (low, _) in logs.items())


def test_missing_after_is_unknown_without_positions():
    assert replay.missing_after(None, {(TX, 0): 10}) is None


# -- the retention check ---------------------------------------------------------------------------

NOW = datetime.datetime(2026, 12, 7, tzinfo=datetime.timezone.utc)
DAY_MS = 24 * 3600 * 1000


def settings(schedule: str) -> Settings:
    return Settings.from_env({"BACKUP_SCHEDULE": schedule})


def test_the_longest_gap_between_backups_is_read_from_the_cron_expression():
    assert longest_interval("0 */6 * * *", NOW) == datetime.timedelta(hours=6)
    assert longest_interval("0 9-17 * * 1-5", NOW) == datetime.timedelta(days=2, hours=16)  # Fri 17:00 -> Mon 09:00
    assert longest_interval("0 1 * * 1", NOW) == datetime.timedelta(days=7)


def test_retention_shorter_than_twice_the_backup_interval_is_warned_about():
    s = settings("0 1 * * 1")  # weekly
    interval = longest_interval(s.backup_schedule, NOW)
    warnings = recover.retention_warnings(s, {TX: 14 * DAY_MS - 1, REJ: 14 * DAY_MS}, interval)
    assert len(warnings) == 1
    assert warnings[0].startswith(f"topic {TX} keeps records for 14 days, less than twice the longest gap between "
                                  "two backups (7 days, BACKUP_SCHEDULE='0 1 * * 1')")


def test_the_default_schedule_and_retention_are_fine_and_infinite_retention_is_never_short():
    s = settings("0 */6 * * *")
    interval = longest_interval(s.backup_schedule, NOW)
    assert recover.retention_warnings(s, {TX: 14 * DAY_MS, REJ: None}, interval) == []
    assert recover.retention_warnings(s, {TX: 12 * 3600 * 1000 - 1}, interval) != []
