"""Publishing to Kafka with the guarantees of the design.

``Publisher`` wraps one idempotent librdkafka producer (``acks=all``, retries,
at most 5 requests in flight, so per-key order holds) and counts every send.
``flush()`` waits for Kafka's acknowledgements and raises ``PublishError`` if
any record was not acknowledged, so a caller answers its sender only for what
Kafka holds.

Why librdkafka (confluent-kafka) and not kafka-python here: this is the hot
path of every file and of the SQLite migration. kafka-python partitions
(murmur2), frames and checksums each record in Python, about 70 % of
``tillflow load``'s CPU time; librdkafka does all of it in C, off the GIL.
Keys are partitioned with ``murmur2_random``, the Java client's (and
kafka-python's) algorithm, so a key lands on the same partition whichever
client published it.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from confluent_kafka import KafkaError, KafkaException, Producer

from tillflow.errors import PublishError

log = logging.getLogger(__name__)

_QUEUE_FULL_WAIT = 0.05  # seconds to serve acknowledgements when the local queue is full


def producer_config(bootstrap_servers: Sequence[str], *, client_id: str, delivery_timeout_ms: int,
                    linger_ms: int) -> dict:
    """The settings every Tillflow producer uses (docs/architecture.md: acks=all, idempotence, retries)."""
    return {
        "bootstrap.servers": ",".join(bootstrap_servers),
        "client.id": client_id,
        "acks": "all",
        "enable.idempotence": True,  # implies unlimited retries and at most 5 in flight, in order
        "max.in.flight.requests.per.connection": 5,
        "message.timeout.ms": delivery_timeout_ms,  # librdkafka's delivery.timeout.ms
        "request.timeout.ms": max(250, min(30_000, delivery_timeout_ms // 2)),
        "linger.ms": linger_ms,
        "batch.size": 1024 * 1024,
        "queue.buffering.max.kbytes": 64 * 1024,  # bounds the loader's memory whatever the file size
        "partitioner": "murmur2_random",
        "compression.type": "lz4",
        "logger": log,
    }


class Publisher:
    """One Kafka producer for the process; thread-safe."""

    def __init__(self, bootstrap_servers: Sequence[str], *, client_id: str = "tillflow-etl",
                 delivery_timeout_ms: int = 120_000, linger_ms: int = 500) -> None:
        config = producer_config(bootstrap_servers, client_id=client_id, delivery_timeout_ms=delivery_timeout_ms,
                                 linger_ms=linger_ms)
        # Only failures are reported one by one: what flush() leaves unfailed was acknowledged.
        config["delivery.report.only.error"] = True
        try:
            self._producer = Producer(config)
        except (KafkaException, ValueError) as exc:
            raise PublishError(f"cannot configure a Kafka producer for {','.join(bootstrap_servers)}: {exc}") from exc
        self._lock = threading.Lock()
        self._sent = 0
        self._failed = 0
        self._first_error: KafkaError | None = None

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Queue one record; when the local queue is full, wait for Kafka to take some."""
        produce = self._producer.produce
        while True:
            try:
                produce(topic, value, key, on_delivery=self._delivered)
                break
            except BufferError:
                self._producer.poll(_QUEUE_FULL_WAIT)
            except KafkaException as exc:
                raise PublishError(f"Kafka refused a record for {topic}: {exc.args[0].str()}") from exc
        with self._lock:
            self._sent += 1

    def _delivered(self, err: KafkaError | None, _msg) -> None:
        if err is None:
            return
        with self._lock:
            self._failed += 1
            if self._first_error is None:
                self._first_error = err

    def flush(self, timeout: float | None = None) -> int:
        """Wait for every queued record; return how many were acknowledged since the last flush."""
        left = self._producer.flush(-1 if timeout is None else timeout)
        with self._lock:
            sent, failed, error = self._sent, self._failed, self._first_error
            self._sent = self._failed = 0
            self._first_error = None
        if left:
            raise PublishError(f"Kafka did not acknowledge {left} of {sent} records in time")
        if failed:
            raise PublishError(f"Kafka did not acknowledge {failed} of {sent} records: {error.str()}")
        return sent

    def close(self, timeout: float = 10) -> None:
        """Wait up to ``timeout`` for what is queued, then drop what is left (counted as not acknowledged)."""
        left = self._producer.flush(timeout)
        if left:
            log.warning("Kafka did not take the last %d record(s) before the producer closed", left)
            self._producer.purge()
            self._producer.flush(0)
        self._producer.close()
