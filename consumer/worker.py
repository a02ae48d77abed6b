"""The writer: Kafka -> PostgreSQL, every record stored exactly once.

One loop, in this order, forever:

1. consume records from ``tillflow.transactions`` and ``tillflow.rejects``
   (group ``tillflow-writer``; several workers share the partitions) until a
   batch is full or its time is up;
2. decode them (an undecodable message becomes a reject, never a crash): a
   message in the producer's exact layout goes straight to its COPY text
   (``consumer.rows.fast_row``), any other through ``tillflow.messages.decode``;
3. write the batch in one PostgreSQL transaction (``consumer.sink``), with
   the Kafka position it reaches in each partition (``ingest.kafka_positions``:
   what a restore replays from);
4. commit the batch's offsets to Kafka, only after the database commit
   (``consumer.progress.Checkpoint``; the lag metrics are
   ``consumer.progress.LagReporter``'s).

Steps 3 and 4 of one batch overlap steps 1 and 2 of the next: a writer thread
streams batch N into PostgreSQL (psycopg2 releases the GIL while the server
works) while this thread consumes and decodes batch N+1. Batches are still
written one at a time, in order, and batch N's offsets are committed only
after its database commit; batch N+1 is handed to the writer only after that.
A crash anywhere replays at most the uncommitted batches, and replaying is a
no-op for the sink.

Kafka is read through librdkafka (confluent-kafka): it fetches, checks and
unpacks records in C on its own threads (DEVELOPERS.md says what kafka-python
cost here).

While PostgreSQL is down every assigned partition is paused (the worker keeps
polling, so it stays in its group) and the write retried with capped
exponential backoff, then consumption resumes with the batch it was holding:
the backlog waits in Kafka (``consumer.pausing.OutageGate``). SIGTERM or SIGINT finishes
the batch in hand, commits, and returns 0.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from confluent_kafka import Consumer, KafkaError, KafkaException

from consumer import metrics
from consumer.cluster import ClusterProbe
from consumer.pausing import OutageGate
from consumer.progress import Checkpoint, LagReporter
from consumer.rows import fast_row, row_of
from consumer.sink import Batch, IsolatingSink, PostgresSink, Position, SinkUnavailable, WriteResult
from tillflow.config import Settings
from tillflow.errors import ConfigError
from tillflow.messages import MessageError, RejectMessage, TransactionMessage, decode
from tillflow.record import Origin, Reason
from tillflow.runtime import bulk_mode

log = logging.getLogger("tillflow.consumer")

_CONSUME_WAIT = 0.1  # seconds one consume() call waits; a batch closes after a wait that brought nothing
_new_tuple = tuple.__new__  # a Position per record without the NamedTuple's Python-level constructor
# The writer thread needs the GIL briefly per COPY chunk while this one decodes
# flat out; at Python's default 5 ms switch interval it waits longer for the GIL
# than PostgreSQL takes for the chunk before, and the backend idles.
_SWITCH_INTERVAL = 0.0005


class Worker:
    """Consumes both topics and writes them through a ``PostgresSink``."""

    def __init__(self, settings: Settings, *, sink: PostgresSink | None = None) -> None:
        if settings.database_url is None:
            raise ConfigError("DATABASE_URL is not set: the consumer writes to PostgreSQL")
        self.settings = settings
        self.sink = sink or IsolatingSink(settings.database_url, settings.tax_rate)
        self.stopping = threading.Event()
        self._consumer: Consumer | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tillflow-writer")
        self._kafka_error: int | None = None  # the last cluster error logged, so it is logged once
        self.totals = WriteResult()
        self._gate = OutageGate(self.stopping)  # pauses the partitions while PostgreSQL is down
        self._checkpoint = Checkpoint(settings)
        self._lag = LagReporter(settings)

    # -- Kafka ---------------------------------------------------------------------
    def _connect(self) -> Consumer:
        s = self.settings
        consumer = Consumer({
            "bootstrap.servers": ",".join(s.kafka_bootstrap_servers),
            "group.id": s.consumer_group,
            "client.id": "tillflow-writer",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            # A database outage must not cost us the group: we keep polling
            # (paused) while it lasts, so this only bounds one batch's write.
            "max.poll.interval.ms": 300_000,
            # A member that died holds its partitions this long before the others take them over.
            "session.timeout.ms": s.consumer_session_timeout_ms,
            "heartbeat.interval.ms": min(3_000, s.consumer_session_timeout_ms // 3),
            # Fewer, larger fetches: a broker answers once it has 256 KiB (compressed)
            # or 200 ms passed, instead of once per produce request.
            "fetch.min.bytes": 256 * 1024,
            "fetch.wait.max.ms": 200,
            "max.partition.fetch.bytes": 1024 * 1024,
            # What librdkafka prefetches is bounded, so memory stays flat whatever
            # the backlog. The bound counts fetched bytes, which are lz4-compressed
            # (~5x): 8 MiB holds ~100,000 records, ten batches ahead.
            "queued.max.messages.kbytes": 8 * 1024,
            "queued.min.messages": 20_000,
            "error_cb": self._on_kafka_error,
            "logger": log,
        })
        consumer.subscribe([s.topic_transactions, s.topic_rejects], on_assign=self._gate.on_assign)
        return consumer

    def _on_kafka_error(self, error: KafkaError) -> None:
        """librdkafka reports cluster trouble here (it reconnects by itself); logged once per kind."""
        if error.fatal():
            log.error("Kafka: fatal error: %s", error.str())
            self.stop()
            return
        if error.code() != self._kafka_error:
            self._kafka_error = error.code()
            log.warning("Kafka: %s (retrying)", error.str())

    # -- the loop ------------------------------------------------------------------
    def run(self, until_idle: float | None = None) -> WriteResult:
        """Consume until stopped (or, with ``until_idle``, until nothing new came for that long)."""
        with bulk_mode(switch_interval=_SWITCH_INTERVAL):
            return self._run(until_idle)

    def _run(self, until_idle: float | None) -> WriteResult:
        consumer = self._consumer = self._connect()
        last_activity = time.monotonic()
        pending: tuple[Future, Batch, dict] | None = None  # the batch the writer thread holds
        try:
            while not self.stopping.is_set():
                batch, offsets = self._collect(consumer)
                if pending is not None:
                    if not self._settle(consumer, *pending):
                        pending = None
                        break
                    pending = None
                if offsets:
                    pending = (self._writer.submit(self._timed_write, batch), batch, offsets)
                    last_activity = time.monotonic()
                elif until_idle is not None and time.monotonic() - last_activity >= until_idle:
                    if self._checkpoint.caught_up(consumer, idle_for=time.monotonic() - last_activity,
                                                  until_idle=until_idle):
                        log.info("idle for %.1fs with everything committed: exiting", until_idle)
                        break
                self._lag.report(consumer)
            if pending is not None:
                self._settle(consumer, *pending)
        finally:
            try:
                consumer.close()
            finally:
                self._writer.shutdown(wait=True)
                self.sink.close()
        return self.totals

    def _collect(self, consumer: Consumer) -> tuple[Batch, dict[tuple[str, int], int]]:
        """Consume until the batch is full or its time is up; decode as we go."""
        s = self.settings
        batch = Batch()
        # (topic, partition): the next offset, committed to Kafka after the batch
        # and stored with it in PostgreSQL (ingest.kafka_positions).
        offsets = batch.positions
        topic_tx = s.topic_transactions
        deadline = time.monotonic() + s.consumer_batch_timeout_ms / 1000
        while len(batch) < s.consumer_batch_size and not self.stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            messages = consumer.consume(s.consumer_batch_size - len(batch), min(remaining, _CONSUME_WAIT))
            if not messages:
                if batch:
                    break
                continue
            self._kafka_error = None
            transactions = rejects = 0
            for message in messages:
                if message.error() is not None:
                    self._on_message_error(message)
                    continue
                topic = message.topic()
                partition = message.partition()
                offset = message.offset()
                self._add(batch, message.value(), message.key(), _new_tuple(Position, (topic, partition, offset)))
                offsets[topic, partition] = offset + 1
                if topic == topic_tx:
                    transactions += 1
                else:
                    rejects += 1
            metrics.CONSUMED.labels(topic_kind="transactions").inc(transactions)
            metrics.CONSUMED.labels(topic_kind="rejects").inc(rejects)
        return batch, offsets

    def _on_message_error(self, message) -> None:
        error = message.error()
        if error.fatal():
            raise KafkaException(error)
        log.warning("Kafka: %s on %s[%s]", error.str(), message.topic(), message.partition())

    def _add(self, batch: Batch, value: bytes | None, key: bytes | None, pos: Position) -> None:
        row = fast_row(value) if value is not None else None
        if row is not None:  # a canonical transaction: straight to its COPY text
            batch.transactions.append((row, pos))
            return
        try:
            msg = decode(value)
        except MessageError as exc:
            # Kept, never dropped: an unreadable message becomes a reject with its bytes.
            text = value.decode("utf-8", "replace")[:1000] if value else ""
            where = f"{pos.topic}[{pos.partition}] offset {pos.offset}"
            log.warning("undecodable message at %s: %s", where, exc)
            metrics.UNDECODABLE.inc()
            msg = RejectMessage(
                id=key.decode("utf-8", "replace") if key else None, raw={"message": text},
                reasons=(Reason("row", "undecodable", f"message at {where} is not a Tillflow record: {exc}"),),
                origin=Origin("kafka", pos.topic, None),
            )
        if type(msg) is TransactionMessage:
            batch.transactions.append((row_of(msg), pos))
        else:
            batch.rejects.append((msg, pos))

    # -- writing -------------------------------------------------------------------
    def _timed_write(self, batch: Batch) -> tuple[WriteResult, float]:
        started = time.monotonic()
        result = self.sink.write(batch)
        return result, time.monotonic() - started

    def _settle(self, consumer: Consumer, future: Future, batch: Batch, offsets: dict) -> bool:
        """Wait for the writer's answer on ``batch`` (waiting out a database outage), then
        commit its offsets; False if stopped before it was written."""
        attempt = future.result  # the first attempt is the writer thread's
        while True:
            try:
                result, seconds = attempt()
                break
            except SinkUnavailable as exc:
                self._gate.failed(consumer, exc)
                if self.stopping.is_set():
                    # Stopping mid-outage: the batch's offsets stay uncommitted, so
                    # whoever consumes next replays it. Nothing is lost.
                    log.info("stopping while PostgreSQL is unavailable: the held batch will be replayed")
                    return False
                attempt = lambda: self._timed_write(batch)  # noqa: E731 - the retries run here
        self._gate.succeeded(consumer)
        metrics.WRITE_SECONDS.observe(seconds)
        metrics.BATCH_SIZE.observe(len(batch))
        metrics.INSERTED.inc(result.inserted)
        metrics.DUPLICATES.inc(result.duplicates)
        metrics.CONFLICTS.inc(result.conflicts)
        metrics.REJECTS_STORED.inc(result.rejects)
        self.totals.add(result)
        if result.conflicts:
            log.warning("%d conflicting duplicate(s) recorded in ingest.conflicts", result.conflicts)
        self._checkpoint.commit(consumer, offsets)
        return True

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
