"""The writer: Kafka -> PostgreSQL, every record stored exactly once.

One loop, in this order, forever:

1. poll records from ``tillflow.transactions`` and ``tillflow.rejects`` (group
   ``tillflow-writer``; several workers share the partitions) until a batch is
   full or its time is up;
2. decode them (an undecodable message becomes a reject, never a crash);
3. write the batch in one PostgreSQL transaction (``consumer.sink``);
4. commit the batch's offsets to Kafka, only after the database commit.

While PostgreSQL is down the worker pauses every assigned partition (it keeps
polling, so it stays in its group), retries with capped exponential backoff,
logs once when the outage starts and once when it ends, then resumes with the
batch it was holding: the backlog waits in Kafka. SIGTERM or SIGINT finishes
the batch in hand, commits, and returns 0.
"""
from __future__ import annotations

import logging
import signal
import threading
import time

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from consumer import metrics
from consumer.cluster import ClusterProbe
from consumer.sink import Batch, IsolatingSink, PostgresSink, Position, SinkUnavailable, WriteResult
from tillflow.config import Settings
from tillflow.errors import ConfigError, SinkError
from tillflow.messages import MessageError, RejectMessage, TransactionMessage, decode
from tillflow.record import Origin, Reason

log = logging.getLogger("tillflow.consumer")

_BACKOFF_START = 0.5
_BACKOFF_MAX = 30.0


