"""The FastAPI application: ``create_app(settings)``.

The lifespan opens what the routes share and closes it in reverse order on
shutdown: the PostgreSQL pool (tokens, uploads), the token checker, the Kafka
publisher (whose close waits for what it still holds) and the upload loader.
Neither Kafka nor PostgreSQL has to be up for the app to start: ``/readyz``
says when Kafka can take writes, and writes are answered 503 until it can.
"""
from __future__ import annotations

import gc
import logging
import time
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI

from etl.api import errors, metrics, routes, stream, upload
from etl.api.auth import Authenticator
from etl.database import Database
from etl.api.publish import AsyncPublisher
from etl.api.transactions import PATH, Transactions
from tillflow.config import Settings

log = logging.getLogger("tillflow.api")
GC_THRESHOLDS = (10_000, 10, 10)

DESCRIPTION = """\
Transactions into Tillflow: validated with the record rules, published to Kafka,
stored exactly once in PostgreSQL. Every write is answered only after Kafka
acknowledged it (acks=all, two in-sync replicas).

* Authenticate with `Authorization: Bearer <token>` (`tillflow token create --store ID`).
  A token writes one store's transactions only.
* 503 with `Retry-After` means nothing in the request is confirmed: send it again.
  Transaction ids make any retry safe.
* The WebSocket `/v1/stream` takes one transaction per frame and answers each with
  `ack`, `reject` or `error` (see the `etl.api.stream` docstring for the protocol).
"""


def _version() -> str:
    try:
        return version("tillflow")
    except PackageNotFoundError:
        return "0"


class _Metrics:
    """ASGI middleware counting HTTP requests by route template, method and status."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = [500]

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "other")
            metrics.request_answered(route, scope["method"], status[0], time.perf_counter() - started)


class TillflowAPI(FastAPI):
    """The FastAPI app, with ``POST /v1/transactions`` taken before any of its layers.

    Everything else goes through FastAPI as usual. The hot path is answered by
    :class:`etl.api.transactions.Transactions`, which counts its own request
    metrics and turns its own failures into the one error shape; see that
    module for why."""

    fast_path: Transactions | None = None
    # The middlewares whose work the fast path does itself (it counts its own request
    # metrics). Any other would silently skip the busiest route: building the stack refuses it.
    fast_path_covers: frozenset[type] = frozenset()

    def build_middleware_stack(self):
        skipped = [m.cls.__name__ for m in self.user_middleware if m.cls not in self.fast_path_covers]
        if self.fast_path is not None and skipped:
            raise RuntimeError(
                f"middleware {', '.join(skipped)} would never see POST {PATH}, which is answered before any "
                "middleware (etl.api.transactions): have the fast path do its work too, then list it in "
                "TillflowAPI.fast_path_covers")
        return super().build_middleware_stack()

    async def __call__(self, scope, receive, send) -> None:
        if self.fast_path is not None and scope["type"] == "http" and scope["method"] == "POST" \
                and scope["path"] == PATH:
            return await self.fast_path(self.state, scope, receive, send)
        await super().__call__(scope, receive, send)


def create_app(settings: Settings) -> TillflowAPI:
    """The API for these settings (DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS required)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        db = Database(settings.database_url)
        app.state.db = db
        app.state.auth = Authenticator(db, settings.api_auth_cache_seconds)
        app.state.publisher = AsyncPublisher(settings)
        app.state.uploader = upload.Uploader(settings)
        await app.state.publisher.start()
        # What exists now (routes, schemas, the OpenAPI models, the clients) lives as long as
        # the process: frozen, a full garbage collection no longer walks it, with the event
        # loop stopped meanwhile.
        gc.collect()
        gc.freeze()
        # Collections stop the event loop, and what a request leaves behind is freed by reference
        # counting: at the default threshold young collections ran many times a second under
        # load, and full ones every few seconds. At 10,000 they are rare (bench/README.md,
        # "Garbage collection", has the measurements).
        gc.set_threshold(*GC_THRESHOLDS)
        log.info("serving on http://%s:%d (store tokens in api.tokens, topics %s and %s)",
                 settings.api_host, settings.api_port, settings.topic_transactions, settings.topic_rejects)
        try:
            yield
        finally:
            await app.state.auth.close()
            await app.state.publisher.close()
            app.state.uploader.close()
            db.close()

    # FastAPI's native OpenTelemetry is off: the API exports Prometheus metrics (/metrics), and
    # asking the OpenTelemetry providers on every request costs more than the rest of the routing.
    app = TillflowAPI(title="Tillflow API", version=_version(), description=DESCRIPTION, lifespan=lifespan,
                  telemetry={"tracing": False, "metrics": False, "logs": False})
    errors.install(app)
    # On the app's own router, not included: every included router is one more layer of route
    # matching on every request.
    app.fast_path = Transactions(settings)
    routes.router(settings, app.router, app.fast_path)
    upload.router(settings, app.router)
    stream.router(settings, app.router)
    app.add_middleware(_Metrics)
    app.fast_path_covers = frozenset({_Metrics})
    return app
