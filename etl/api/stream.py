"""``GET /v1/stream``: the tills' WebSocket, answered per transaction after Kafka.

Handshake: ``Authorization: Bearer <token>`` on the upgrade request; without a
valid token the upgrade is refused with HTTP 401 (503 if the token cannot be
checked now), before any frame.

A frame from the till is JSON text (or UTF-8 binary): one transaction object,
with the fields of ``POST /v1/transactions``. Each gets exactly one answer,
sent once Kafka acknowledged what was published for it::

    {"type": "ack", "seq": 1, "id": "<canonical id>"}
    {"type": "reject", "seq": 2, "id": "<id as sent, or null>", "reasons": [{"field", "code", "message"}, ...]}
    {"type": "error", "seq": 3, "id": "...", "code": "kafka_unavailable", "retryable": true, "retry_after": 5,
     "message": ...}
    {"type": "error", "seq": 4, "id": null, "code": "malformed_frame", "retryable": false, "message": ...}

``seq`` is the frame's 1-based position on this connection. Answers come in the
order Kafka acknowledges, not necessarily the order of the frames. A reject was
published to the rejects topic (kept, with every reason). Error codes:
``kafka_unavailable`` (retryable: send the same frame again after
``retry_after`` seconds), ``malformed_frame`` (not a JSON object or array),
``frame_too_large`` (beyond ``API_MAX_FRAME_BYTES``), ``batch_too_large`` and
``forbidden_store`` (another store than the token's); none of these closes the
connection, and nothing was published for the frame. A frame beyond the
transport's hard limit (four times that, at least 1 MiB) closes it with 1009.

A frame may also hold a JSON array of 1 to ``API_MAX_BATCH`` transactions (a
till catching up, a bulk sender): it gets one answer frame once every item is
settled, ``{"type": "results", "seq": 5, "results": [...]}``, holding for each
item, in order, the ack, reject or retryable error it would have had alone.

Backpressure: at most ``API_WS_MAX_IN_FLIGHT`` frames per connection await
their answer; beyond that the server stops reading the socket, so TCP slows the
till down. After a reconnect, a till resends every transaction it got no ack
or reject for: ids make that safe (the consumer stores each id once).
"""
from __future__ import annotations

import asyncio
import json
import logging
import uuid
from functools import partial

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from etl import metrics as etl_metrics
from etl.api import metrics
from etl.api.auth import Principal
from etl.api.errors import RETRY_AFTER_SECONDS, ApiError, BadRequest
from etl.api.ingest import foreign_store, judge, parse_json, reasons_json, record_for
from etl.api.publish import AsyncPublisher, KafkaUnavailable
from tillflow.config import Settings
from tillflow.record import Origin, Transaction

log = logging.getLogger("tillflow.api")

HARD_FRAME_MINIMUM = 1 << 20
_OUTCOMES = {name: metrics.WS_MESSAGES.labels(outcome=name) for name in (
    "accepted", "rejected", "malformed", "too_large", "forbidden", "unavailable")}
_ACCEPTED = etl_metrics.RECORDS.labels(source="ws", outcome="accepted")
_REJECTED = etl_metrics.RECORDS.labels(source="ws", outcome="rejected")


class _Count:
    value = 0


# Messages awaiting Kafka, counted as a plain int on the event loop and read when /metrics is
# scraped: a Gauge's inc() and dec() take a lock, twice per message.
_IN_FLIGHT = _Count()
metrics.WS_IN_FLIGHT.set_function(lambda: _IN_FLIGHT.value)


def transport_limit(settings: Settings) -> int:
    """The WebSocket transport's own frame limit (uvicorn ws_max_size): beyond it, close 1009."""
    return max(4 * settings.api_max_frame_bytes, HARD_FRAME_MINIMUM)


def _dumps(doc: dict) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def _error(seq: int | None, code: str, message: str, tx_id: str | None = None, retryable: bool = False) -> dict:
    doc = {"type": "error", "seq": seq, "id": tx_id, "code": code, "retryable": retryable, "message": message}
    if seq is None:
        del doc["seq"]
    if retryable:
        doc["retry_after"] = RETRY_AFTER_SECONDS
    return doc


_UNAVAILABLE = ("Kafka did not acknowledge this transaction: send it again after"
                f" {RETRY_AFTER_SECONDS} seconds")


