"""What a restore must replay from Kafka, and what Kafka can no longer give; pure.

A backup holds, per topic and partition, the offset after the last record the
consumer had stored (``ingest.kafka_positions``, read in the dump's snapshot).
Everything from there on is still to be stored after a restore, and Kafka holds
it from its log start (``low``) to its end (``high``). So, per partition:

* ``low <= stored``: every missing record is in Kafka; the consumer group is set
  to ``stored`` and the consumer re-reads ``high - stored`` records;
* ``stored < low``: retention deleted ``stored .. low - 1`` before it was
  replayed: those records are lost for good (unless some other copy exists),
  and the group starts at ``low``;
* ``stored > high``: the log is shorter than the backup saw, so the topic was
  deleted and made again (its offsets began anew); everything it holds is
  replayed from ``low``.

A partition with no stored position had nothing stored from it: it is
replayed from offset 0, and ``0 .. low - 1`` are lost if retention passed
them. A backup without positions (taken before migration 0010) says nothing
about where it stands: everything Kafka holds is replayed, and nothing can be
said about what is lost (``Plan.known`` is False).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

TopicPartition = tuple[str, int]


@dataclass(frozen=True, order=True)
class Lost:
    """Records retention deleted before they were stored: offsets ``first`` to ``last``, inclusive."""

    topic: str
    partition: int
    first: int
    last: int

    @property
    def records(self) -> int:
        return self.last - self.first + 1

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}] offsets {self.first}-{self.last} ({self.records:,} records)"


@dataclass(frozen=True)
class Plan:
    starts: dict[TopicPartition, int]  # where the consumer group starts, per partition
    replay: dict[TopicPartition, int]  # records it re-reads from there, per partition
    lost: tuple[Lost, ...]
    recreated: tuple[TopicPartition, ...]  # logs shorter than the backup saw
    orphaned: tuple[TopicPartition, ...]  # stored positions of partitions Kafka does not have
    known: bool  # False: the backup recorded no positions

    @property
    def records(self) -> int:
        return sum(self.replay.values())

    @property
    def lost_records(self) -> int:
        return sum(lost.records for lost in self.lost)


def plan(stored: Mapping[TopicPartition, int] | None,
         logs: Mapping[TopicPartition, tuple[int, int]]) -> Plan:
    """The replay of a backup with positions ``stored`` (None: none recorded) given
    Kafka's ``(low, high)`` offsets of every partition of the topics replayed."""
    positions = stored or {}
    starts: dict[TopicPartition, int] = {}
    replay: dict[TopicPartition, int] = {}
    lost: list[Lost] = []
    recreated: list[TopicPartition] = []
    for key in sorted(logs):
        low, high = logs[key]
        position = positions.get(key, 0) if stored is not None else low
        if position > high:
            recreated.append(key)
            position = low
        elif position < low:
            lost.append(Lost(key[0], key[1], position, low - 1))
            position = low
        starts[key] = position
        replay[key] = high - position
    orphaned = tuple(sorted(key for key in positions if key not in logs))
    return Plan(starts, replay, tuple(lost), tuple(recreated), orphaned, stored is not None)


def missing_after(stored: Mapping[TopicPartition, int] | None,
                  lows: Mapping[TopicPartition, int]) -> int | None:
    """Records after a backup's positions that Kafka no longer holds (None: the backup has no positions).

    Not zero means that losing the database now loses those records: only a
    newer backup covers them.
    """
    if stored is None:
        return None
    return sum(max(0, low - stored.get(key, 0)) for key, low in lows.items())
