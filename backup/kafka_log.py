"""What a backup and a restore ask of Kafka: where each partition's log starts
and ends, how long the topics keep records, and where the writer's consumer
group reads from, through confluent-kafka's AdminClient
(``tillflow.kafka_admin.admin_client``), the client every production process uses.

Errors::

    PublishError   Kafka cannot be reached, or refused a request (the message says which)
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from confluent_kafka import ConsumerGroupState, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import ConfigResource, OffsetSpec

from tillflow.errors import PublishError
from tillflow.kafka_admin import RESULT_GRACE, admin_client

Key = tuple[str, int]
_TIMEOUT = 15.0
_IDLE_GROUP = {ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD, ConsumerGroupState.UNKNOWN}


class KafkaLog:
    """An admin connection to the cluster at ``servers`` (the AdminClient needs no closing)."""

    def __init__(self, servers: Iterable[str], *, timeout: float = _TIMEOUT) -> None:
        servers = list(servers)
        self.servers = ",".join(servers)
        self.timeout = timeout
        self._admin = admin_client(servers, client_id="tillflow-backup", timeout=timeout)

    def _wait(self, futures, what: str):
        try:
            return {key: future.result(timeout=self.timeout + RESULT_GRACE) for key, future in futures.items()}
        except KafkaException as exc:
            raise PublishError(f"Kafka at {self.servers}: {what} failed: {exc.args[0].str()}") from exc
        except TimeoutError as exc:
            raise PublishError(f"Kafka at {self.servers} did not answer within {self.timeout:.0f}s ({what})") from exc

    def partitions(self, topics: Iterable[str]) -> list[Key]:
        """Every partition of ``topics``; a topic that does not exist is an error."""
        try:
            metadata = self._admin.list_topics(timeout=self.timeout)
        except KafkaException as exc:
            raise PublishError(f"cannot reach Kafka at {self.servers}: {exc.args[0].str()}") from exc
        keys = []
        for topic in topics:
            found = metadata.topics.get(topic)
            if found is None or found.error is not None:
                reason = found.error.str() if found is not None else "no such topic"
                raise PublishError(f"Kafka at {self.servers}: topic {topic}: {reason}")
            keys += [(topic, partition) for partition in sorted(found.partitions)]
        return keys

    def offsets(self, topics: Iterable[str]) -> dict[Key, tuple[int, int]]:
        """``(low, high)`` of every partition: the first offset Kafka still holds and the next it will write."""
        keys = self.partitions(topics)
        if not keys:
            return {}
        ends = {}
        for name, spec in (("low", OffsetSpec.earliest()), ("high", OffsetSpec.latest())):
            futures = self._admin.list_offsets({TopicPartition(t, p): spec for t, p in keys},
                                               request_timeout=self.timeout)
            ends[name] = {(tp.topic, tp.partition): info.offset
                          for tp, info in self._wait(futures, f"listing the {name} offsets").items()}
        return {key: (ends["low"][key], ends["high"][key]) for key in keys}

    def retention_ms(self, topics: Iterable[str]) -> dict[str, int | None]:
        """``retention.ms`` of each topic; None where it keeps records forever (-1)."""
        resources = [ConfigResource(ConfigResource.Type.TOPIC, topic) for topic in topics]
        found = self._wait(self._admin.describe_configs(resources, request_timeout=self.timeout),
                           "reading the topics' retention")
        result = {}
        for resource, config in found.items():
            value = int(config["retention.ms"].value)
            result[resource.name] = None if value < 0 else value
        return result

    def group_members(self, group: str) -> int:
        """How many consumers are in ``group`` now (0: empty, or no such group)."""
        found = self._wait(self._admin.describe_consumer_groups([group], request_timeout=self.timeout),
                           f"describing consumer group {group}")
        description = found[group]
        return 0 if description.state in _IDLE_GROUP else len(description.members)

    def wait_group_empty(self, group: str, timeout: float) -> None:
        """Wait until no consumer is in ``group`` (a stopped consumer's session may take a while to end)."""
        deadline = time.monotonic() + timeout
        while (members := self.group_members(group)) > 0:
            if time.monotonic() >= deadline:
                raise PublishError(
                    f"consumer group {group} still has {members} active consumer(s) after {timeout:.0f}s: stop "
                    "the consumers first (make restore REPLACE=1 stops them), then run `tillflow backup replay`"
                )
            time.sleep(1.0)

    def set_group_offsets(self, group: str, starts: Mapping[Key, int]) -> None:
        """Point ``group`` at ``starts``: its consumers read from there on. The group must be empty."""
        if not starts:
            return
        request = ConsumerGroupTopicPartitions(group, [TopicPartition(t, p, o) for (t, p), o in sorted(starts.items())])
        (answer,) = self._wait(self._admin.alter_consumer_group_offsets([request], request_timeout=self.timeout),
                               f"setting consumer group {group}'s offsets").values()
        refused = [tp for tp in answer.topic_partitions if tp.error is not None]
        if refused:
            tp = refused[0]
            raise PublishError(f"Kafka refused consumer group {group}'s offset for {tp.topic}[{tp.partition}]: "
                               f"{tp.error.str()}")
