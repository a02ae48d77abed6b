"""Request bodies read within their limits, in bounded memory.

- :func:`receive_body`: a JSON body of at most ``limit`` bytes (``API_MAX_BODY_BYTES``).
- :func:`spool_upload`: a CSV upload written to a private directory on disk, at
  most ``limit`` bytes of file (``API_MAX_UPLOAD_BYTES``). The body is either the
  CSV itself (``text/csv``, file name from the ``filename`` parameter) or
  ``multipart/form-data`` whose first part with a file name (or named ``file``)
  is the CSV, file name from its ``Content-Disposition``; other parts are skipped.

Both refuse with 413 as soon as a ``Content-Length`` or the bytes received pass
the limit, without reading the rest. The file name a client gives is reduced to
its last component of ``[A-Za-z0-9._-]`` characters: it names the upload (and
gives its date, ``retail_DD_MM_YYYY.csv``), never a path on the server.
"""
from __future__ import annotations

import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from etl.api.errors import BadRequest, PayloadTooLarge, Unavailable, UnsupportedMedia, Unprocessable

CSV_TYPES = frozenset({"text/csv", "application/csv", "text/plain"})
DEFAULT_NAME = "upload.csv"
_MULTIPART_SLACK = 64 * 1024  # boundaries, part headers and small fields around the file
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
log = logging.getLogger("tillflow.api")


def declared_length(header: str | None) -> int | None:
    """A request's Content-Length header as a number (None when absent); 400 if it is not one."""
    if header is None:
        return None
    try:
        return int(header)
    except ValueError:
        raise BadRequest("Content-Length is not a number") from None


def _too_large(what: str, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"{what} is larger than {limit} bytes, the most accepted: send less at a time")


async def receive_body(receive, declared: int | None, limit: int) -> bytes:
    """The whole body from an ASGI ``receive``, or 413 once it passes ``limit`` bytes
    (at once if the declared length does)."""
    if declared is not None and declared > limit:
        raise _too_large("the body", limit)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("the client disconnected before the body was complete")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large("the body", limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def safe_name(name: str | None) -> str:
    """A client's file name as a plain file name: last component, safe characters, at most 120."""
    base = re.split(r"[\\/]", name or "")[-1]
    cleaned = _UNSAFE.sub("_", base).strip("._")[:120]
    return cleaned or DEFAULT_NAME


@dataclass
class Spooled:
    """An upload on disk: ``path`` (named after the client's file) inside a private directory."""

    path: Path
    name: str
    directory: Path

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


async def spool_upload(request: Request, directory: Path | None, limit: int, filename: str | None) -> Spooled:
    """Write the uploaded CSV file to disk; 413 beyond ``limit``, 415 for another content type."""
    content_type, params = parse_options_header(request.headers.get("content-type"))
    kind = content_type.decode("latin-1").lower()
    if kind == "multipart/form-data":
        boundary = params.get(b"boundary")
        if not boundary:
            raise BadRequest("multipart/form-data without a boundary parameter")
        return await _spool_multipart(request, directory, limit, boundary)
    if kind not in CSV_TYPES:
        raise UnsupportedMedia("send the CSV file as text/csv, or as multipart/form-data with a file part")
    declared = declared_length(request.headers.get("content-length"))
    if declared is not None and declared > limit:
        raise _too_large("the file", limit)
    spooled = _new(directory, safe_name(filename))
    size = 0
    complete = False
    try:
        with open(spooled.path, "wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large("the file", limit)
                out.write(chunk)
        complete = True
    except ClientDisconnect:
        raise BadRequest("the client disconnected before the file was complete") from None
    except OSError as exc:
        raise _no_room(exc) from exc
    finally:
        if not complete:
            spooled.remove()
    return spooled


def _new(directory: Path | None, name: str) -> Spooled:
    try:
        where = Path(tempfile.mkdtemp(prefix="tillflow-upload-", dir=directory))
    except OSError as exc:
        raise _no_room(exc) from exc
    return Spooled(where / name, name, where)


def _no_room(exc: OSError) -> Unavailable:
    log.error("cannot spool an upload: %s", exc)  # the path stays in the log, not in the answer
    return Unavailable("the server cannot store the upload right now: try again later", code="spool_unavailable")


class _FilePart:
    """Callbacks for python-multipart: the first part with a file name goes to disk."""

    def __init__(self, directory: Path | None, limit: int) -> None:
        self.directory = directory
        self.limit = limit
        self.spooled: Spooled | None = None
        self.out = None
        self.done = False
        self.size = 0
        self._field = b""
        self._value = b""
        self._disposition = b""
        self._writing = False

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._data, "on_part_end": self._end,
        }

    def _begin(self) -> None:
        self._disposition = b""
        self._writing = False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._field.lower() == b"content-disposition":
            self._disposition = self._value
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        filename = options.get(b"filename") or b""
        if self.done or self.spooled is not None or not (filename or options.get(b"name") == b"file"):
            return
        self.spooled = _new(self.directory, safe_name(filename.decode("utf-8", "replace")))
        self.out = open(self.spooled.path, "wb")  # noqa: SIM115 - closed in _end or by close()
        self._writing = True

    def _data(self, data: bytes, start: int, end: int) -> None:
        if not self._writing:
            return
        self.size += end - start
        if self.size > self.limit:
            raise _too_large("the file", self.limit)
        self.out.write(data[start:end])

    def _end(self) -> None:
        if self._writing:
            self.out.close()
            self._writing = False
            self.done = True

    def close(self) -> None:
        if self.out is not None and not self.out.closed:
            self.out.close()


async def _spool_multipart(request: Request, directory: Path | None, limit: int, boundary: bytes) -> Spooled:
    declared = declared_length(request.headers.get("content-length"))
    total_limit = limit + _MULTIPART_SLACK
    if declared is not None and declared > total_limit:
        raise _too_large("the file", limit)
    part = _FilePart(directory, limit)
    parser = MultipartParser(boundary, part.callbacks())
    total = 0
    complete = False
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > total_limit:
                raise _too_large("the file", limit)
            parser.write(chunk)
        parser.finalize()
        complete = part.done
    except FormParserError as exc:
        raise BadRequest(f"the multipart body cannot be read: {exc}") from None
    except ClientDisconnect:
        raise BadRequest("the client disconnected before the file was complete") from None
    except OSError as exc:
        raise _no_room(exc) from exc
    finally:
        part.close()
        if not complete and part.spooled is not None:
            part.spooled.remove()
    if not complete:
        raise Unprocessable("the multipart body has no complete file part: send the CSV as a part with a filename")
    return part.spooled