class Worker:
    """Consumes both topics and writes them through a ``PostgresSink``."""

    def __init__(self, settings: Settings, *, sink: PostgresSink | None = None) -> None:
        if settings.database_url is None:
            raise ConfigError("DATABASE_URL is not set: the consumer writes to PostgreSQL")
        self.settings = settings
        self.sink = sink or IsolatingSink(settings.database_url, settings.tax_rate)
        self.stopping = threading.Event()
        self._consumer: KafkaConsumer | None = None
        self.totals = WriteResult()
        self._lag_labels: set[tuple[str, str]] = set()

    # -- Kafka ---------------------------------------------------------------------
    def _connect(self) -> KafkaConsumer:
        s = self.settings
        try:
            consumer = KafkaConsumer(
                bootstrap_servers=list(s.kafka_bootstrap_servers),
                group_id=s.consumer_group,
                client_id="tillflow-writer",
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                isolation_level="read_committed",
                max_poll_records=s.consumer_batch_size,
                fetch_max_bytes=64 * 1024 * 1024,
                max_partition_fetch_bytes=8 * 1024 * 1024,
                fetch_max_wait_ms=200,
                # A database outage must not cost us the group: we keep polling
                # (paused) while it lasts, so this only bounds one batch's write.
                max_poll_interval_ms=300_000,
                session_timeout_ms=30_000,
                heartbeat_interval_ms=3_000,
            )
        except KafkaError as exc:
            raise SinkError(f"cannot reach Kafka at {','.join(s.kafka_bootstrap_servers)}: {exc}") from exc
        consumer.subscribe([s.topic_transactions, s.topic_rejects])
        return consumer

    # -- the loop ------------------------------------------------------------------
    def run(self, until_idle: float | None = None) -> WriteResult:
        """Consume until stopped (or, with ``until_idle``, until nothing new came for that long)."""
        consumer = self._consumer = self._connect()
        last_activity = time.monotonic()
        try:
            while not self.stopping.is_set():
                batch, offsets = self._collect(consumer)
                if offsets:
                    if not self._write_with_retry(consumer, batch):
                        break
                    self._commit(consumer, offsets)
                    last_activity = time.monotonic()
                elif until_idle is not None and time.monotonic() - last_activity >= until_idle:
                    if self._caught_up(consumer, idle_for=time.monotonic() - last_activity, until_idle=until_idle):
                        log.info("idle for %.1fs with everything committed: exiting", until_idle)
                        break
                self._report_lag(consumer)
        finally:
            try:
                consumer.close(autocommit=False)
            finally:
                self.sink.close()
        return self.totals

    def _collect(self, consumer: KafkaConsumer) -> tuple[Batch, dict[TopicPartition, OffsetAndMetadata]]:
        """Poll until the batch is full or its time is up; decode as we go."""
        s = self.settings
        batch = Batch()
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        deadline = time.monotonic() + s.consumer_batch_timeout_ms / 1000
        while len(batch) < s.consumer_batch_size and not self.stopping.is_set():
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                break
            polled = consumer.poll(timeout_ms=remaining_ms, max_records=s.consumer_batch_size - len(batch))
            if not polled:
                if batch:
                    break
                continue
            for tp, records in polled.items():
                for record in records:
                    self._add(batch, record, tp)
                offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, "", -1)
                metrics.CONSUMED.labels(topic_kind=self._kind(tp.topic)).inc(len(records))
        return batch, offsets

    def _kind(self, topic: str) -> str:
        return "transactions" if topic == self.settings.topic_transactions else "rejects"

    def _add(self, batch: Batch, record, tp: TopicPartition) -> None:
        pos = Position(tp.topic, tp.partition, record.offset)
        try:
            msg = decode(record.value)
        except MessageError as exc:
            # Kept, never dropped: an unreadable message becomes a reject with its bytes.
            text = record.value.decode("utf-8", "replace")[:1000] if record.value else ""
            key = record.key.decode("utf-8", "replace") if record.key else None
            where = f"{tp.topic}[{tp.partition}] offset {record.offset}"
            log.warning("undecodable message at %s: %s", where, exc)
            metrics.UNDECODABLE.inc()
            msg = RejectMessage(
                id=key, raw={"message": text},
                reasons=(Reason("row", "undecodable", f"message at {where} is not a Tillflow record: {exc}"),),
                origin=Origin("kafka", tp.topic, None),
            )
        if isinstance(msg, TransactionMessage):
            batch.transactions.append((msg, pos))
        else:
            batch.rejects.append((msg, pos))

    def _write_with_retry(self, consumer: KafkaConsumer, batch: Batch) -> bool:
        """Write the batch, waiting out a database outage; False if stopped before it was written."""
        backoff = _BACKOFF_START
        paused = False
        while True:
            started = time.monotonic()
            try:
                result = self.sink.write(batch)
            except SinkUnavailable as exc:
                metrics.DB_ERRORS.inc()
                if not paused:
                    log.error("PostgreSQL unavailable, pausing consumption and retrying: %s", exc)
                    consumer.pause(*consumer.assignment())
                    metrics.DB_UP.set(0)
                    paused = True
                if self.stopping.is_set():
                    # Stopping mid-outage: the batch's offsets stay uncommitted, so
                    # whoever consumes next replays it. Nothing is lost.
                    log.info("stopping while PostgreSQL is unavailable: the held batch will be replayed")
                    return False
                self._sleep_polling(consumer, backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            break
        if paused:
            log.info("PostgreSQL is back: resuming consumption")
            consumer.resume(*consumer.paused())
        metrics.DB_UP.set(1)
        metrics.WRITE_SECONDS.observe(time.monotonic() - started)
        metrics.BATCH_SIZE.observe(len(batch))
        metrics.INSERTED.inc(result.inserted)
        metrics.DUPLICATES.inc(result.duplicates)
        metrics.CONFLICTS.inc(result.conflicts)
        metrics.REJECTS_STORED.inc(result.rejects)
        for field in ("inserted", "duplicates", "conflicts", "rejects"):
            setattr(self.totals, field, getattr(self.totals, field) + getattr(result, field))
        if result.conflicts:
            log.warning("%d conflicting duplicate(s) recorded in ingest.conflicts", result.conflicts)
        return True

    def _sleep_polling(self, consumer: KafkaConsumer, seconds: float) -> None:
        """Wait while keeping group membership: poll on paused partitions returns nothing."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            consumer.poll(timeout_ms=min(500, max(1, int((deadline - time.monotonic()) * 1000))))
            if self.stopping.is_set():
                return

    def _commit(self, consumer: KafkaConsumer, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        try:
            consumer.commit(offsets)
        except CommitFailedError as exc:
            # The group rebalanced while we wrote: the new owner replays these
            # records and the sink makes that a no-op.
            log.warning("offset commit refused after a rebalance (records will be replayed, harmlessly): %s", exc)
            return
        metrics.LAST_COMMIT.set_to_current_time()

    def _caught_up(self, consumer: KafkaConsumer, idle_for: float, until_idle: float) -> bool:
        """True when the group has read and committed every partition to its end.

        Partitions assigned to this member count by position; the others by the
        group's committed offset, so a member that was not (yet) handed any
        partition, e.g. while the coordinator waits out a killed member's
        session, does not mistake that for being done.
        """
        assignment = consumer.assignment()
        partitions = [
            TopicPartition(topic, p)
            for topic in (self.settings.topic_transactions, self.settings.topic_rejects)
            for p in (consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            return idle_for >= until_idle + 60
        for tp, end in consumer.end_offsets(partitions).items():
            done = consumer.position(tp) if tp in assignment else (consumer.committed(tp) or 0)
            if done < end:
                return False
        return True

    def _report_lag(self, consumer: KafkaConsumer) -> None:
        assigned = set()
        for tp in consumer.assignment():
            labels = (self._kind(tp.topic), str(tp.partition))
            assigned.add(labels)
            high = consumer.highwater(tp)
            if high is not None:
                try:
                    metrics.LAG.labels(*labels).set(max(0, high - consumer.position(tp)))
                except KafkaError:
                    pass
        # A partition handed to another replica is its to report: a stale value
        # here would add phantom lag to the sum the alerts read.
        for labels in self._lag_labels - assigned:
            try:
                metrics.LAG.remove(*labels)
            except KeyError:  # another worker of this process removed it (tests run several)
                pass
        self._lag_labels = assigned

    def stop(self, *_: object) -> None:
        self.stopping.set()


def cli_consume(settings: Settings, until_idle: float | None = None, *, install_signals: bool = True) -> int:
    """``tillflow consume``: run the writer until SIGTERM (or idle)."""
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
    worker = Worker(settings)
    probe = None
    if settings.metrics_port:
        # The cluster's health is only worth probing where Prometheus reads it.
        probe = ClusterProbe(settings)
        probe.start()
    if install_signals:
        signal.signal(signal.SIGTERM, worker.stop)
        signal.signal(signal.SIGINT, worker.stop)
    log.info("consuming %s and %s as group %s", settings.topic_transactions, settings.topic_rejects,
             settings.consumer_group)
    try:
        totals = worker.run(until_idle=until_idle)
    finally:
        if probe is not None:
            probe.stop()
    log.info("stopped: %d inserted, %d duplicates, %d conflicts, %d rejects stored",
             totals.inserted, totals.duplicates, totals.conflicts, totals.rejects)
    return 0

