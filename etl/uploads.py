"""The upload ledger: ``ingest.uploads``, one row per load of a file.

A row is written before the first record is published (status ``started``) and
finished with the counts once Kafka acknowledged everything (``published``) or
when the load failed (``failed``). The watcher also asks it whether a file with
the same checksum was already published, so a restart never publishes a file
twice.
"""
from __future__ import annotations

import hashlib
import uuid
from decimal import Decimal
from pathlib import Path

import psycopg2

from tillflow.errors import InputError, SinkError, first_line

_CHUNK = 1024 * 1024


def file_digest(path: Path) -> tuple[str, int]:
    """sha256 hex digest and size of a file, read in bounded memory."""
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise InputError(f"{path}: cannot read the file ({exc.strerror})") from exc
    return digest.hexdigest(), size


class UploadLedger:
    """Records loads in ``ingest.uploads`` as the writer role."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._conn = None

    def _cursor(self):
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg2.connect(self._url, connect_timeout=10, application_name="tillflow-etl")
            except psycopg2.OperationalError as exc:
                raise SinkError(f"cannot record the upload: PostgreSQL is unreachable ({first_line(exc)})") from exc
            self._conn.autocommit = True
        return self._conn.cursor()

    def start(self, *, file_name: str, sha256: str, size: int, source: str, store_id: str,
              upload_id: uuid.UUID | None = None) -> uuid.UUID:
        upload_id = upload_id or uuid.uuid4()
        self._execute(
            "INSERT INTO ingest.uploads (id, file_name, sha256, size_bytes, source, store_id)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (str(upload_id), file_name, sha256, size, source, store_id),
        )
        return upload_id

    def finish(self, upload_id: uuid.UUID, *, read: int, accepted: int, rejected: int, ok: bool,
               amounts: tuple[Decimal, Decimal] | None = None) -> None:
        """Close the upload with its counts and, for ``tillflow reconcile``, the sums of
        ``amount_excl_tax`` and ``amount_inc_tax`` over the rows published as transactions."""
        excl, inc = amounts if amounts is not None else (None, None)
        self._execute(
            "UPDATE ingest.uploads SET rows_read = %s, rows_accepted = %s, rows_rejected = %s,"
            " amount_excl_tax_accepted = %s, amount_inc_tax_accepted = %s,"
            " status = %s, finished_at = now() WHERE id = %s",
            (read, accepted, rejected, excl, inc, "published" if ok else "failed", str(upload_id)),
        )

    def published(self, sha256: str) -> bool:
        """True if a file with this checksum was already published completely."""
        with self._cursor() as cur:
            try:
                cur.execute("SELECT 1 FROM ingest.uploads WHERE sha256 = %s AND status = 'published' LIMIT 1",
                            (sha256,))
                return cur.fetchone() is not None
            except psycopg2.Error as exc:
                raise SinkError(f"cannot read ingest.uploads: {first_line(exc)}") from exc

    def _execute(self, query: str, params: tuple) -> None:
        try:
            with self._cursor() as cur:
                cur.execute(query, params)
        except psycopg2.OperationalError as exc:
            self.close()
            raise SinkError(f"cannot record the upload: {first_line(exc)}") from exc
        except psycopg2.Error as exc:
            raise SinkError(f"cannot record the upload: {first_line(exc)}") from exc

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None
