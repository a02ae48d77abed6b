"""Kafka from asyncio: a record counts only once Kafka acknowledged it.

``AsyncPublisher`` owns one idempotent producer (``acks=all``, retries, at most
5 requests in flight, so per-key order is kept) and turns each record's
acknowledgement into an asyncio future. kafka-python answers on its own I/O
thread; :class:`_Completions` hands those answers to the event loop in
batches (one wake-up for many acknowledgements), which is what makes
thousands of WebSocket messages a second affordable.

Failure handling, the API's "nothing half accepted":

- :meth:`AsyncPublisher.publish` resolves only when every record of a request
  was acknowledged; if any was not within ``API_PUBLISH_TIMEOUT_SECONDS``
  (the producer's delivery timeout), it raises :class:`KafkaUnavailable` and
  the caller answers 503 for the whole request. Some of its records may have
  reached Kafka: the sender retries the whole request and the consumer, which
  stores each id once, makes that safe.
- After a failure the publisher is *degraded*: before publishing again it asks
  :class:`Probe` (cached for a second) whether every partition of both topics
  has a leader and enough in-sync replicas. While the answer is no, requests
  fail at once with 503 instead of waiting for the delivery timeout; as soon
  as it is yes, publishing resumes. This is also ``/readyz``.
- The producer is created lazily (the API starts while Kafka is down). It is
  replaced by a fresh one when Kafka is back after a failure (kafka-python's
  producer does not always find restarted brokers again by itself), and when
  it reaches a state it cannot leave (a fatal idempotence error, a dead I/O
  thread); at most once per ``REBUILD_EVERY_SECONDS``.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from kafka import KafkaAdminClient, KafkaProducer
from kafka.errors import KafkaError

from etl.api import metrics
from etl.producer import close_producer
from tillflow.config import Settings
from tillflow.errors import PublishError

log = logging.getLogger("tillflow.api")

Record = tuple[str, bytes | None, bytes]
LINGER_MS = 2  # lets concurrent requests share a produce request, costs at most 2 ms
PROBE_CACHE_SECONDS = 1.0
RECONNECT_EVERY_SECONDS = 2.0
REBUILD_EVERY_SECONDS = 10.0
MIN_INSYNC_REPLICAS = 2  # DESIGN.md: min.insync.replicas=2 on both topics
_INLINE_SENDS = 64  # larger batches are handed to Kafka from a worker thread


class KafkaUnavailable(PublishError):
    """Kafka did not acknowledge, or is known to be unable to: answer 503, the sender retries."""


class _Completions:
    """Kafka's answers, arriving on the producer's I/O thread, delivered to the event loop in batches."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._items: deque = deque()
        self._lock = threading.Lock()
        self._scheduled = False

    def ok(self, future: asyncio.Future, _metadata) -> None:
        self._put(future, None)

    def failed(self, future: asyncio.Future, error: BaseException) -> None:
        self._put(future, error)

    def _put(self, future: asyncio.Future, error: BaseException | None) -> None:
        with self._lock:
            self._items.append((future, error))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: nobody waits for the answer any more
            pass

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, deque()
            self._scheduled = False
        for future, error in items:
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(KafkaUnavailable(f"Kafka did not acknowledge: {error}"))
                future.exception()  # retrieved here, so an unawaited one is not logged as lost


