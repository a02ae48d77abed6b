"""Kafka from asyncio: a record counts only once Kafka acknowledged it.

``AsyncPublisher`` owns one idempotent librdkafka producer (confluent-kafka,
with the settings of :func:`etl.producer.producer_config`: ``acks=all``,
idempotence, so retries and at most 5 requests in flight with per-key order
kept) and turns each record's acknowledgement into an asyncio future.

librdkafka runs its delivery callbacks in whichever thread calls ``poll()``:
here one daemon thread per producer (:class:`_Client`) does nothing else.
The callbacks of one ``poll()`` are handed to the event loop together by
:class:`_Completions` (one ``call_soon_threadsafe`` for all of them), which is
what makes thousands of WebSocket messages a second affordable. Partitioning,
framing, checksums and the network are librdkafka's, in C and off the GIL, so
the event loop only pays for ``produce()`` (a few microseconds a record).

Failure handling, the API's "nothing half accepted":

- :meth:`AsyncPublisher.publish` resolves only when every record of a request
  was acknowledged; if any was not within ``API_PUBLISH_TIMEOUT_SECONDS``
  (the producer's ``message.timeout.ms``), it raises :class:`KafkaUnavailable`
  and the caller answers 503 with ``Retry-After`` for the whole request. Some
  of its records may have reached Kafka: the sender retries the whole request
  and the consumer, which stores each id once, makes that safe.
- Backpressure: when librdkafka's local queue is full (``produce()`` raises
  ``BufferError``: 100,000 records or 64 MiB wait for Kafka), Kafka takes less
  than is offered. The event loop must not wait, so the record fails at once
  with :class:`KafkaUnavailable` (503, or a retryable WebSocket error): the
  sender slows down and sends again. It does not count as Kafka being down.
- After a failure the publisher is *degraded*: before publishing again it asks
  :class:`Probe` (cached for a second) whether every partition of both topics
  has a leader and enough in-sync replicas, from the producer's own metadata
  request. While the answer is no, requests fail at once with 503 instead of
  waiting for the delivery timeout; as soon as it is yes, publishing resumes
  (librdkafka reconnects to restarted brokers by itself). This is also
  ``/readyz``.
- The producer is created lazily, on the first publish or probe. Creating one
  needs no broker (librdkafka connects in the background), so the API starts
  and answers 503 while Kafka is down. It is replaced by a fresh one only when
  it reaches a state it cannot leave (:meth:`_Client.broken`: a fatal error
  reported to ``error_cb``, such as an idempotence sequence it cannot recover,
  or a dead poll thread); at most once per ``RECONNECT_EVERY_SECONDS``.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from confluent_kafka import KafkaError, KafkaException, Producer

from etl.api import metrics
from etl.producer import producer_config
from tillflow.config import Settings
from tillflow.errors import PublishError
from tillflow.kafka_admin import assess

log = logging.getLogger("tillflow.api")
# librdkafka's own log lines (a refused connection to a stopped broker, every
# reconnection attempt): `tillflow serve` shows them only with LOG_LEVEL=DEBUG.
kafka_log = logging.getLogger("tillflow.api.kafka")

Record = tuple[str, bytes | None, bytes]
# Records wait up to 20 ms to share a produce request. librdkafka sends one request per
# partition and an idempotent producer caps what is in flight per partition: with lone
# records (one HTTP request, one till message) at a few hundred a second, a short linger
# meant one request per record, and on a small box the brokers' CPU and librdkafka's own
# grew until acknowledgements slowed and everything queued. The price is latency when
# nothing else waits; bench/README.md ("The linger stays at 20 ms") has the measurements.
LINGER_MS = 20
POLL_SECONDS = 0.05  # the poll thread's wait; it wakes at once when an acknowledgement arrives
PROBE_CACHE_SECONDS = 1.0
PROBE_TIMEOUT_SECONDS = 3.0
RECONNECT_EVERY_SECONDS = 2.0
_INLINE_SENDS = 64  # larger batches are handed to Kafka from a worker thread


def api_producer_config(bootstrap_servers: Sequence[str], *, client_id: str, delivery_timeout_ms: int) -> dict:
    """The API producer's settings: every Tillflow producer's (``producer_config``) with the API's
    linger, and Nagle's algorithm off: a lone record must leave at once, not wait for the
    acknowledgement of the previous TCP segment (kafka-python and the Java client set
    TCP_NODELAY; librdkafka does not by default)."""
    config = producer_config(bootstrap_servers, client_id=client_id, delivery_timeout_ms=delivery_timeout_ms,
                             linger_ms=LINGER_MS)
    config["socket.nagle.disable"] = True
    return config


class KafkaUnavailable(PublishError):
    """Kafka did not acknowledge, or is known to be unable to: answer 503, the sender retries."""


class QueueFull(KafkaUnavailable):
    """librdkafka's local queue is full: Kafka takes less than is offered (503, not a failure of Kafka)."""


