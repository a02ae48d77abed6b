"""CSV uploads over HTTP: ``POST /v1/uploads`` and ``GET /v1/uploads/{upload_id}``.

An upload is exactly a ``tillflow load`` of the file: the same ``Loader``
(``etl.load``) reads it in chunks, publishes valid rows and rejects, waits for
Kafka's acknowledgement of all of them, records the upload in
``ingest.uploads`` (source ``upload``) and returns the same summary. The body
is first spooled to disk within ``API_MAX_UPLOAD_BYTES`` (413 beyond). The
rows' date is the ``date`` parameter, else the one in the file name
(``retail_DD_MM_YYYY.csv``); their store is the token's.

Uploads run one at a time per process, on a worker thread, through a
producer of their own, so that a file's acknowledgements are never mixed
with other traffic. A file that cannot be read at all (wrong header, no date)
is 422 with nothing published; Kafka failing midway is 503 and the upload is
recorded ``failed``: send the file again (rows already stored are skipped).
"""
from __future__ import annotations

import asyncio
import datetime
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from etl.api import metrics
from etl.api.auth import Principal
from etl.database import Database
from etl.api.errors import NotFound, Unavailable, Unprocessable
from etl.api.publish import AsyncPublisher, KafkaUnavailable
from etl.api.routes import principal
from etl.api.schemas import UploadRecord, UploadSummary, error_responses
from etl.api.spool import Spooled, spool_upload
from etl.api.transactions import unavailable
from etl.load import LoadSummary, Loader
from etl.producer import Publisher
from etl.sources.csv import date_from_filename
from etl.uploads import UploadLedger
from tillflow.config import Settings
from tillflow.errors import InputError, PublishError, SinkError

log = logging.getLogger("tillflow.api")

_UPLOAD_DELIVERY_TIMEOUT_MS = 60_000


