"""The API's Prometheus metrics, declared once, with bounded label values.

``route`` is a route template (``/v1/uploads/{upload_id}``) or ``other``,
never a raw path; ``status`` an HTTP status code; ``outcome`` and ``reason``
come from the fixed lists in their help texts. Records are also counted by
``etl.metrics.RECORDS`` with ``source`` api, ws or upload.
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("tillflow_api_requests_total", "HTTP requests answered", ["route", "method", "status"])
REQUEST_SECONDS = Histogram(
    "tillflow_api_request_seconds", "Time to answer an HTTP request", ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PUBLISH_SECONDS = Histogram(
    "tillflow_api_publish_seconds", "Time from handing records to Kafka to its acknowledgement of all of them",
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PUBLISH_FAILURES = Counter("tillflow_api_publish_failures_total",
                           "Requests or messages answered 503 because Kafka did not acknowledge")
KAFKA_AVAILABLE = Gauge("tillflow_api_kafka_available", "1 while the last publish or probe reached Kafka, else 0")
AUTH_FAILURES = Counter("tillflow_api_auth_failures_total",
                        "Refused bearer tokens, by reason: missing, malformed, unknown, wrong_secret, revoked",
                        ["reason"])
FORBIDDEN = Counter("tillflow_api_forbidden_total", "Requests or messages refused for naming another store")
WS_CONNECTIONS = Gauge("tillflow_api_ws_connections", "Open WebSocket connections on /v1/stream")
WS_MESSAGES = Counter(
    "tillflow_api_ws_messages_total",
    "WebSocket frames answered, by outcome: accepted, rejected, malformed, too_large, forbidden, unavailable",
    ["outcome"],
)
WS_IN_FLIGHT = Gauge("tillflow_api_ws_in_flight", "WebSocket messages awaiting Kafka's acknowledgement")

_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_SERIES: dict[tuple[str, str, int], tuple] = {}


def request_answered(route: str, method: str, status: int, seconds: float) -> None:
    """Count one HTTP request (REQUESTS, REQUEST_SECONDS). The labelled children are looked up
    once per (route, method, status) and kept: ``labels()`` validates and hashes its arguments
    under a lock on every call. Bounded: route templates x methods x statuses."""
    key = (route, method if method in _METHODS else "other", status)
    series = _SERIES.get(key)
    if series is None:
        series = _SERIES[key] = (REQUESTS.labels(route=route, method=key[1], status=str(status)),
                                 REQUEST_SECONDS.labels(route=route))
    series[0].inc()
    series[1].observe(seconds)
