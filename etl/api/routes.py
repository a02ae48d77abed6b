"""The HTTP routes: transactions, health, readiness and metrics.

``POST /v1/transactions`` answers 200 only after Kafka acknowledged every
record of the request (valid transactions and rejects alike), with one result
per item; the rules are in ``etl.api.ingest``. Uploads are in ``etl.api.upload``
and the WebSocket in ``etl.api.stream``.
"""
from __future__ import annotations

import asyncio
import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from etl import metrics as etl_metrics
from etl.api import metrics
from etl.api.auth import Principal
from etl.api.errors import RETRY_AFTER_SECONDS, Forbidden, Unavailable, UnsupportedMedia
from etl.api.ingest import as_items, foreign_item, parse_json, plan
from etl.api.publish import KafkaUnavailable
from etl.api.schemas import Health, Readiness, TransactionIn, TransactionsResult, error_responses
from etl.api.spool import read_body
from tillflow.config import Settings

_ACCEPTED = etl_metrics.RECORDS.labels(source="api", outcome="accepted")
_REJECTED = etl_metrics.RECORDS.labels(source="api", outcome="rejected")
_PLAN_INLINE = 64  # larger requests are validated on a worker thread, keeping the loop responsive

bearer = HTTPBearer(
    auto_error=False, scheme_name="token",
    description="A token made with `tillflow token create --store ID`: Authorization: Bearer tillflow_...",
)


async def principal(request: Request, _credentials=Depends(bearer)) -> Principal:
    """The authenticated caller (401 otherwise); every /v1 route depends on it."""
    return await request.app.state.auth.authenticate(request.headers.get("authorization"))


class AuthenticatedRoute(APIRoute):
    """A route whose endpoint is ``endpoint(request, caller)``, called directly.

    FastAPI's per-request dependency solving (the ``principal`` and bearer
    dependencies, the Request parameter) costs more than the rest of a
    single-transaction POST; this route authenticates the caller itself, exactly
    as ``principal`` does, and calls the endpoint. Its declared parameters still
    document it in OpenAPI (bearer security, body, answers). Only for endpoints
    whose parameters are just ``request`` and ``caller = Depends(principal)``.
    """

    def get_route_handler(self):
        endpoint = self.endpoint

        async def handle(request: Request) -> Response:
            caller = await request.app.state.auth.authenticate(request.headers.get("authorization"))
            return await endpoint(request, caller)

        return handle


def is_json(request: Request) -> bool:
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def unavailable(exc: KafkaUnavailable) -> Unavailable:
    return Unavailable(
        "Kafka did not acknowledge every record, so nothing in this request is confirmed: send the whole "
        f"request again after {RETRY_AFTER_SECONDS} seconds (transaction ids make a retry safe)",
        code="kafka_unavailable",
    )


def transactions_body(max_batch: int) -> dict:
    item = TransactionIn.model_json_schema()
    return {
        "required": True,
        "description": f"One transaction object, or an array of 1 to {max_batch} of them.",
        "content": {"application/json": {"schema": {"anyOf": [
            item, {"type": "array", "items": item, "minItems": 1, "maxItems": max_batch},
        ]}}},
    }


def router(settings: Settings, api: APIRouter | None = None) -> APIRouter:
    """The routes, added to ``api`` (the app's own router: an included router is one more
    layer of matching on every request) or to a new router."""
    api = APIRouter() if api is None else api

    async def post_transactions(request: Request, caller: Principal = Depends(principal)) -> JSONResponse:
        """Validate each item with the record rules and publish it: valid ones to the
        transactions topic, rejected ones (with every reason) to the rejects topic.
        The answer lists a result per item. An item for another store than the
        token's refuses the whole request (403). If Kafka does not acknowledge
        every record the answer is 503 and nothing is confirmed: send the same
        request again; ids make that safe."""
        if not is_json(request):
            raise UnsupportedMedia("send the transactions as application/json")
        body = await read_body(request, settings.api_max_body_bytes)
        items = as_items(parse_json(body), settings.api_max_batch)
        foreign = foreign_item(items, caller.store_id)
        if foreign is not None:
            metrics.FORBIDDEN.inc()
            raise Forbidden(f"item {foreign} names another store than this token's ({caller.store_id}):"
                            " nothing was published; use a token of that store")
        request_id = uuid.uuid4().hex
        args = dict(store_id=caller.store_id, tax_rate=settings.tax_rate, source="api", ref=request_id,
                    topic_transactions=settings.topic_transactions, topic_rejects=settings.topic_rejects)
        if len(items) <= _PLAN_INLINE:
            laid_out = plan(items, **args)
        else:
            laid_out = await asyncio.get_running_loop().run_in_executor(None, lambda: plan(items, **args))
        try:
            await request.app.state.publisher.publish(laid_out.records)
        except KafkaUnavailable as exc:
            raise unavailable(exc) from exc
        _ACCEPTED.inc(laid_out.accepted)
        _REJECTED.inc(laid_out.rejected)
        return JSONResponse(laid_out.answer(request_id), headers={"X-Request-ID": request_id})

    api.add_api_route(
        "/v1/transactions", post_transactions, methods=["POST"], response_model=TransactionsResult,
        tags=["transactions"], summary="Publish transactions; answered once Kafka acknowledged them",
        responses=error_responses(400, 401, 403, 413, 415, 422, 503),
        openapi_extra={"requestBody": transactions_body(settings.api_max_batch)},
        route_class_override=AuthenticatedRoute,  # the hot path: see AuthenticatedRoute
    )

    @api.get("/healthz", response_model=Health, tags=["operations"], summary="The process is alive")
    async def healthz() -> dict:
        return {"status": "ok"}

    @api.get(
        "/readyz", response_model=Readiness, tags=["operations"],
        summary="Kafka can take writes: every partition has a leader and enough in-sync replicas",
        responses={503: {"model": Readiness, "description": "Kafka cannot take writes now",
                         "headers": {"Retry-After": {"schema": {"type": "integer"}}}}},
    )
    async def readyz(request: Request) -> JSONResponse:
        reason = await request.app.state.publisher.readiness()
        if reason is None:
            return JSONResponse({"status": "ready", "kafka": "ok"})
        return JSONResponse({"status": "unavailable", "kafka": reason}, status_code=503,
                            headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    @api.get(
        "/metrics", tags=["operations"], summary="Prometheus metrics", response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                         "description": "Prometheus text exposition format"}},
    )
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return api
