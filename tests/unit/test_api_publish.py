"""The API's publisher without a Kafka: what a sender is told when Kafka cannot acknowledge.

A librdkafka producer needs no broker to exist, so these run against a port
nobody listens on; the integration tests (test_api.py, test_api_stream.py) cover
acknowledged records, a broker killed mid-stream and recovery.
"""
from __future__ import annotations

import asyncio
import time

import pytest

from devstack.proc import free_port
from etl.api import publish
from etl.api.publish import AsyncPublisher, KafkaUnavailable, Probe, QueueFull
from tillflow.config import Settings


def settings(timeout: str = "1") -> Settings:
    return Settings.from_env({"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
                              "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
                              "API_PUBLISH_TIMEOUT_SECONDS": timeout})


RECORD = ("tillflow.transactions", b"key", b"{}")


def test_a_record_kafka_never_acknowledges_fails_after_the_delivery_timeout():
    async def run() -> tuple[float, BaseException | None]:
        publisher = AsyncPublisher(settings("1"))
        try:
            producer = (await publisher._ensure()).producer
            started = time.monotonic()
            future = publisher.send(producer, RECORD)
            with pytest.raises(KafkaUnavailable) as failed:
                await asyncio.wait_for(future, 15)
            return time.monotonic() - started, failed.value
        finally:
            await publisher.close(timeout=0)

    waited, error = asyncio.run(run())
    assert 0.5 <= waited < 10, waited
    assert "did not acknowledge" in str(error)


def test_while_kafka_is_unreachable_publish_is_refused_at_once_and_readiness_says_why():
    async def run() -> tuple[str | None, float]:
        publisher = AsyncPublisher(settings())
        publisher._probe = Probe(["tillflow.transactions", "tillflow.rejects"], timeout=0.5)
        try:
            await publisher.start()  # Kafka down at start: the API starts all the same
            reason = await publisher.readiness()
            started = time.monotonic()
            with pytest.raises(KafkaUnavailable):
                await publisher.publish([RECORD])
            return reason, time.monotonic() - started
        finally:
            await publisher.close(timeout=0)

    reason, waited = asyncio.run(run())
    assert reason is not None and reason.startswith("Kafka is unreachable"), reason
    assert waited < 0.5, "a known-down Kafka is answered from the cached probe"


def test_a_full_local_queue_fails_the_record_at_once_without_marking_kafka_down(monkeypatch):
    original = publish.api_producer_config

    def tiny_queue(*args, **kwargs) -> dict:
        return original(*args, **kwargs) | {"queue.buffering.max.messages": 1}

    monkeypatch.setattr(publish, "api_producer_config", tiny_queue)

    async def run() -> None:
        publisher = AsyncPublisher(settings("30"))
        try:
            producer = (await publisher._ensure()).producer
            publisher._degraded = False  # as after a first acknowledgement
            first = publisher.send(producer, RECORD)
            with pytest.raises(QueueFull):
                await asyncio.wait_for(publisher.settle([publisher.send(producer, RECORD)], time.perf_counter()), 5)
            assert not publisher._degraded, "backpressure is not Kafka failing"
            assert not first.done()
        finally:
            await publisher.close(timeout=0)
        with pytest.raises(KafkaUnavailable):  # closing fails what Kafka did not take: its sender gets 503
            await asyncio.wait_for(first, 5)

    asyncio.run(run())