def _why(error: KafkaError | BaseException) -> str:
    return error.str() if isinstance(error, KafkaError) else str(error) or type(error).__name__


class _Completions:
    """Kafka's answers, arriving on the poll thread, delivered to the event loop in batches."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._items: list = []
        self._lock = threading.Lock()

    def delivered(self, future: asyncio.Future, error: KafkaError | None, _message) -> None:
        """librdkafka's delivery callback (bound to one future with ``partial``); runs inside ``poll()``."""
        with self._lock:
            self._items.append((future, error))

    def failed(self, future: asyncio.Future, error: BaseException) -> None:
        """A record that never reached librdkafka's queue; answered at the next hand-over."""
        with self._lock:
            self._items.append((future, error))
        self.hand_over()

    def hand_over(self) -> None:
        """Everything collected since the last call, to the event loop in one wake-up."""
        with self._lock:
            if not self._items:
                return
            items, self._items = self._items, []
        try:
            self.loop.call_soon_threadsafe(self._settle, items)
        except RuntimeError:  # the loop is closed: nobody waits for the answers any more
            pass

    @staticmethod
    def _settle(items: list) -> None:
        for future, error in items:
            if future.done():
                continue
            if error is None:
                future.set_result(None)
                continue
            if isinstance(error, KafkaUnavailable):
                future.set_exception(error)
            else:
                future.set_exception(KafkaUnavailable(f"Kafka did not acknowledge: {_why(error)}"))
            future.exception()  # retrieved here, so an unawaited one is not logged as lost


