"""The consumer's progress in Kafka: checkpoints and lag, apart from the loop that
polls, pauses and writes (``consumer.worker``).

``Checkpoint``
    commits a batch's offsets once PostgreSQL committed the batch (the order
    quix-streams documents for its checkpoints), takes a commit refused by a
    rebalance in its stride (the new owner replays, harmlessly), and tells
    whether the group has committed every partition to its end
    (``tillflow consume --until-idle``).
``LagReporter``
    ``tillflow_consumer_lag_records`` per assigned partition; a partition handed
    to another replica stops being reported here.
"""
from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from consumer import metrics
from tillflow.config import Settings

log = logging.getLogger("tillflow.consumer")

KAFKA_TIMEOUT = 10.0  # seconds for a metadata or offsets request
_LAG_QUERY_EVERY = 10.0  # seconds between offset queries for partitions not read from yet
# A commit refused because the group moved on: the new owner replays, harmlessly.
_REBALANCED = {KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID,
               KafkaError._ASSIGNMENT_LOST}


class Checkpoint:
    def __init__(self, settings: Settings) -> None:
        self._topics = (settings.topic_transactions, settings.topic_rejects)

    def commit(self, consumer: Consumer, offsets: dict[tuple[str, int], int]) -> None:
        """Commit ``offsets`` (the next offset per partition), after the database commit."""
        try:
            consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() not in _REBALANCED:
                raise
            # The group rebalanced while we wrote: the new owner replays these
            # records and the sink makes that a no-op.
            log.warning("offset commit refused after a rebalance (records will be replayed, harmlessly): %s",
                        error.str())
            return
        metrics.LAST_COMMIT.set_to_current_time()

    def _partitions(self, consumer: Consumer) -> list[TopicPartition]:
        topics = consumer.list_topics(timeout=KAFKA_TIMEOUT).topics
        return [
            TopicPartition(name, p)
            for name in self._topics
            if name in topics and topics[name].error is None
            for p in topics[name].partitions
        ]

    def caught_up(self, consumer: Consumer, idle_for: float, until_idle: float) -> bool:
        """True when the group has committed every partition to its end.

        Called with nothing in flight, so the group's committed offsets are
        exactly what is stored; a member that was not (yet) handed any
        partition, e.g. while the coordinator waits out a killed member's
        session, does not mistake that for being done.
        """
        try:
            partitions = self._partitions(consumer)
            if not partitions:
                return idle_for >= until_idle + 60
            for tp in consumer.committed(partitions, timeout=KAFKA_TIMEOUT):
                low, high = consumer.get_watermark_offsets(tp, timeout=KAFKA_TIMEOUT, cached=False)
                if max(tp.offset, low) < high:
                    return False
        except KafkaException as exc:
            log.info("cannot tell whether everything is committed yet: %s", exc.args[0].str())
            return False
        return True


class LagReporter:
    def __init__(self, settings: Settings) -> None:
        self._transactions = settings.topic_transactions
        self._labels: set[tuple[str, str]] = set()
        self._queried = float("-inf")
        self._unread: dict[tuple[str, int], int] = {}

    def _kind(self, topic: str) -> str:
        return "transactions" if topic == self._transactions else "rejects"

    def report(self, consumer: Consumer) -> None:
        assigned = set()
        try:
            positions = consumer.position(consumer.assignment())
        except KafkaException:
            return
        # A partition not read from since it was assigned has no position yet:
        # its lag counts from the group's committed offset (or the log's start),
        # asked of the brokers at most every _LAG_QUERY_EVERY seconds.
        unread = [tp for tp in positions if tp.offset < 0]
        if unread and time.monotonic() - self._queried >= _LAG_QUERY_EVERY:
            self._queried = time.monotonic()
            self._unread = self._lag_from_committed(consumer, unread)
        for tp in positions:
            labels = (self._kind(tp.topic), str(tp.partition))
            assigned.add(labels)
            if tp.offset < 0:
                lag = self._unread.get((tp.topic, tp.partition))
            else:
                try:
                    _low, high = consumer.get_watermark_offsets(tp, cached=True)
                except KafkaException:
                    continue
                lag = high - tp.offset if high >= 0 else None
            if lag is not None:
                metrics.LAG.labels(*labels).set(max(0, lag))
        # A partition handed to another replica is its to report: a stale value
        # here would add phantom lag to the sum the alerts read.
        for labels in self._labels - assigned:
            try:
                metrics.LAG.remove(*labels)
            except KeyError:  # another worker of this process removed it (tests run several)
                pass
        self._labels = assigned

    @staticmethod
    def _lag_from_committed(consumer: Consumer, partitions: list[TopicPartition]) -> dict[tuple[str, int], int]:
        lags = {}
        try:
            for tp in consumer.committed(partitions, timeout=KAFKA_TIMEOUT):
                low, high = consumer.get_watermark_offsets(tp, timeout=KAFKA_TIMEOUT, cached=False)
                lags[tp.topic, tp.partition] = high - max(tp.offset, low)
        except KafkaException as exc:
            log.debug("cannot read committed offsets for the lag: %s", exc)
        return lags
