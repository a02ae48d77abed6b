"""Which backups to keep (``BACKUP_KEEP_DAILY``, ``BACKUP_KEEP_WEEKLY``); pure.

Only verified backups fill the slots. ``keep_daily`` N keeps, for each of the
N most recent days (UTC) that have a verified backup, the newest verified
backup of that day; ``keep_weekly`` N does the same for ISO weeks. Days and
weeks without a backup do not use up a slot, so a pause in backups never
empties the directory. On top of the slots, always kept:

* the newest verified backup, whatever the settings (even 0 and 0);
* the newest restore-tested backup (its full verification restored it into a
  scratch database and compared it), however many newer backups passed only
  their checksum check: until a newer one is restore-tested, it is the one
  backup known to restore;
* every backup newer than it: one not judged yet, or one that failed its
  verification, stays until a newer backup has been verified.

Everything else is pruned, including older backups that failed verification.
With no verified backup at all nothing is pruned.
"""
from __future__ import annotations

import datetime
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    name: str
    created: datetime.datetime
    verified: bool
    restore_tested: bool = False


def to_keep(candidates: Iterable[Candidate], keep_daily: int, keep_weekly: int) -> set[str]:
    """The names to keep; the caller deletes the others."""
    ordered = sorted(candidates, key=lambda c: (c.created, c.name), reverse=True)
    verified = [c for c in ordered if c.verified]
    if not verified:
        return {c.name for c in ordered}
    newest = ordered.index(verified[0])
    kept = {c.name for c in ordered[: newest + 1]}
    kept.update(next(([c.name] for c in ordered if c.restore_tested and c.verified), []))

    def slots(bucket: Callable[[datetime.datetime], Hashable], count: int) -> None:
        seen: set[Hashable] = set()
        for candidate in verified:
            key = bucket(candidate.created.astimezone(datetime.timezone.utc))
            if key in seen:
                continue
            if len(seen) == count:
                return
            seen.add(key)
            kept.add(candidate.name)

    slots(lambda moment: moment.date(), keep_daily)
    slots(lambda moment: moment.isocalendar()[:2], keep_weekly)
    return kept