class _Client:
    """One librdkafka producer and the daemon thread serving its callbacks (``poll()``)."""

    def __init__(self, config: dict, completions: _Completions) -> None:
        self.fatal: str | None = None
        self.completions = completions
        self.producer = Producer({**config, "error_cb": self._error, "logger": kafka_log})
        self._running = True
        self._thread = threading.Thread(target=self._serve, name="tillflow-kafka-poll", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        poll, hand_over = self.producer.poll, self.completions.hand_over
        while self._running:
            try:
                poll(POLL_SECONDS)
            except Exception:  # noqa: BLE001 - a callback that raised must not stop the acknowledgements
                log.exception("a Kafka callback failed")
            hand_over()

    def _error(self, error: KafkaError) -> None:
        """librdkafka's error_cb. Most errors are transient (a broker down) and retried by
        librdkafka itself; a fatal one leaves the producer unable to deliver anything."""
        if error.fatal():
            if self.fatal is None:
                log.error("the Kafka producer hit a fatal error: %s", error.str())
            self.fatal = error.str()
        else:
            kafka_log.debug("Kafka client error: %s", error.str())

    def broken(self) -> bool:
        """Whether this producer can no longer deliver: a fatal error, or no thread serving its callbacks."""
        return self.fatal is not None or not self._thread.is_alive()

    def close(self, timeout: float) -> None:
        """Wait up to ``timeout`` for what is queued; what is left fails (KafkaUnavailable), then close.

        Blocking: run it on a worker thread."""
        self._running = False
        self._thread.join(timeout=POLL_SECONDS * 4 + 1)
        producer = self.producer
        deadline = time.monotonic() + timeout
        try:
            while True:  # answers are handed over as they come, not only at the end
                left = producer.flush(max(0.0, min(0.1, deadline - time.monotonic())))
                self.completions.hand_over()
                if not left or time.monotonic() >= deadline:
                    break
            if left:
                log.warning("Kafka did not take the last %d record(s) before the producer closed", left)
                producer.purge()
                producer.flush(0)  # serves the purged records' delivery reports: their senders get 503
            producer.close()
        except (KafkaException, RuntimeError) as exc:
            log.debug("closing the Kafka producer failed: %s", exc)
        finally:
            self.completions.hand_over()


class Probe:
    """Can Kafka take a write now? Every partition of the topics has a leader and at least
    ``MIN_INSYNC_REPLICAS`` in-sync replicas (``tillflow.kafka_admin.assess``), from a
    metadata request of the producer itself. Blocking; run it on a thread."""

    def __init__(self, topics: Sequence[str], timeout: float = PROBE_TIMEOUT_SECONDS) -> None:
        self._topics = list(topics)
        self._timeout = timeout

    def check(self, producer: Producer) -> str | None:
        """None when ready, else why not (one line, for /readyz and the logs)."""
        try:
            # All topics: naming one would let a broker with auto-creation create it.
            cluster = producer.list_topics(timeout=self._timeout)
        except (KafkaException, RuntimeError) as exc:
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else exc
            return f"Kafka is unreachable ({error.name() if isinstance(error, KafkaError) else type(exc).__name__})"
        return assess(cluster, self._topics).write_problem


class AsyncPublisher:
    """The API's one producer, used from the event loop."""

    def __init__(self, settings: Settings, *, client_id: str = "tillflow-api") -> None:
        self._settings = settings
        self._timeout_ms = int(settings.api_publish_timeout * 1000)
        self._config = api_producer_config(settings.kafka_bootstrap_servers, client_id=client_id,
                                           delivery_timeout_ms=self._timeout_ms)
        self._client: _Client | None = None
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tillflow-kafka")
        self._create_lock = asyncio.Lock()
        self._last_attempt = 0.0
        self._degraded = True  # until the first acknowledgement
        self._recovered = False  # for the log line: "again" after a failure
        self._probe = Probe([settings.topic_transactions, settings.topic_rejects])
        self._probe_lock = asyncio.Lock()
        self._probe_at = 0.0
        self._probe_result: str | None = "not checked yet"
        self._completions: _Completions | None = None

    # -- lifecycle --------------------------------------------------------------
    async def start(self) -> None:
        """Create the producer and ask Kafka once; a Kafka that is down now only makes the API answer
        503 until it is back."""
        try:
            await self._ensure()
        except KafkaUnavailable as exc:
            log.error("%s: answering 503", exc)
            return
        reason = await self.readiness(fresh=True)
        if reason is None:
            log.info("connected to Kafka at %s", ",".join(self._settings.kafka_bootstrap_servers))
        else:
            log.warning("Kafka is not available yet (%s): answering 503 until it is", reason)

    async def close(self, timeout: float = 10) -> None:
        client, self._client = self._client, None
        loop = asyncio.get_running_loop()
        if client is not None:
            await loop.run_in_executor(self._executor, client.close, timeout)
        self._executor.shutdown(wait=False)

    async def _ensure(self) -> _Client:
        client = self._client
        if client is not None and not client.broken():
            return client
        async with self._create_lock:
            client = self._client
            if client is not None and not client.broken():
                return client
            if client is not None:
                if time.monotonic() - self._last_attempt < RECONNECT_EVERY_SECONDS:
                    raise KafkaUnavailable(f"the Kafka producer failed ({client.fatal or 'no poll thread'})")
                log.warning("the Kafka producer cannot recover from its state (%s): building a new one",
                            client.fatal or "its poll thread died")
                self._client = None
                self._executor.submit(client.close, 0)
            self._last_attempt = time.monotonic()
            loop = asyncio.get_running_loop()
            if self._completions is None or self._completions.loop is not loop:
                self._completions = _Completions(loop)
            try:
                self._client = _Client(self._config, self._completions)
            except (KafkaException, ValueError) as exc:  # only a setting librdkafka refuses
                metrics.KAFKA_AVAILABLE.set(0)
                raise KafkaUnavailable(f"cannot configure the Kafka producer: {exc}") from exc
            return self._client

    # -- readiness --------------------------------------------------------------
    async def readiness(self, *, fresh: bool = False) -> str | None:
        """None when Kafka can take writes, else why not; cached for a second."""
        async with self._probe_lock:
            if fresh or time.monotonic() - self._probe_at >= PROBE_CACHE_SECONDS:
                try:
                    client = await self._ensure()
                except KafkaUnavailable as exc:
                    self._probe_result = str(exc)
                else:
                    loop = asyncio.get_running_loop()
                    self._probe_result = await loop.run_in_executor(self._executor, self._probe.check,
                                                                    client.producer)
                self._probe_at = time.monotonic()
                metrics.KAFKA_AVAILABLE.set(0 if self._probe_result else 1)
            return self._probe_result

    async def available(self) -> Producer:
        """The producer, if publishing may be tried now; KafkaUnavailable if Kafka is known to be down."""
        client = self._client
        if client is not None and not self._degraded:
            return client.producer  # the hot path: checked for damage only after a failure
        if self._degraded:
            reason = await self.readiness()
            if reason is not None:
                raise KafkaUnavailable(reason)
        return (await self._ensure()).producer

    def _succeeded(self) -> None:
        if self._degraded:
            self._degraded = False
            metrics.KAFKA_AVAILABLE.set(1)
            log.info("Kafka acknowledges %s", "again" if self._recovered else "writes")

    def _failed(self, exc: BaseException) -> None:
        metrics.PUBLISH_FAILURES.inc()
        if isinstance(exc, QueueFull):
            return  # backpressure, not Kafka failing: no probing needed
        self._recovered = True
        if not self._degraded:
            self._degraded = True  # from now on available() probes Kafka and checks the producer
            metrics.KAFKA_AVAILABLE.set(0)
            self._probe_at = 0.0  # the next request asks Kafka afresh
            log.warning("Kafka did not acknowledge (%s): answering 503 until it does", exc)

    # -- publishing ------------------------------------------------------------
    def send(self, producer: Producer, record: Record) -> asyncio.Future:
        """Hand one record to Kafka; the future resolves on its acknowledgement or fails with KafkaUnavailable.

        Called on the event loop, or on a worker thread for large batches (never waits)."""
        completions = self._completions
        future = completions.loop.create_future()
        topic, key, value = record
        try:
            producer.produce(topic, value, key, on_delivery=partial(completions.delivered, future))
        except BufferError:
            completions.failed(future, QueueFull("too many records wait for Kafka: send again shortly"))
        except (KafkaException, ValueError, TypeError) as exc:
            completions.failed(future, exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else exc)
        return future

    def _send_all(self, producer: Producer, records: Sequence[Record]) -> list[asyncio.Future]:
        return [self.send(producer, record) for record in records]

    async def publish(self, records: Sequence[Record]) -> None:
        """Publish ``records`` and return once Kafka acknowledged every one; else KafkaUnavailable."""
        if not records:
            return
        producer = await self.available()
        started = time.perf_counter()
        if len(records) <= _INLINE_SENDS:
            futures = self._send_all(producer, records)
        else:  # keeps the event loop answering while a large batch is handed over
            loop = asyncio.get_running_loop()
            futures = await loop.run_in_executor(self._executor, self._send_all, producer, records)
        await self.settle(futures, started)

    async def settle(self, futures: Sequence[asyncio.Future], started: float) -> None:
        """Wait for the acknowledgements of ``futures``; KafkaUnavailable if any is missing."""
        try:
            async with asyncio.timeout(self._timeout_ms / 1000 + 5):  # the delivery timeout answers first
                if len(futures) == 1:
                    await futures[0]
                else:
                    await asyncio.gather(*futures)
        except (KafkaUnavailable, TimeoutError) as exc:
            for future in futures:
                if not future.done():
                    future.cancel()
                elif not future.cancelled():
                    future.exception()  # retrieved: the others' failures are this one's
            self._failed(exc)
            kind = QueueFull if isinstance(exc, QueueFull) else KafkaUnavailable
            raise kind(str(exc) or "Kafka did not acknowledge in time") from exc
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
