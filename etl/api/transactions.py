"""``POST /v1/transactions``: the API's hot path, served as a bare ASGI handler.

Each item is validated with the record rules and published: valid ones to the
transactions topic, rejected ones (with every reason) to the rejects topic.
The answer, 200 once Kafka acknowledged every record of the request, lists a
result per item; the rules are in ``etl.api.ingest``. An item for another
store than the token's refuses the whole request (403). If Kafka does not
acknowledge every record the answer is 503 and nothing is confirmed: the
sender sends the same request again, and ids make that safe.

The checks come in the order a caller can act on: token (401), media type
(415), body size (413), JSON (400), shape (422, 413 for a long array), store
(403), Kafka (503).

Why bare ASGI: with one transaction per request, FastAPI's and Starlette's
layers between uvicorn and the endpoint (the app and its middlewares, the
router's matching, the Request object, dependency solving, JSONResponse) cost
about as much CPU as the work itself (py-spy, ``bench.api`` at 500 tx/s), and
on a 2-core box that shares its CPU with three brokers, CPU is latency.
``etl.api.app.TillflowAPI`` hands ``POST /v1/transactions`` to
:class:`Transactions` before any of them; it counts the request metrics and
answers unexpected failures in the one error shape itself. The FastAPI route
of the same path stays registered for the OpenAPI document and for 405 on
other methods, and answers through the same :meth:`Transactions.answer`
should a request ever reach it.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable

from etl import metrics as etl_metrics
from etl.api import metrics
from etl.api.errors import (
    RETRY_AFTER_SECONDS, UNEXPECTED, ApiError, Forbidden, Unavailable, UnsupportedMedia, error_body, log_unexpected,
)
from etl.api.ingest import as_items, foreign_item, parse_json, plan
from etl.api.publish import KafkaUnavailable
from etl.api.spool import declared_length, receive_body
from tillflow.config import Settings

PATH = "/v1/transactions"
_ACCEPTED = etl_metrics.RECORDS.labels(source="api", outcome="accepted")
_REJECTED = etl_metrics.RECORDS.labels(source="api", outcome="rejected")
_PLAN_INLINE = 64  # larger requests are validated on a worker thread, keeping the loop responsive
_JSON = (b"content-type", b"application/json")

Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]  # status, body, extra headers


def json_media(content_type: str | None) -> bool:
    """Whether a Content-Type names JSON: application/json or application/*+json, any parameters."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def unavailable() -> Unavailable:
    return Unavailable(
        "Kafka did not acknowledge every record, so nothing in this request is confirmed: send the whole "
        f"request again after {RETRY_AFTER_SECONDS} seconds (transaction ids make a retry safe)",
        code="kafka_unavailable",
    )


def _headers(raw: list[tuple[bytes, bytes]]) -> tuple[str | None, str | None, str | None]:
    """Authorization, Content-Type and Content-Length from ASGI headers (names are lower case;
    the first of repeated ones counts, as in Starlette)."""
    found: dict[bytes, str] = {}
    for name, value in raw:
        if name in (b"authorization", b"content-type", b"content-length") and name not in found:
            found[name] = value.decode("latin-1")
    return found.get(b"authorization"), found.get(b"content-type"), found.get(b"content-length")


class Transactions:
    """The endpoint: ``answer()`` turns one request into its status, body and headers; called
    as an ASGI app with the app's state (``TillflowAPI``), it also answers and counts it."""

    def __init__(self, settings: Settings) -> None:
        self._limit = settings.api_max_body_bytes
        self._max_batch = settings.api_max_batch
        self._plan = dict(tax_rate=settings.tax_rate, source="api", topic_transactions=settings.topic_transactions,
                          topic_rejects=settings.topic_rejects)

    async def answer(self, state, headers: list[tuple[bytes, bytes]], receive: Callable[[], Awaitable[dict]]) -> Answer:
        """``state``: the app's (``auth``, ``publisher``); ``headers`` and ``receive`` as ASGI gives them."""
        try:
            return await self._accept(state, headers, receive)
        except ApiError as exc:
            return exc.status, error_body(exc.code, exc.message), [
                (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in exc.headers.items()]

    async def __call__(self, state, scope, receive, send) -> None:
        started = time.perf_counter()
        try:
            answer = await self.answer(state, scope["headers"], receive)
        except Exception as exc:  # noqa: BLE001 - the one error shape, as for every other route
            log_unexpected("POST", PATH, exc)
            answer = 500, error_body("internal_error", UNEXPECTED), []
        try:
            await send_answer(send, answer)
        finally:
            metrics.request_answered(PATH, "POST", answer[0], time.perf_counter() - started)

    async def _accept(self, state, headers, receive) -> Answer:
        authorization, content_type, length = _headers(headers)
        caller = await state.auth.authenticate(authorization)
        if not json_media(content_type):
            raise UnsupportedMedia("send the transactions as application/json")
        body = await receive_body(receive, declared_length(length), self._limit)
        items = as_items(parse_json(body), self._max_batch)
        foreign = foreign_item(items, caller.store_id)
        if foreign is not None:
            metrics.FORBIDDEN.inc()
            raise Forbidden(f"item {foreign} names another store than this token's ({caller.store_id}):"
                            " nothing was published; use a token of that store")
        request_id = uuid.uuid4().hex
        if len(items) <= _PLAN_INLINE:
            laid_out = plan(items, store_id=caller.store_id, ref=request_id, **self._plan)
        else:
            laid_out = await asyncio.get_running_loop().run_in_executor(
                None, lambda: plan(items, store_id=caller.store_id, ref=request_id, **self._plan))
        try:
            await state.publisher.publish(laid_out.records)
        except KafkaUnavailable as exc:
            raise unavailable() from exc
        _ACCEPTED.inc(laid_out.accepted)
        _REJECTED.inc(laid_out.rejected)
        body = json.dumps(laid_out.answer(request_id), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return 200, body, [(b"x-request-id", request_id.encode("ascii"))]


async def send_answer(send, answer: Answer) -> None:
    """An answer as an ASGI HTTP response (always JSON)."""
    status, body, extra = answer
    await send({"type": "http.response.start", "status": status,
                "headers": [_JSON, (b"content-length", str(len(body)).encode("ascii")), *extra]})
    await send({"type": "http.response.body", "body": body})
