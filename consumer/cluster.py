"""The Kafka cluster's health as the consumer sees it, for Prometheus.

Kafka itself exports nothing Prometheus can scrape, and the consumer is the one
process that is always connected to it. A daemon thread (an admin client of
its own, never the consumer's) asks the cluster every ``interval`` seconds,
through ``tillflow.kafka_admin.cluster_health`` (the API's readiness and
``tillflow smoke`` ask the same function):

* how many brokers are up (``tillflow_kafka_brokers``); a probe that cannot
  reach the cluster at all reports 0;
* for each of Tillflow's topics, how many partitions have fewer in-sync
  replicas than replicas (under-replicated: a broker is down or lagging) and
  how many have no leader (offline: neither readable nor writable).

The alerts KafkaBrokerDown, KafkaUnderReplicated and KafkaPartitionOffline read
these gauges. A failed probe is logged once per outage, not once per interval.
"""
from __future__ import annotations

import logging
import threading

from consumer import metrics
from tillflow.config import Settings
from tillflow.errors import PublishError
from tillflow.kafka_admin import admin_client, cluster_health

log = logging.getLogger(__name__)


class ClusterProbe:
    """Probes the cluster on a daemon thread until ``stop()``."""

    def __init__(self, settings: Settings, *, interval: float = 30.0) -> None:
        self._kinds = {settings.topic_transactions: "transactions", settings.topic_rejects: "rejects"}
        self._interval = interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._admin = admin_client(settings.kafka_bootstrap_servers, client_id="tillflow-probe")
        self._failing = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kafka-cluster-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.probe_once()
            self._stopping.wait(self._interval)

    def probe_once(self) -> None:
        """One probe; never raises (a probe that fails reports no brokers)."""
        try:
            health = cluster_health(self._admin, list(self._kinds))
        except PublishError as exc:
            if not self._failing:
                log.warning("cannot describe the Kafka cluster (reporting 0 brokers until it answers): %s", exc)
            self._failing = True
            metrics.KAFKA_BROKERS.set(0)
            return
        if self._failing:
            log.info("the Kafka cluster answers again")
        self._failing = False
        metrics.KAFKA_BROKERS.set(health.brokers)
        for topic, found in health.topics.items():
            kind = self._kinds[topic]
            metrics.KAFKA_UNDER_REPLICATED.labels(topic_kind=kind).set(found.under_replicated)
            metrics.KAFKA_OFFLINE.labels(topic_kind=kind).set(found.offline)
