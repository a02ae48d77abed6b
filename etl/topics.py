"""The Kafka topics and their guarantees: replication factor 3, at least two
in-sync replicas for a write to count, and no unclean leader election. Made
with confluent-kafka's AdminClient, like every other Kafka request Tillflow makes."""
from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import NewTopic

from tillflow.config import Settings
from tillflow.errors import PublishError
from tillflow.kafka_admin import MIN_INSYNC_REPLICAS, admin_client, describe_error

log = logging.getLogger(__name__)

REPLICATION_FACTOR = 3
# One partition per broker: librdkafka, which every Tillflow producer uses, sends one produce
# request per partition, and on a small box a broker's cost is per request far more than per
# record (bench/README.md, "Topics with one partition per broker"). It also bounds the consumer
# group: at most 3 consumers share the work. Topics that exist keep their count;
# `tillflow create-topics --partitions N` makes new ones with N.
PARTITIONS = 3

TOPIC_CONFIG = {
    "min.insync.replicas": str(MIN_INSYNC_REPLICAS),
    "unclean.leader.election.enable": "false",
    "retention.ms": str(14 * 24 * 3600 * 1000),
}


def create_topics(bootstrap_servers, names: list[str], *, partitions: int = PARTITIONS,
                  replication: int = REPLICATION_FACTOR, timeout: float = 120) -> list[str]:
    """Create the topics that do not exist yet; return the names created.

    Creation is acknowledged by the controller; brokers learn of it a moment
    later. Returns only once the metadata lists every topic, so services started
    after never meet "unknown topic"."""
    servers = list(bootstrap_servers)
    admin = admin_client(servers, client_id="tillflow-topics")
    deadline = time.monotonic() + timeout

    def existing() -> set[str]:
        while True:
            try:
                return set(admin.list_topics(timeout=min(10.0, max(1.0, deadline - time.monotonic()))).topics)
            except KafkaException as exc:
                if time.monotonic() > deadline:
                    raise PublishError(f"cannot reach Kafka at {','.join(servers)}: {describe_error(exc)}") from exc
                time.sleep(2)

    missing = [name for name in names if name not in existing()]
    created = []
    if missing:
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=replication, config=TOPIC_CONFIG)
             for name in missing], request_timeout=max(1.0, deadline - time.monotonic()))
        for name, future in futures.items():
            try:
                future.result()
                created.append(name)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise PublishError(f"cannot create topic {name}: {describe_error(exc)}") from exc
    while set(names) - existing():
        if time.monotonic() > deadline:
            absent = sorted(set(names) - existing())
            raise PublishError(f"topics {', '.join(absent)} were created but are not visible after {timeout:.0f}s")
        time.sleep(0.5)
    return created


def wait_for_group_coordinator(bootstrap_servers, group: str, topic: str, *, timeout: float = 60) -> bool:
    """Ask ``group``'s coordinator for its committed offset of ``topic`` until it answers; False if it
    did not in time.

    On a fresh cluster the first such question creates ``__consumer_offsets``
    (50 partitions, 3 replicas each) and every broker then loads its share:
    seconds on a small, busy machine, which the set-up pays here instead of the
    consumer's first batch (the first file after ``make local`` or
    ``docker compose up`` waits for nothing).

    Asked as the consumer asks it (OffsetFetch, through a consumer that joins no
    group), not with the admin client's DescribeConsumerGroups: librdkafka 2.16
    can abort the whole process in the admin client's coordinator requests when a
    connection drops meanwhile, as a starting cluster's do (confluentinc/librdkafka
    issue 4605; `tillflow create-topics` died so with SIGABRT in kafka-init).
    """
    deadline = time.monotonic() + timeout
    consumer = Consumer({"bootstrap.servers": ",".join(bootstrap_servers), "group.id": group,
                         "client.id": "tillflow-topics", "enable.auto.commit": False,
                         "socket.timeout.ms": int(min(10.0, timeout) * 1000), "logger": log})
    try:
        while time.monotonic() < deadline:
            wait = max(1.0, min(10.0, deadline - time.monotonic()))
            try:
                consumer.committed([TopicPartition(topic, 0)], timeout=wait)
                return True  # the coordinator answered (with an offset, or with none)
            except KafkaException:
                time.sleep(0.5)
        return False
    finally:
        consumer.close()


def cli_create_topics(settings: Settings, partitions: int | None = None) -> int:
    names = [settings.topic_transactions, settings.topic_rejects]
    created = create_topics(settings.kafka_bootstrap_servers, names, partitions=partitions or PARTITIONS)
    for name in names:
        print(f"{name}: {'created' if name in created else 'exists'}")
    if not wait_for_group_coordinator(settings.kafka_bootstrap_servers, settings.consumer_group,
                                      settings.topic_transactions):
        # Not fatal: the consumer waits for the coordinator by itself.
        log.warning("the coordinator of consumer group %s did not answer yet", settings.consumer_group)
    return 0
