"""The Kafka topics and their guarantees: replication factor 3, at least two
in-sync replicas for a write to count, and no unclean leader election."""
from __future__ import annotations

import logging
import time

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import GroupIdNotFoundError, KafkaError, TopicAlreadyExistsError

from tillflow.config import Settings
from tillflow.errors import PublishError

log = logging.getLogger(__name__)
_GROUP_NOT_FOUND = f"[Error {GroupIdNotFoundError.errno}]"  # how kafka-python words that answer

# One partition per broker. librdkafka, which every Tillflow producer uses, sends one produce
# request per partition (never several partitions in one request, unlike the Java client), and
# on a small box a broker's cost is per request far more than per record: with acks=all each
# request also wakes both followers' fetches. bench: the same API and cluster on 2 cores, 3
# partitions against 6, alternating: WebSocket 5,841-6,059 against 2,820 tx/s (server CPU 125
# against 236 us a transaction), HTTP p99 at 500 tx/s 55-63 against 94-273 ms. It also bounds
# the consumer group: at most 3 consumers share the work. Topics that exist keep their count;
# `tillflow create-topics --partitions N` makes new ones with N.
PARTITIONS = 3

TOPIC_CONFIG = {
    "min.insync.replicas": "2",
    "unclean.leader.election.enable": "false",
    "retention.ms": str(14 * 24 * 3600 * 1000),
}


def create_topics(bootstrap_servers, names: list[str], *, partitions: int = PARTITIONS, replication: int = 3,
                  timeout: float = 120) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=list(bootstrap_servers), client_id="tillflow-topics")
            break
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise PublishError(f"cannot reach Kafka at {','.join(bootstrap_servers)}: {exc}") from exc
            time.sleep(2)
    created = []
    try:
        existing = set(admin.list_topics())
        for name in names:
            if name in existing:
                continue
            try:
                admin.create_topics([NewTopic(name, partitions, replication, topic_configs=TOPIC_CONFIG)])
                created.append(name)
            except TopicAlreadyExistsError:
                pass
            except KafkaError as exc:
                raise PublishError(f"cannot create topic {name}: {exc}") from exc
        # Creation is acknowledged by the controller; brokers learn of it a moment
        # later. Return only once every broker's metadata lists every topic, so
        # services started after us never meet "unknown topic".
        while set(names) - set(admin.list_topics()):
            if time.monotonic() > deadline:
                missing = sorted(set(names) - set(admin.list_topics()))
                raise PublishError(f"topics {', '.join(missing)} were created but are not visible after {timeout:.0f}s")
            time.sleep(0.5)
    finally:
        admin.close()
    return created


def wait_for_group_coordinator(bootstrap_servers, group: str, *, timeout: float = 60) -> bool:
    """Ask the cluster about ``group`` until its coordinator answers; False if it did not in time.

    On a fresh cluster the first such question creates ``__consumer_offsets``
    (50 partitions, 3 replicas each) and every broker then loads its share:
    seconds on a small, busy machine, which the set-up pays here instead of the
    consumer's first batch (the first file after ``make local`` or
    ``docker compose up`` waits for nothing).
    """
    deadline = time.monotonic() + timeout
    admin = None
    try:
        while time.monotonic() < deadline:
            try:
                if admin is None:
                    wait_ms = max(1000, int(min(10.0, deadline - time.monotonic()) * 1000))
                    admin = KafkaAdminClient(bootstrap_servers=list(bootstrap_servers), client_id="tillflow-topics",
                                             bootstrap_timeout_ms=wait_ms, request_timeout_ms=wait_ms)
                # Answered: the group exists, or (Kafka 4's coordinator) it is known not to.
                error = admin.describe_groups([group])[group].get("error")
                if error is None or error.startswith(_GROUP_NOT_FOUND):
                    return True
            except KafkaError:
                pass
            time.sleep(0.5)
        return False
    finally:
        if admin is not None:
            admin.close()


def cli_create_topics(settings: Settings, partitions: int | None = None) -> int:
    names = [settings.topic_transactions, settings.topic_rejects]
    created = create_topics(settings.kafka_bootstrap_servers, names, partitions=partitions or PARTITIONS)
    for name in names:
        print(f"{name}: {'created' if name in created else 'exists'}")
    if not wait_for_group_coordinator(settings.kafka_bootstrap_servers, settings.consumer_group):
        # Not fatal: the consumer waits for the coordinator by itself.
        log.warning("the coordinator of consumer group %s did not answer yet", settings.consumer_group)
    return 0
