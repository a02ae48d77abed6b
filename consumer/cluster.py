"""The Kafka cluster's health as the consumer sees it, for Prometheus.

Kafka itself exports nothing Prometheus can scrape, and the consumer is the one
process that is always connected to it. A daemon thread (an admin client of
its own, never the consumer's) asks the cluster every ``interval`` seconds:

* how many brokers are registered and not fenced (``tillflow_kafka_brokers``);
  a probe that cannot reach the cluster at all reports 0;
* for each of Tillflow's topics, how many partitions have fewer in-sync
  replicas than replicas (under-replicated: a broker is down or lagging) and
  how many have no leader (offline: neither readable nor writable).

The alerts KafkaBrokerDown, KafkaUnderReplicated and KafkaPartitionOffline read
these gauges. A failed probe is logged once per outage, not once per interval.
"""
from __future__ import annotations

import logging
import threading

from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError

from consumer import metrics
from tillflow.config import Settings

log = logging.getLogger(__name__)


class ClusterProbe:
    """Probes the cluster on a daemon thread until ``stop()``."""

    def __init__(self, settings: Settings, *, interval: float = 30.0) -> None:
        self._bootstrap = list(settings.kafka_bootstrap_servers)
        self._kinds = {settings.topic_transactions: "transactions", settings.topic_rejects: "rejects"}
        self._interval = interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._admin: KafkaAdminClient | None = None
        self._failing = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kafka-cluster-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.probe_once()
            self._stopping.wait(self._interval)

    def probe_once(self) -> None:
        """One probe; never raises (a probe that fails reports no brokers)."""
        try:
            if self._admin is None:
                self._admin = KafkaAdminClient(bootstrap_servers=self._bootstrap, client_id="tillflow-probe",
                                               request_timeout_ms=10_000, bootstrap_timeout_ms=10_000)
            cluster = self._admin.describe_cluster()
            topics = self._admin.describe_topics(list(self._kinds))
        except (KafkaError, OSError) as exc:
            if not self._failing:
                log.warning("cannot describe the Kafka cluster (reporting 0 brokers until it answers): %s", exc)
            self._failing = True
            metrics.KAFKA_BROKERS.set(0)
            self._close()
            return
        if self._failing:
            log.info("the Kafka cluster answers again")
        self._failing = False
        metrics.KAFKA_BROKERS.set(sum(1 for b in cluster["brokers"] if not b.get("is_fenced")))
        for topic in topics:
            kind = self._kinds.get(topic["name"])
            if kind is None:
                continue
            partitions = topic["partitions"]
            under = sum(1 for p in partitions if len(p["isr_nodes"]) < len(p["replica_nodes"]))
            offline = sum(1 for p in partitions if p["leader_id"] < 0)
            metrics.KAFKA_UNDER_REPLICATED.labels(topic_kind=kind).set(under)
            metrics.KAFKA_OFFLINE.labels(topic_kind=kind).set(offline)

    def _close(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            try:
                admin.close()
            except (KafkaError, OSError):
                pass
