"""The ingest side's Prometheus metrics, declared once. Label values are bounded:
``source`` is csv, sqlite, upload, api or ws; ``outcome`` accepted or rejected."""
from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

RECORDS = Counter("tillflow_etl_records_total", "Records read by the ingest side", ["source", "outcome"])
UPLOADS = Counter("tillflow_etl_uploads_total", "Files or uploads published completely", ["source"])
WATCH_FILES = Counter("tillflow_watch_files_total", "Inbox files handled by the watcher", ["outcome"])
PUBLISH_SECONDS = Histogram(
    "tillflow_etl_publish_seconds", "Time from reading a file to Kafka acknowledging all of it",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)


def serve(port: int) -> None:
    start_http_server(port)