class Uploader:
    """Loads uploaded files with the ``tillflow load`` machinery, one at a time."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tillflow-upload")
        self._publisher: Publisher | None = None
        self._ledger = UploadLedger(settings.database_url) if settings.database_url else None

    def _load(self, spooled: Spooled, date: datetime.date, store_id: str) -> LoadSummary:
        if self._publisher is None:
            self._publisher = Publisher(self._settings.kafka_bootstrap_servers, client_id="tillflow-api-upload",
                                        delivery_timeout_ms=_UPLOAD_DELIVERY_TIMEOUT_MS)
        loader = Loader(self._settings, self._publisher, self._ledger)
        try:
            return loader.load_csv(spooled.path, date=date, store=store_id, source="upload",
                                   display_name=spooled.name)
        except PublishError:
            # A fresh producer for the next upload: this one's state is not worth trusting.
            publisher, self._publisher = self._publisher, None
            publisher.close(timeout=0)
            raise

    async def load(self, spooled: Spooled, date: datetime.date, store_id: str) -> LoadSummary:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._load, spooled, date, store_id)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self._publisher is not None:
            self._publisher.close(timeout=5)
        if self._ledger is not None:
            self._ledger.close()


def _date_of(name: str, given: datetime.date | None) -> datetime.date:
    if given is not None:
        return given
    try:
        found = date_from_filename(name)
    except InputError as exc:
        raise Unprocessable(str(exc), code="no_date") from None
    if found is None:
        raise Unprocessable(f"{name}: no date for its rows: name the file retail_DD_MM_YYYY.csv or give the"
                            " date parameter (YYYY-MM-DD)", code="no_date")
    return found


_UPLOAD_BODY = {
    "required": True,
    "description": "The CSV file (header id,category,description,quantity,amount_excl_tax,amount_inc_tax):"
                   " as the body, or as the file part of a multipart form.",
    "content": {
        "text/csv": {"schema": {"type": "string"}},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "file": {"type": "string", "format": "binary"}}, "required": ["file"]}},
    },
}

_UPLOAD_COLUMNS = ("id::text, file_name, sha256, size_bytes, source, store_id, rows_read, rows_accepted,"
                   " rows_rejected, status, created_at, finished_at")


def router(settings: Settings, api: APIRouter | None = None) -> APIRouter:
    """The routes, added to ``api`` (the app's own router) or to a new router."""
    api = APIRouter() if api is None else api

    @api.post(
        "/v1/uploads", response_model=UploadSummary, status_code=201, tags=["uploads"],
        summary="Load a CSV file, as `tillflow load` does", openapi_extra={"requestBody": _UPLOAD_BODY},
        responses=error_responses(400, 401, 413, 415, 422, 503),
    )
    async def post_upload(
        request: Request,
        caller: Principal = Depends(principal),
        date: datetime.date | None = Query(None, description="the rows' date (YYYY-MM-DD), instead of the file name's"),
        filename: str | None = Query(None, max_length=255,
                                     description="the file's name when the body is the CSV itself"),
    ) -> JSONResponse:
        """Publish every row of the file (valid ones, and rejects with their reasons) and
        answer with the summary once Kafka acknowledged all of them. The upload is
        recorded in ingest.uploads; GET /v1/uploads/{upload_id} reads it back."""
        publisher: AsyncPublisher = request.app.state.publisher
        try:
            await publisher.available()  # fail fast while Kafka is known to be down
        except KafkaUnavailable as exc:
            raise unavailable() from exc
        spooled = await spool_upload(request, settings.api_spool_dir, settings.api_max_upload_bytes, filename)
        try:
            day = _date_of(spooled.name, date)
            summary = await request.app.state.uploader.load(spooled, day, caller.store_id)
        except InputError as exc:
            # The loader names the spooled path; the client knows its file by its name only.
            message = str(exc).replace(str(spooled.path), spooled.name).replace(str(spooled.directory), "")
            raise Unprocessable(message, code="unreadable_file") from None
        except SinkError as exc:
            log.warning("upload %s: %s", spooled.name, exc)
            raise Unavailable("the upload cannot be recorded now (database unavailable): send it again later",
                              code="database_unavailable") from exc
        except PublishError as exc:
            log.warning("upload %s: %s", spooled.name, exc)
            metrics.PUBLISH_FAILURES.inc()
            raise Unavailable("Kafka did not acknowledge every row, so the upload is recorded as failed: send the"
                              " file again later (rows already stored are skipped)", code="kafka_unavailable") from exc
        finally:
            spooled.remove()
        answer = summary.as_dict() | {"store_id": caller.store_id, "transaction_date": day.isoformat(),
                                      "status": "published"}
        return JSONResponse(answer, status_code=201, headers={"Location": f"/v1/uploads/{summary.upload_id}"})

    @api.get(
        "/v1/uploads/{upload_id}", response_model=UploadRecord, tags=["uploads"],
        summary="An upload's summary, as recorded in ingest.uploads", responses=error_responses(401, 404, 422, 503),
    )
    async def get_upload(upload_id: uuid.UUID, request: Request,
                         caller: Principal = Depends(principal)) -> JSONResponse:
        """Any load of this token's store (API upload, inbox file, `tillflow load`) by its id."""
        db: Database = request.app.state.db
        try:
            rows = await db.query(f"SELECT {_UPLOAD_COLUMNS} FROM ingest.uploads WHERE id = %s AND store_id = %s",
                                  (str(upload_id), caller.store_id))
        except SinkError as exc:
            raise Unavailable("uploads cannot be read now (database unavailable): try again later",
                              code="database_unavailable") from exc
        if not rows:
            raise NotFound(f"no upload {upload_id} for store {caller.store_id}")
        (id_, name, sha, size, source, store, read, accepted, rejected, status, created, finished), = rows
        return JSONResponse({
            "upload_id": id_, "file": name, "sha256": sha, "size_bytes": size, "source": source, "store_id": store,
            "rows_read": read, "rows_accepted": accepted, "rows_rejected": rejected, "status": status,
            "created_at": created.isoformat(), "finished_at": finished.isoformat() if finished else None,
        })

    return api