class _Connection:
    """One till's connection: a reader that judges and publishes, a writer that answers."""

    def __init__(self, websocket: WebSocket, caller: Principal, settings: Settings,
                 publisher: AsyncPublisher) -> None:
        self.ws = websocket
        self.caller = caller
        self.settings = settings
        self.publisher = publisher
        self.slots = asyncio.Semaphore(settings.api_ws_max_in_flight)
        self.outbox: asyncio.Queue[str] = asyncio.Queue()
        self.origin = Origin("ws", uuid.uuid4().hex)
        self.seq = 0
        self.batches: set[asyncio.Task] = set()

    async def run(self) -> None:
        reader = asyncio.create_task(self._read())
        writer = asyncio.create_task(self._write())
        try:
            await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, writer, *self.batches):
                task.cancel()
            await asyncio.gather(reader, writer, *self.batches, return_exceptions=True)

    async def _read(self) -> None:
        while True:
            await self.slots.acquire()
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            self.seq += 1
            text = message.get("text")
            if text is None:
                text = message.get("bytes") or b""
            await self._handle(self.seq, text)

    async def _write(self) -> None:
        while True:
            text = await self.outbox.get()
            try:
                await self.ws.send_text(text)
            except (WebSocketDisconnect, RuntimeError, OSError):
                return
            self.slots.release()

    def _refuse(self, seq: int, code: str, message: str, outcome: str, tx_id: str | None = None) -> None:
        _OUTCOMES[outcome].inc()
        self.outbox.put_nowait(_dumps(_error(seq, code, message, tx_id)))

    async def _handle(self, seq: int, frame: str | bytes) -> None:
        limit = self.settings.api_max_frame_bytes
        size = len(frame) if isinstance(frame, bytes) or frame.isascii() else len(frame.encode("utf-8"))
        if size > limit:
            return self._refuse(seq, "frame_too_large", f"the frame is {size} bytes: at most {limit} are accepted;"
                                " send fewer transactions per frame", "too_large")
        try:
            doc = parse_json(frame)
        except BadRequest as exc:
            return self._refuse(seq, "malformed_frame", exc.message, "malformed")
        if isinstance(doc, dict):
            items = [doc]
        elif isinstance(doc, list) and doc:
            items = doc
            if len(items) > self.settings.api_max_batch:
                return self._refuse(seq, "batch_too_large", f"the frame holds {len(items)} transactions: at most"
                                    f" {self.settings.api_max_batch} are accepted", "too_large")
        else:
            return self._refuse(seq, "malformed_frame", "a frame holds one transaction object or a non-empty"
                                " array of them", "malformed")
        for item in items:
            if foreign_store(item, self.caller.store_id):
                metrics.FORBIDDEN.inc()
                return self._refuse(seq, "forbidden_store", "a transaction names another store than this token's"
                                    f" ({self.caller.store_id}): nothing in the frame was published", "forbidden",
                                    _id_of(item) if len(items) == 1 else None)
        origin = self.origin.with_line(seq)
        store, rate = self.caller.store_id, self.settings.tax_rate
        verdicts = [judge(item, store_id=store, tax_rate=rate, origin=origin) for item in items]
        try:
            producer = await self.publisher.available()
        except KafkaUnavailable:
            answers = [_error(None, "kafka_unavailable", _UNAVAILABLE, _id(v), retryable=True) for v in verdicts]
            _OUTCOMES["unavailable"].inc(len(answers))
            return self._send_answers(seq, answers, batch=isinstance(doc, list))
        topics = self.settings.topic_transactions, self.settings.topic_rejects
        records = [record_for(v, *topics) for v in verdicts]
        futures = [self.publisher.send(producer, record) for record in records]
        _IN_FLIGHT.value += len(futures)
        if isinstance(doc, dict):
            # A transaction's key is its canonical id, formatted once (record_for) for the ack too.
            futures[0].add_done_callback(partial(self._settled, seq, verdicts[0], records[0][1]))
        else:
            task = asyncio.create_task(self._settle_batch(seq, verdicts, futures))
            self.batches.add(task)
            task.add_done_callback(self.batches.discard)

    def _answer_for(self, verdict, future: asyncio.Future) -> dict:
        self.publisher.outcome(future)
        if future.cancelled() or future.exception() is not None:
            _OUTCOMES["unavailable"].inc()
            return _error(None, "kafka_unavailable", _UNAVAILABLE, _id(verdict), retryable=True)
        if type(verdict) is Transaction:
            _OUTCOMES["accepted"].inc()
            _ACCEPTED.inc()
            return {"type": "ack", "id": str(verdict.id)}
        _OUTCOMES["rejected"].inc()
        _REJECTED.inc()
        return {"type": "reject", "id": verdict.id, "reasons": reasons_json(verdict.reasons)}

    def _settled(self, seq: int, verdict, key: bytes | None, future: asyncio.Future) -> None:
        _IN_FLIGHT.value -= 1
        if type(verdict) is Transaction and not future.cancelled() and future.exception() is None:
            # The hot path: built by hand, the key is the canonical id (hex digits and hyphens).
            self.publisher.outcome(future)
            _OUTCOMES["accepted"].inc()
            _ACCEPTED.inc()
            self.outbox.put_nowait(f'{{"type":"ack","seq":{seq},"id":"{key.decode("ascii")}"}}')
            return
        self._send_answers(seq, [self._answer_for(verdict, future)], batch=False)

    async def _settle_batch(self, seq: int, verdicts: list, futures: list[asyncio.Future]) -> None:
        await asyncio.wait(futures)
        _IN_FLIGHT.value -= len(futures)
        self._send_answers(seq, [self._answer_for(v, f) for v, f in zip(verdicts, futures)], batch=True)

    def _send_answers(self, seq: int, answers: list[dict], *, batch: bool) -> None:
        if batch:
            self.outbox.put_nowait(_dumps({"type": "results", "seq": seq, "results": answers}))
        else:
            self.outbox.put_nowait(_dumps({"type": answers[0]["type"], "seq": seq, **answers[0]}))


def _id(verdict) -> str | None:
    return str(verdict.id) if type(verdict) is Transaction else verdict.id


def _id_of(item: object) -> str | None:
    value = item.get("id") if isinstance(item, dict) else None
    return value.strip()[:100] if isinstance(value, str) else None


def router(settings: Settings, api: APIRouter | None = None) -> APIRouter:
    """The routes, added to ``api`` (the app's own router) or to a new router."""
    api = APIRouter() if api is None else api

    @api.websocket("/v1/stream")
    async def stream(websocket: WebSocket) -> None:
        try:
            caller = await websocket.app.state.auth.authenticate(websocket.headers.get("authorization"))
        except ApiError as exc:
            await websocket.send_denial_response(exc.response())
            return
        await websocket.accept()
        metrics.WS_CONNECTIONS.inc()
        try:
            await _Connection(websocket, caller, settings, websocket.app.state.publisher).run()
        finally:
            metrics.WS_CONNECTIONS.dec()
            if websocket.client_state == WebSocketState.CONNECTED:
                try:
                    await websocket.close()
                except (WebSocketDisconnect, RuntimeError):  # the till went away meanwhile
                    pass

    return api