class Probe:
    """Can Kafka take a write now? Every partition of the topics has a leader and
    at least ``MIN_INSYNC_REPLICAS`` in-sync replicas. Blocking; run it on a thread."""

    def __init__(self, bootstrap_servers: Sequence[str], topics: Sequence[str], timeout_ms: int = 3000) -> None:
        self._servers = list(bootstrap_servers)
        self._topics = list(topics)
        self._timeout_ms = timeout_ms
        self._admin: KafkaAdminClient | None = None

    def check(self) -> str | None:
        """None when ready, else why not (one line, for /readyz and the logs)."""
        try:
            if self._admin is None:
                self._admin = KafkaAdminClient(
                    bootstrap_servers=self._servers, client_id="tillflow-api-probe",
                    request_timeout_ms=self._timeout_ms, bootstrap_timeout_ms=self._timeout_ms)
            described = self._admin.describe_topics(self._topics)
        except (KafkaError, OSError, ValueError) as exc:
            self.close()
            return f"Kafka is unreachable ({type(exc).__name__})"
        for topic in described:
            if topic.get("error_code") or not topic.get("partitions"):
                return f"topic {topic.get('name')} is not available (error {topic.get('error_code')})"
            for part in topic["partitions"]:
                need = min(MIN_INSYNC_REPLICAS, len(part.get("replica_nodes") or ()))
                if part.get("leader_id", -1) < 0 or len(part.get("isr_nodes") or ()) < max(need, 1):
                    return (f"{topic['name']}[{part.get('partition_index')}] has {len(part.get('isr_nodes') or ())}"
                            f" in-sync replicas, fewer than the {need} a write needs")
        return None

    def close(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            try:
                admin.close()
            except Exception:  # noqa: BLE001 - closing a broken client must not fail the probe
                log.debug("closing the Kafka probe failed", exc_info=True)


class AsyncPublisher:
    """The API's one producer, used from the event loop."""

    def __init__(self, settings: Settings, *, client_id: str = "tillflow-api") -> None:
        self._settings = settings
        self._client_id = client_id
        self._timeout_ms = int(settings.api_publish_timeout * 1000)
        self._producer: KafkaProducer | None = None
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tillflow-kafka")
        self._create_lock = asyncio.Lock()
        self._last_attempt = 0.0
        self._degraded = True  # until the first producer exists
        self._rebuild = False  # a failure happened: replace the producer once Kafka is back
        self._last_rebuild = 0.0
        self._probe = Probe(settings.kafka_bootstrap_servers, [settings.topic_transactions, settings.topic_rejects])
        self._probe_lock = asyncio.Lock()
        self._probe_at = 0.0
        self._probe_result: str | None = "not checked yet"
        self._completions: _Completions | None = None

    # -- lifecycle --------------------------------------------------------------
    async def start(self) -> None:
        """Try to connect; a Kafka that is down now only makes the API answer 503 until it is back."""
        try:
            await self._ensure()
        except KafkaUnavailable as exc:
            log.warning("Kafka is not available yet (%s): answering 503 until it is", exc)

    async def close(self, timeout: float = 10) -> None:
        producer, self._producer = self._producer, None
        loop = asyncio.get_running_loop()
        if producer is not None:
            await loop.run_in_executor(self._executor, close_producer, producer, timeout)
        await loop.run_in_executor(self._executor, self._probe.close)
        self._executor.shutdown(wait=False)

    def _build(self) -> KafkaProducer:
        timeout = self._timeout_ms
        producer = KafkaProducer(
            bootstrap_servers=list(self._settings.kafka_bootstrap_servers),
            client_id=self._client_id,
            acks="all",
            enable_idempotence=True,
            retries=2**31 - 1,
            max_in_flight_requests_per_connection=5,
            linger_ms=LINGER_MS,
            request_timeout_ms=max(250, min(30_000, timeout // 2)),
            delivery_timeout_ms=timeout,
            batch_size=256 * 1024,
            max_block_ms=2000,
            bootstrap_timeout_ms=min(5000, timeout),
        )
        try:
            # Metadata of both topics now, so that send() on the event loop never waits for it.
            for topic in (self._settings.topic_transactions, self._settings.topic_rejects):
                producer.partitions_for(topic)
        except KafkaError:
            producer.close(timeout=0)
            raise
        return producer

    async def _ensure(self) -> KafkaProducer:
        producer = self._producer
        if producer is not None and not _broken(producer):
            return producer
        async with self._create_lock:
            producer = self._producer
            if producer is not None and not _broken(producer):
                return producer
            if producer is not None:
                log.warning("the Kafka producer cannot recover from its state: building a new one")
                self._producer = None
                self._executor.submit(close_producer, producer, 0)
            if time.monotonic() - self._last_attempt < RECONNECT_EVERY_SECONDS:
                raise KafkaUnavailable("Kafka is unreachable")
            self._last_attempt = time.monotonic()
            loop = asyncio.get_running_loop()
            try:
                self._producer = await loop.run_in_executor(self._executor, self._build)
            except (KafkaError, OSError) as exc:
                metrics.KAFKA_AVAILABLE.set(0)
                raise KafkaUnavailable(f"Kafka is unreachable: {exc}") from exc
            self._completions = _Completions(loop)
            log.info("connected to Kafka at %s", ",".join(self._settings.kafka_bootstrap_servers))
            return self._producer

    # -- readiness --------------------------------------------------------------
    async def readiness(self, *, fresh: bool = False) -> str | None:
        """None when Kafka can take writes, else why not; cached for a second."""
        async with self._probe_lock:
            if fresh or time.monotonic() - self._probe_at >= PROBE_CACHE_SECONDS:
                loop = asyncio.get_running_loop()
                self._probe_result = await loop.run_in_executor(self._executor, self._probe.check)
                self._probe_at = time.monotonic()
                metrics.KAFKA_AVAILABLE.set(0 if self._probe_result else 1)
            return self._probe_result

    async def available(self) -> KafkaProducer:
        """The producer, if publishing may be tried now; KafkaUnavailable if Kafka is known to be down."""
        producer = self._producer
        if producer is not None and not self._degraded:
            return producer  # the hot path: checked for damage only after a failure
        if self._degraded:
            reason = await self.readiness()
            if reason is not None:
                raise KafkaUnavailable(reason)
            if self._rebuild and time.monotonic() - self._last_rebuild >= REBUILD_EVERY_SECONDS:
                await self._replace()
        return await self._ensure()

    async def _replace(self) -> None:
        """Drop the producer that failed; the next publish builds a fresh one at once."""
        async with self._create_lock:
            self._rebuild = False
            self._last_rebuild = time.monotonic()
            producer, self._producer = self._producer, None
            self._last_attempt = 0.0
        if producer is not None:
            log.info("Kafka is reachable again: replacing the producer that failed")
            self._executor.submit(close_producer, producer, 0)

    def _succeeded(self) -> None:
        if self._degraded:
            self._degraded = False
            metrics.KAFKA_AVAILABLE.set(1)
            log.info("Kafka acknowledges %s", "again" if self._last_rebuild or self._rebuild else "writes")

    def _failed(self, exc: BaseException) -> None:
        metrics.PUBLISH_FAILURES.inc()
        self._rebuild = True
        if not self._degraded:
            self._degraded = True  # from now on available() probes Kafka and checks the producer
            metrics.KAFKA_AVAILABLE.set(0)
            self._probe_at = 0.0  # the next request asks Kafka afresh
            log.warning("Kafka did not acknowledge (%s): answering 503 until it does", exc)

    # -- publishing ------------------------------------------------------------
    def send(self, producer: KafkaProducer, record: Record) -> asyncio.Future:
        """Hand one record to Kafka; the future resolves on its acknowledgement or fails with KafkaUnavailable."""
        completions = self._completions
        future = completions.loop.create_future()
        topic, key, value = record
        try:
            sent = producer.send(topic, key=key, value=value)
        except (KafkaError, ValueError) as exc:
            completions.failed(future, exc)
            return future
        sent.add_callback(completions.ok, future)
        sent.add_errback(completions.failed, future)
        return future

    def _send_all(self, producer: KafkaProducer, records: Sequence[Record]) -> list[asyncio.Future]:
        return [self.send(producer, record) for record in records]

    async def publish(self, records: Sequence[Record]) -> None:
        """Publish ``records`` and return once Kafka acknowledged every one; else KafkaUnavailable."""
        if not records:
            return
        producer = await self.available()
        started = time.perf_counter()
        if len(records) <= _INLINE_SENDS:
            futures = self._send_all(producer, records)
        else:  # keeps the event loop answering while a large batch is serialised
            loop = asyncio.get_running_loop()
            futures = await loop.run_in_executor(self._executor, self._send_all, producer, records)
        await self.settle(futures, started)

    async def settle(self, futures: Sequence[asyncio.Future], started: float) -> None:
        """Wait for the acknowledgements of ``futures``; KafkaUnavailable if any is missing."""
        try:
            async with asyncio.timeout(self._timeout_ms / 1000 + 5):  # the delivery timeout answers first
                await asyncio.gather(*futures)
        except (KafkaUnavailable, TimeoutError) as exc:
            for future in futures:
                if not future.done():
                    future.cancel()
            self._failed(exc)
            raise KafkaUnavailable(str(exc) or "Kafka did not acknowledge in time") from exc
        metrics.PUBLISH_SECONDS.observe(time.perf_counter() - started)
        self._succeeded()

    def outcome(self, future: asyncio.Future) -> None:
        """Record a single send's outcome (WebSocket path) in the degraded/healthy state."""
        if future.cancelled():
            return
        exc = future.exception()
        if exc is None:
            self._succeeded()
        else:
            self._failed(exc)


def _broken(producer: KafkaProducer) -> bool:
    """Whether the producer can no longer deliver (kafka-python internals, read defensively)."""
    try:
        if getattr(producer, "_closed", False) or not producer._sender.is_alive():
            return True
        manager = producer._transaction_manager
        return bool(manager is not None and manager.has_fatal_error())
    except AttributeError:
        return False
