"""Publishing to Kafka with the guarantees of the design.

``Publisher`` wraps one idempotent producer (``acks=all``, retries, ordered
in-flight requests) and tracks every send. ``flush()`` waits for Kafka's
acknowledgements and raises ``PublishError`` if any record was not
acknowledged, so a caller answers its sender only for what Kafka holds.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from kafka import KafkaProducer
from kafka.errors import KafkaError

from tillflow.errors import PublishError

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    sent: int = 0
    acked: int = 0
    failed: int = 0
    first_error: BaseException | None = None


class Publisher:
    """One Kafka producer for the process; thread-safe."""

    def __init__(self, bootstrap_servers: tuple[str, ...] | list[str], *, client_id: str = "tillflow-etl",
                 delivery_timeout_ms: int = 120_000) -> None:
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=list(bootstrap_servers),
                client_id=client_id,
                acks="all",
                enable_idempotence=True,
                retries=2**31 - 1,
                max_in_flight_requests_per_connection=5,
                delivery_timeout_ms=delivery_timeout_ms,
                request_timeout_ms=min(30_000, delivery_timeout_ms),
                linger_ms=10,
                batch_size=256 * 1024,
                max_block_ms=30_000,
            )
        except KafkaError as exc:
            raise PublishError(f"cannot reach Kafka at {','.join(bootstrap_servers)}: {exc}") from exc
        self._lock = threading.Lock()
        self._pending = _Pending()

    def send(self, topic: str, key: bytes | None, value: bytes, on_ack=None) -> None:
        """Queue one record; ``on_ack(ok: bool, error)`` runs from the I/O thread when Kafka answers."""
        with self._lock:
            self._pending.sent += 1
        try:
            future = self._producer.send(topic, key=key, value=value)
        except KafkaError as exc:
            self._failed(exc, on_ack)
            return
        future.add_callback(self._acked, on_ack)
        future.add_errback(self._failed, on_ack)

    def _acked(self, on_ack, _metadata) -> None:
        with self._lock:
            self._pending.acked += 1
        if on_ack is not None:
            on_ack(True, None)

    def _failed(self, exc: BaseException, on_ack) -> None:
        with self._lock:
            self._pending.failed += 1
            if self._pending.first_error is None:
                self._pending.first_error = exc
        if on_ack is not None:
            on_ack(False, exc)

    def flush(self, timeout: float | None = None) -> int:
        """Wait for every queued record; return how many were acknowledged since the last flush."""
        try:
            self._producer.flush(timeout=timeout)
        except KafkaError as exc:
            raise PublishError(f"Kafka did not acknowledge in time: {exc}") from exc
        with self._lock:
            pending, self._pending = self._pending, _Pending()
        if pending.failed:
            raise PublishError(
                f"Kafka did not acknowledge {pending.failed} of {pending.sent} records: {pending.first_error}"
            )
        return pending.acked

    def close(self, timeout: float = 10) -> None:
        close_producer(self._producer, timeout)


def close_producer(producer: KafkaProducer, timeout: float) -> None:
    """Close a producer within ``timeout``, even when Kafka is unreachable.

    kafka-python's ``close()`` raises when its final flush times out and leaves
    the I/O thread running; that thread is then stopped, failing what it held.
    """
    try:
        producer.close(timeout=timeout)
    except KafkaError as exc:
        log.warning("Kafka did not take the last records before the producer closed: %s", exc)
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()
        producer._closed = True  # or its __del__ tries (and fails) to close it again
