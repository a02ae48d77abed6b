"""Retention (backup.retention): which backups survive a prune, without a disk."""
from __future__ import annotations

import datetime

from hypothesis import given
from hypothesis import strategies as st

from backup.retention import Candidate, to_keep

UTC = datetime.timezone.utc


def at(day: int, hour: int = 12) -> datetime.datetime:
    # 2026-01-01 is a Thursday; ISO week 1 of 2026 runs Mon 2025-12-29 .. Sun 2026-01-04.
    return datetime.datetime(2026, 1, 1, hour, tzinfo=UTC) + datetime.timedelta(days=day - 1)


def candidate(day: int, hour: int = 12, verified: bool = True, restore_tested: bool = False) -> Candidate:
    return Candidate(f"db-{day:02d}-{hour:02d}", at(day, hour), verified, restore_tested)


def test_keeps_the_newest_backup_of_each_of_the_last_n_days():
    backups = [candidate(day) for day in range(1, 7)]
    assert to_keep(backups, keep_daily=3, keep_weekly=0) == {"db-04-12", "db-05-12", "db-06-12"}


def test_the_newest_of_a_day_is_the_one_kept():
    backups = [candidate(5, 0), candidate(5, 6), candidate(5, 18), candidate(4, 23)]
    assert to_keep(backups, keep_daily=2, keep_weekly=0) == {"db-05-18", "db-04-23"}


def test_days_without_backups_use_no_slot():
    backups = [candidate(1), candidate(2), candidate(10)]
    assert to_keep(backups, keep_daily=3, keep_weekly=0) == {"db-01-12", "db-02-12", "db-10-12"}


def test_weekly_slots_keep_the_newest_of_each_iso_week():
    # days 1-4: ISO week 1; 5-11: week 2; 12-18: week 3
    backups = [candidate(day) for day in (2, 4, 6, 11, 12, 13)]
    assert to_keep(backups, keep_daily=1, keep_weekly=2) == {"db-13-12", "db-11-12"}
    assert to_keep(backups, keep_daily=0, keep_weekly=3) == {"db-13-12", "db-11-12", "db-04-12"}


def test_zero_and_zero_still_keeps_the_newest_verified_backup():
    backups = [candidate(day) for day in range(1, 5)]
    assert to_keep(backups, keep_daily=0, keep_weekly=0) == {"db-04-12"}


def test_unverified_backups_fill_no_slot_and_the_newest_verified_one_stays():
    backups = [candidate(1), candidate(2), candidate(3, verified=False), candidate(4, verified=False)]
    kept = to_keep(backups, keep_daily=1, keep_weekly=0)
    # day 2 is the newest verified; days 3 and 4 are newer, not proven bad yet or failed: kept until a
    # newer backup is verified. Day 1 goes.
    assert kept == {"db-02-12", "db-03-12", "db-04-12"}


def test_a_failed_backup_older_than_the_newest_verified_one_is_pruned():
    backups = [candidate(1), candidate(2, verified=False), candidate(3)]
    assert to_keep(backups, keep_daily=5, keep_weekly=5) == {"db-01-12", "db-03-12"}


def test_the_newest_restore_tested_backup_survives_any_number_of_newer_checksum_checked_ones():
    """The report: `make backup` after the nightly restore test pruned the only restore-tested backup."""
    backups = [candidate(1, restore_tested=True)] + [candidate(1, hour) for hour in (13, 14, 15)] + [
        candidate(day) for day in range(2, 9)]
    for daily, weekly in ((0, 0), (1, 0), (7, 4), (0, 1)):
        kept = to_keep(backups, keep_daily=daily, keep_weekly=weekly)
        assert "db-01-12" in kept, (daily, weekly)
    # Only the newest restore-tested one is held on to: an older one goes like any other.
    backups.append(candidate(3, 6, restore_tested=True))
    kept = to_keep(backups, keep_daily=1, keep_weekly=0)
    assert kept == {"db-08-12", "db-03-06"}


def test_a_restore_tested_backup_that_later_failed_a_check_is_not_held_on_to():
    backups = [candidate(1, verified=False, restore_tested=True), candidate(2)]
    assert to_keep(backups, keep_daily=1, keep_weekly=0) == {"db-02-12"}


def test_nothing_is_pruned_while_no_backup_is_verified():
    backups = [candidate(day, verified=False) for day in range(1, 5)]
    assert to_keep(backups, keep_daily=1, keep_weekly=0) == {c.name for c in backups}


def test_days_are_utc_days():
    paris = datetime.timezone(datetime.timedelta(hours=1))
    late = Candidate("late", datetime.datetime(2026, 1, 5, 0, 30, tzinfo=paris), True)  # 23:30 UTC on the 4th
    early = Candidate("early", datetime.datetime(2026, 1, 4, 1, 0, tzinfo=UTC), True)
    assert to_keep([late, early], keep_daily=2, keep_weekly=0) == {"late"}


moments = st.datetimes(
    min_value=datetime.datetime(2025, 1, 1), max_value=datetime.datetime(2027, 1, 1), timezones=st.just(UTC)
)
histories = st.lists(st.tuples(moments, st.booleans(), st.booleans()), max_size=40, unique_by=lambda item: item[0])


@given(histories, st.integers(0, 10), st.integers(0, 6))
def test_invariants(history, keep_daily, keep_weekly):
    backups = [Candidate(f"b{i}", moment, verified, tested) for i, (moment, verified, tested) in enumerate(history)]
    kept = to_keep(backups, keep_daily, keep_weekly)
    verified = sorted((c for c in backups if c.verified), key=lambda c: c.created)
    assert kept <= {c.name for c in backups}
    if not verified:
        assert kept == {c.name for c in backups}
        return
    newest = verified[-1]
    assert newest.name in kept, "the newest verified backup is never deleted"
    assert {c.name for c in backups if c.created > newest.created} <= kept, "nothing newer is judged"
    tested = [c for c in verified if c.restore_tested]
    if tested:
        assert tested[-1].name in kept, "the newest restore-tested backup is never deleted"
    held = tested[-1] if tested else None  # kept whatever the slots say
    kept_verified = [c for c in verified if c.name in kept and c is not held]
    days = {c.created.date() for c in verified if c.name in kept}
    assert len(kept_verified) <= max(keep_daily, 1) + keep_weekly
    assert len(days) >= min(keep_daily, len({c.created.date() for c in verified}))
    # Among verified backups older than the newest, only slot holders survive: each is the newest of its day or week.
    for c in kept_verified:
        same_day = [o for o in verified if o.created.date() == c.created.date()]
        same_week = [o for o in verified if o.created.isocalendar()[:2] == c.created.isocalendar()[:2]]
        assert c is newest or c is same_day[-1] or c is same_week[-1]

