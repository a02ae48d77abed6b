"""The consumer's Prometheus metrics, declared once; label values are bounded
(``topic_kind`` is transactions or rejects; ``partition`` is the partition count).
The ``tillflow_kafka_*`` gauges describe the cluster (see ``consumer.cluster``)."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

CONSUMED = Counter("tillflow_consumer_records_consumed_total", "Records read from Kafka", ["topic_kind"])
INSERTED = Counter("tillflow_consumer_transactions_inserted_total", "Transactions stored in sales.transactions")
DUPLICATES = Counter("tillflow_consumer_duplicates_total", "Records whose id was already stored with the same content")
CONFLICTS = Counter("tillflow_consumer_conflicts_total", "Records whose id was stored with different content")
REJECTS_STORED = Counter("tillflow_consumer_rejects_stored_total", "Rejects written to ingest.rejects")
UNDECODABLE = Counter("tillflow_consumer_undecodable_total", "Kafka messages that were not Tillflow records")
DB_ERRORS = Counter("tillflow_consumer_database_errors_total", "Batch writes that failed because PostgreSQL was unavailable")
DB_UP = Gauge("tillflow_consumer_database_up", "1 when the last write reached PostgreSQL, 0 during an outage")
BATCH_SIZE = Histogram(
    "tillflow_consumer_batch_size", "Records per written batch",
    buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 20000),
)
WRITE_SECONDS = Histogram(
    "tillflow_consumer_write_seconds", "Time to write one batch to PostgreSQL",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
LAST_COMMIT = Gauge("tillflow_consumer_last_commit_timestamp_seconds", "When offsets were last committed")
LAG = Gauge("tillflow_consumer_lag_records", "Records behind the end of the partition", ["topic_kind", "partition"])
KAFKA_BROKERS = Gauge("tillflow_kafka_brokers", "Kafka brokers registered and not fenced (0: cluster unreachable)")
KAFKA_UNDER_REPLICATED = Gauge(
    "tillflow_kafka_under_replicated_partitions", "Partitions with fewer in-sync replicas than replicas", ["topic_kind"]
)
KAFKA_OFFLINE = Gauge("tillflow_kafka_offline_partitions", "Partitions without a leader", ["topic_kind"])

# Labelled series exist at zero from the start, so a rate sees the first event.
for _kind in ("transactions", "rejects"):
    CONSUMED.labels(topic_kind=_kind)
    KAFKA_UNDER_REPLICATED.labels(topic_kind=_kind)
    KAFKA_OFFLINE.labels(topic_kind=_kind)


def serve(port: int) -> None:
    """Expose /metrics on ``port`` (all interfaces: Prometheus scrapes from its container)."""
    start_http_server(port)
