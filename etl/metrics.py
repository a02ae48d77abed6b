"""The ingest side's Prometheus metrics, declared once. Label values are bounded:
``source`` is one of SOURCES, ``outcome`` accepted or rejected, ``reason`` one of
REASON_CLASSES. Every labelled series exists at zero from import on, so that
rates and alerts see the first event and dashboards show 0 rather than no data.
"""
from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Histogram, start_http_server

SOURCES = ("csv", "sqlite", "upload", "api", "ws")
WATCH_OUTCOMES = ("loaded", "already_loaded", "failed", "retry")

# Reason codes (tillflow.record, etl.sources, etl.api) folded into a few classes:
# a label per code would grow with every new check.
REASON_CLASSES = ("structure", "missing", "format", "characters", "range", "tax", "other")
_CLASS_OF_CODE = {
    "missing": "missing",
    "wrong_type": "format", "float_not_allowed": "format", "invalid_uuid": "format", "invalid_date": "format",
    "unknown_category": "format", "not_integer": "format", "not_decimal": "format",
    "too_many_decimals": "format",
    "nul_byte": "characters", "control_char": "characters", "invalid_character": "characters",
    "invalid_characters": "characters",
    "out_of_range": "range", "too_long": "range",
    "tax_mismatch": "tax",
}

RECORDS = Counter("tillflow_etl_records_total", "Records read by the ingest side", ["source", "outcome"])
REJECTS = Counter(
    "tillflow_etl_rejects_total",
    "Rejected records by reason class; a record with reasons of several classes counts once in each",
    ["source", "reason"],
)
UPLOADS = Counter("tillflow_etl_uploads_total", "Files or uploads published completely", ["source"])
WATCH_FILES = Counter("tillflow_watch_files_total", "Inbox files handled by the watcher", ["outcome"])
PUBLISH_SECONDS = Histogram(
    "tillflow_etl_publish_seconds", "Time from reading a file to Kafka acknowledging all of it",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)

for _source in SOURCES:
    UPLOADS.labels(source=_source)
    for _outcome in ("accepted", "rejected"):
        RECORDS.labels(source=_source, outcome=_outcome)
    for _reason in REASON_CLASSES:
        REJECTS.labels(source=_source, reason=_reason)
for _outcome in WATCH_OUTCOMES:
    WATCH_FILES.labels(outcome=_outcome)


def reason_class(field: str, code: str) -> str:
    """The class of one reason: anything about the row as a whole is ``structure``."""
    if field == "row":
        return "structure"
    return _CLASS_OF_CODE.get(code, "other")


def count_rejected(source: str, reasons: Iterable) -> None:
    """Count one rejected record (its ``Reason`` objects) under each class it breaks."""
    for cls in {reason_class(r.field, r.code) for r in reasons}:
        REJECTS.labels(source=source, reason=cls).inc()


def serve(port: int) -> None:
    start_http_server(port)
