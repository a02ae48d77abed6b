"""The consumer's Kafka cluster probe against the real three brokers: what the
KafkaBrokerDown, KafkaUnderReplicated and KafkaPartitionOffline alerts read."""
from __future__ import annotations

import signal
import time

import pytest
from prometheus_client import REGISTRY

from consumer import metrics
from consumer.cluster import ClusterProbe
from etl.topics import PARTITIONS
from tillflow.config import Settings


def gauges() -> tuple[float | None, ...]:
    value = REGISTRY.get_sample_value
    return (
        value("tillflow_kafka_brokers"),
        value("tillflow_kafka_under_replicated_partitions", {"topic_kind": "transactions"}),
        value("tillflow_kafka_under_replicated_partitions", {"topic_kind": "rejects"}),
        value("tillflow_kafka_offline_partitions", {"topic_kind": "transactions"}),
    )


def probe_until(probe: ClusterProbe, wanted, timeout: float = 90) -> tuple:
    deadline = time.monotonic() + timeout
    while True:
        probe.probe_once()
        found = gauges()
        if wanted(found) or time.monotonic() > deadline:
            return found
        time.sleep(1)


@pytest.fixture
def probe(running_kafka, topics):
    settings = Settings.from_env({
        "KAFKA_BOOTSTRAP_SERVERS": running_kafka.bootstrap_servers,
        "KAFKA_TOPIC_TRANSACTIONS": topics.transactions, "KAFKA_TOPIC_REJECTS": topics.rejects,
        "TILLFLOW_ENV": "test",
    }, need_kafka=True)
    made = ClusterProbe(settings, interval=3600)
    yield made
    made.stop()


def test_a_healthy_cluster_reports_three_brokers_and_nothing_under_replicated(probe):
    # Start from values no probe writes, so that the probe is seen to write them.
    metrics.KAFKA_BROKERS.set(-1)
    for kind in ("transactions", "rejects"):
        metrics.KAFKA_UNDER_REPLICATED.labels(topic_kind=kind).set(-1)
        metrics.KAFKA_OFFLINE.labels(topic_kind=kind).set(-1)
    assert probe_until(probe, lambda g: g == (3, 0, 0, 0)) == (3, 0, 0, 0)


@pytest.mark.slow
def test_a_stopped_broker_shows_as_down_and_its_partitions_as_under_replicated(probe, running_kafka):
    victim = running_kafka.nodes[2]
    victim.stop(signal.SIGTERM)
    try:
        brokers, under_tx, under_rej, offline = probe_until(probe, lambda g: g[0] == 2 and g[1] > 0 and g[2] > 0)
        assert brokers == 2
        # RF 3 over 3 brokers: every partition had a replica on the stopped one.
        assert under_tx == PARTITIONS and under_rej == PARTITIONS
        assert offline == 0, "two replicas remain: every partition keeps a leader"
    finally:
        victim.start()
        victim.wait_listening()
        running_kafka.wait_ready()
    assert probe_until(probe, lambda g: g == (3, 0, 0, 0), timeout=120) == (3, 0, 0, 0)


def test_an_unreachable_cluster_reports_no_broker():
    settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "TILLFLOW_ENV": "test"}, need_kafka=True)
    probe = ClusterProbe(settings, interval=3600)
    try:
        probe.probe_once()
    finally:
        probe.stop()
    assert REGISTRY.get_sample_value("tillflow_kafka_brokers") == 0


def test_set_up_waits_for_a_group_coordinator_and_gives_up_when_there_is_none(running_kafka):
    from devstack.proc import free_port
    from etl.topics import wait_for_group_coordinator

    servers = running_kafka.bootstrap_servers.split(",")
    assert wait_for_group_coordinator(servers, f"fresh-{time.monotonic_ns()}", "no-such-topic", timeout=60)
    started = time.monotonic()
    assert not wait_for_group_coordinator([f"127.0.0.1:{free_port()}"], "nobody", "no-such-topic", timeout=2)
    assert time.monotonic() - started < 15  # its timeout bounds even the first connection
