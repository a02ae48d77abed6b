"""Holding the backlog in Kafka while PostgreSQL is down (the worker's polling and pausing).

``OutageGate`` is the one place that pauses and resumes the writer's
partitions, as quix-streams' pausing manager is for its application:

* on the first failed write of an outage it pauses every assigned partition,
  logs once, and sets ``tillflow_consumer_db_up`` to 0;
* while the outage lasts the worker waits through :meth:`OutageGate.wait`,
  which keeps polling (so the member stays in its group) and rewinds any
  record that arrives anyway, so it is read again once PostgreSQL is back,
  never skipped;
* a partition handed over during the outage is paused on assignment;
* the first write that succeeds resumes them all and logs once more.

The retry schedule (capped exponential backoff) lives here too, so the worker
only says "this write failed" and "this one succeeded".
"""
from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import Consumer, TopicPartition

from consumer import metrics

log = logging.getLogger("tillflow.consumer")

BACKOFF_START = 0.5  # seconds before the first retry of a write
BACKOFF_MAX = 30.0


class OutageGate:
    def __init__(self, stopping: threading.Event) -> None:
        self._stopping = stopping
        self._backoff = BACKOFF_START
        self.paused = False

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """The consumer's ``on_assign``: take the partitions, paused while an outage lasts."""
        consumer.assign(partitions)
        if self.paused and partitions:
            consumer.pause(partitions)  # handed over during an outage: wait with the rest

    def failed(self, consumer: Consumer, reason: BaseException) -> None:
        """A write failed because PostgreSQL is unavailable: pause (once) and wait out the backoff."""
        metrics.DB_ERRORS.inc()
        if not self.paused:
            log.error("PostgreSQL unavailable, pausing consumption and retrying: %s", reason)
            self.paused = True
            consumer.pause(consumer.assignment())
            metrics.DB_UP.set(0)
        if self._stopping.is_set():
            return
        self.wait(consumer, self._backoff)
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    def succeeded(self, consumer: Consumer) -> None:
        """A write went through: resume whatever the outage paused."""
        if self.paused:
            log.info("PostgreSQL is back: resuming consumption")
            self.paused = False
            consumer.resume(consumer.assignment())
        self._backoff = BACKOFF_START
        metrics.DB_UP.set(1)

    def wait(self, consumer: Consumer, seconds: float) -> None:
        """Wait while keeping group membership: consume() on paused partitions returns nothing.

        Should a record come anyway (a partition handed over between a rebalance
        and our pause), the partition is rewound to it and paused: the record
        is read again once PostgreSQL is back, never skipped.
        """
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self._stopping.is_set():
            messages = consumer.consume(1000, min(0.5, max(0.001, deadline - time.monotonic())))
            first: dict[tuple[str, int], int] = {}
            for message in messages:
                if message.error() is None:
                    first.setdefault((message.topic(), message.partition()), message.offset())
            for (topic, partition), offset in first.items():
                consumer.seek(TopicPartition(topic, partition, offset))
            if first:
                consumer.pause(consumer.assignment())
