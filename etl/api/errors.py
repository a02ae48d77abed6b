"""The API's error answers: one JSON shape for every status that is not 2xx.

    {"error": {"code": "payload_too_large", "message": "the body is 2000000 bytes: at most 1048576 are accepted"}}

The message says what was wrong and what to do; it never carries a token, a
stack trace or a server path. Errors of the layers underneath (FastAPI's
request validation, Starlette's 404 and 405, an unexpected exception) are
translated here, at one boundary.

    ApiError (TillflowError)      an answer with a status, a stable code and a message
     ├── BadRequest          400  the body is not UTF-8 JSON
     ├── Unauthorized        401  no token or an invalid one (never says which part)
     ├── Forbidden           403  an item for another store than the token's
     ├── NotFound            404
     ├── PayloadTooLarge     413  body, batch, upload or frame beyond its limit
     ├── UnsupportedMedia    415  a Content-Type the route does not take
     ├── Unprocessable       422  JSON of the wrong shape, a CSV file that cannot be read
     └── Unavailable         503  Kafka or PostgreSQL did not answer: Retry-After
"""
from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from tillflow.errors import TillflowError

log = logging.getLogger("tillflow.api")

RETRY_AFTER_SECONDS = 5


class ApiError(TillflowError):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def response(self) -> Response:
        return error_response(self.status, self.code, self.message, self.headers)


class BadRequest(ApiError):
    status, code = 400, "bad_request"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"

    def __init__(self) -> None:
        # One message for every cause: a caller learns nothing about which part was wrong.
        super().__init__("a valid bearer token is required: send Authorization: Bearer <token>",
                         headers={"WWW-Authenticate": 'Bearer realm="tillflow"'})


class Forbidden(ApiError):
    status, code = 403, "forbidden_store"


class NotFound(ApiError):
    status, code = 404, "not_found"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class UnsupportedMedia(ApiError):
    status, code = 415, "unsupported_media_type"


class Unprocessable(ApiError):
    status, code = 422, "unprocessable"


class Unavailable(ApiError):
    status, code = 503, "unavailable"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def error_body(code: str, message: str) -> bytes:
    """The JSON body of an error answer."""
    return json.dumps({"error": {"code": code, "message": message}}, ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(code, message), status_code=status, headers=headers, media_type="application/json")


_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type",
                 422: "unprocessable"}


async def _api_error(_request: Request, exc: ApiError) -> Response:
    return exc.response()


async def _http_error(_request: Request, exc: StarletteHTTPException) -> Response:
    code = _STATUS_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message, getattr(exc, "headers", None))


async def _validation_error(_request: Request, exc: RequestValidationError) -> Response:
    problems = []
    for error in exc.errors()[:5]:
        where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body",))
        problems.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid")))
    return error_response(422, "unprocessable", "; ".join(problems) or "the request is not valid")


UNEXPECTED = "the server failed to answer this request; it has been logged"


def log_unexpected(method: str, path: str, exc: BaseException) -> None:
    """An exception no route expected, logged with its traceback; the caller gets no detail of it."""
    log.error("unexpected error on %s %s", method, path, exc_info=exc)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log_unexpected(request.method, request.url.path, exc)
    return error_response(500, "internal_error", UNEXPECTED)


def install(app: FastAPI) -> None:
    """Route every error through the one JSON shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
