"""The Kafka cluster's health, one function, through confluent-kafka
(librdkafka), the client every Tillflow process uses.

``assess(metadata, topics)`` is the one health check. The API's ``/readyz``
(``etl.api.publish.Probe``), the consumer's cluster probe (``consumer.cluster``,
the metrics the Kafka alerts read) and ``tillflow smoke`` each read a metadata
answer (the producer's, or an admin client's) and ask it the same questions:
how many brokers are up, which partitions are under-replicated or have no
leader, and whether every partition can take a write now.

Errors::

    PublishError   Kafka cannot be reached, or refused a request; the message says which
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from tillflow.errors import PublishError

# The durability every Tillflow topic is made with (etl.topics): a write counts
# once two of the three replicas have it.
MIN_INSYNC_REPLICAS = 2


# How much longer than a request's own request_timeout Python waits for its future.
# librdkafka always completes an admin request's future itself (with _TIMED_OUT at
# the latest); a future given up on earlier leaves the request in flight when the
# client is destroyed. (The rd_kafka_enq_once_del_source_return abort seen in
# create-topics was another cause: librdkafka issue 4605, in the admin client's
# coordinator requests, which etl.topics therefore no longer makes.)
RESULT_GRACE = 5.0


def admin_client(servers: Iterable[str], *, client_id: str, timeout: float = 10.0) -> AdminClient:
    return AdminClient({"bootstrap.servers": ",".join(servers), "client.id": client_id,
                        "socket.timeout.ms": int(timeout * 1000)})


def describe_error(exc: BaseException) -> str:
    """A librdkafka error (or any other) in a few words, for one-line messages."""
    error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    if error is None:
        return str(exc) or type(exc).__name__
    return f"{error.name()}: {error.str()}" if error.str() else error.name()


@dataclass(frozen=True)
class TopicHealth:
    partitions: int = 0
    under_replicated: int = 0  # fewer in-sync replicas than replicas
    offline: int = 0  # no leader: neither readable nor writable


@dataclass(frozen=True)
class Health:
    brokers: int
    addresses: frozenset[str] = frozenset()  # host:port of each broker up
    topics: dict[str, TopicHealth] = field(default_factory=dict)
    # None when every partition of every topic can take a write now, else the first reason why not.
    write_problem: str | None = None


def assess(metadata, topics: Sequence[str]) -> Health:
    """The cluster's health from a metadata answer (``ClusterMetadata`` of ``list_topics``)."""
    found: dict[str, TopicHealth] = {}
    problem = None
    for name in topics:
        topic = metadata.topics.get(name)
        if topic is None:
            problem = problem or f"topic {name} does not exist"
            continue
        if topic.error is not None or not topic.partitions:
            problem = problem or (f"topic {name} is not available "
                                  f"({topic.error.str() if topic.error else 'no partitions'})")
            continue
        under = offline = 0
        for part in topic.partitions.values():
            under += len(part.isrs) < len(part.replicas)
            offline += part.leader < 0
            need = max(1, min(MIN_INSYNC_REPLICAS, len(part.replicas)))
            if problem is None and part.leader < 0:
                problem = f"{name}[{part.id}] has no leader"
            elif problem is None and len(part.isrs) < need:
                problem = f"{name}[{part.id}] has {len(part.isrs)} in-sync replicas, fewer than the {need} a write needs"
        found[name] = TopicHealth(len(topic.partitions), under, offline)
    addresses = frozenset(f"{b.host}:{b.port}" for b in metadata.brokers.values())
    return Health(len(metadata.brokers), addresses, found, problem)


def cluster_health(admin: AdminClient, topics: Sequence[str], timeout: float = 10.0) -> Health:
    """``assess`` of a fresh metadata answer; PublishError when the cluster does not answer."""
    try:
        # All topics: naming one would let a broker with auto-creation create it.
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise PublishError(f"Kafka does not answer ({describe_error(exc)})") from exc
    return assess(metadata, topics)
