"""The HTTP routes: transactions, health, readiness and metrics.

``POST /v1/transactions`` is declared here, for the OpenAPI document, and
served by ``etl.api.transactions`` (the hot path, bare ASGI). Uploads are in
``etl.api.upload`` and the WebSocket in ``etl.api.stream``.
"""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from etl.api.auth import Principal
from etl.api.errors import RETRY_AFTER_SECONDS
from etl.api.schemas import Health, Readiness, TransactionIn, TransactionsResult, error_responses
from etl.api.transactions import PATH, Transactions
from tillflow.config import Settings

bearer = HTTPBearer(
    auto_error=False, scheme_name="token",
    description="A token made with `tillflow token create --store ID`: Authorization: Bearer tillflow_...",
)


async def principal(request: Request, _credentials=Depends(bearer)) -> Principal:
    """The authenticated caller (401 otherwise); every /v1 route depends on it."""
    return await request.app.state.auth.authenticate(request.headers.get("authorization"))


def transactions_body(max_batch: int) -> dict:
    item = TransactionIn.model_json_schema()
    return {
        "required": True,
        "description": f"One transaction object, or an array of 1 to {max_batch} of them.",
        "content": {"application/json": {"schema": {"anyOf": [
            item, {"type": "array", "items": item, "minItems": 1, "maxItems": max_batch},
        ]}}},
    }


def router(settings: Settings, api: APIRouter | None = None, endpoint: Transactions | None = None) -> APIRouter:
    """The routes, added to ``api`` (the app's own router: an included router is one more
    layer of matching on every request) or to a new router; ``endpoint`` answers
    ``POST /v1/transactions`` (one is made for these settings if not given)."""
    api = APIRouter() if api is None else api
    endpoint = Transactions(settings) if endpoint is None else endpoint

    async def post_transactions(request: Request, _token=Depends(bearer)) -> Response:
        """Validate each item with the record rules and publish it: valid ones to the
        transactions topic, rejected ones (with every reason) to the rejects topic.
        The answer lists a result per item. An item for another store than the
        token's refuses the whole request (403). If Kafka does not acknowledge
        every record the answer is 503 and nothing is confirmed: send the same
        request again; ids make that safe."""
        # Served by etl.api.transactions.FastPath before routing; this is the same endpoint.
        status, body, headers = await endpoint.answer(request.app.state, request.scope["headers"], request.receive)
        return Response(body, status_code=status, media_type="application/json",
                        headers={name.decode("latin-1"): value.decode("latin-1") for name, value in headers})

    api.add_api_route(
        PATH, post_transactions, methods=["POST"], response_model=TransactionsResult,
        tags=["transactions"], summary="Publish transactions; answered once Kafka acknowledged them",
        responses=error_responses(400, 401, 403, 413, 415, 422, 503),
        openapi_extra={"requestBody": transactions_body(settings.api_max_batch)},
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
