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

from etl.database import Database
from tillflow.errors import InputError

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
        self._db = Database(database_url, max_connections=1, application="tillflow-etl")

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
        return bool(self._db.run("SELECT 1 FROM ingest.uploads WHERE sha256 = %s AND status = 'published' LIMIT 1",
                                 (sha256,), doing="cannot read ingest.uploads"))

    def _execute(self, query: str, params: tuple) -> None:
        self._db.run(query, params, doing="cannot record the upload")

    def close(self) -> None:
        self._db.close()
