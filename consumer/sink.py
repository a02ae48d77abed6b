"""PostgreSQL sink: one batch of Kafka records, one database transaction.

Lifecycle (the order quix-streams documents for checkpoints): the worker adds a
batch, the sink writes it in one transaction and commits that transaction, and
only then does the worker commit the Kafka offsets. A crash anywhere before the
offset commit replays the batch, and replaying is a no-op:

* a transaction id already stored with the same content is a duplicate: counted,
  nothing written;
* the same id with different content keeps the stored version and records the
  conflict once (``ingest.conflicts`` is unique on the record's Kafka position);
* a reject is stored once (``ingest.rejects``, unique on its Kafka position).

The fast path looks the batch's ids up in one indexed query, then COPYs only
the new rows straight into ``sales.transactions``: no staging table, no
``ON CONFLICT`` on the hot path. If another writer stored one of those ids in
between (only possible while a rebalance hands a partition over), the primary
key refuses the COPY and the whole batch is simply tried again.

Errors::

    SinkError            PostgreSQL refused the batch for good (a bug or bad data)
     └── SinkUnavailable  PostgreSQL cannot be reached right now: retry later
"""
from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import psycopg2
import psycopg2.errors
import psycopg2.extras

from tillflow.errors import SinkError
from tillflow.messages import RejectMessage, TransactionMessage
from tillflow.record import Transaction

log = logging.getLogger(__name__)

_COLUMNS = (
    "id", "transaction_date", "category", "name", "quantity", "amount_excl_tax", "amount_inc_tax",
    "tax_rate", "store_id", "source", "source_ref", "source_line", "kafka_partition", "kafka_offset",
)
_COPY_SQL = f"COPY sales.transactions ({', '.join(_COLUMNS)}) FROM STDIN"
_LOOKUP_SQL = (
    "SELECT id::text, transaction_date, category, name, quantity, amount_excl_tax, amount_inc_tax, store_id"
    " FROM sales.transactions WHERE id = ANY(%s::uuid[])"
)
_CONFLICT_SQL = (
    "INSERT INTO ingest.conflicts (transaction_id, stored, incoming, source, source_ref, source_line,"
    " kafka_topic, kafka_partition, kafka_offset) VALUES %s ON CONFLICT DO NOTHING"
)
_REJECT_SQL = (
    "INSERT INTO ingest.rejects (transaction_id, raw, reasons, source, source_ref, source_line,"
    " kafka_topic, kafka_partition, kafka_offset) VALUES %s ON CONFLICT DO NOTHING"
)
# COPY text format: backslash, tab, newline and carriage return must be escaped.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_MAX_ATTEMPTS_ON_RACE = 5


class SinkUnavailable(SinkError):
    """PostgreSQL cannot be reached or is shutting down; the batch can be retried."""


@dataclass(frozen=True, slots=True)
class Position:
    topic: str
    partition: int
    offset: int


@dataclass(slots=True)
class Batch:
    """Decoded records of one poll cycle, with their Kafka positions."""

    transactions: list[tuple[TransactionMessage, Position]] = field(default_factory=list)
    rejects: list[tuple[RejectMessage, Position]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.transactions) + len(self.rejects)


@dataclass(slots=True)
class WriteResult:
    inserted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    rejects: int = 0


def _content(tx: Transaction) -> dict[str, object]:
    return {
        "id": str(tx.id), "transaction_date": tx.transaction_date.isoformat(), "category": tx.category,
        "name": tx.name, "quantity": tx.quantity, "amount_excl_tax": str(tx.amount_excl_tax),
        "amount_inc_tax": str(tx.amount_inc_tax), "store_id": tx.store_id,
    }


def _stored_content(row: tuple) -> dict[str, object]:
    id_, date, category, name, quantity, excl, inc, store = row
    return {
        "id": id_, "transaction_date": date.isoformat(), "category": category, "name": name,
        "quantity": quantity, "amount_excl_tax": str(excl), "amount_inc_tax": str(inc), "store_id": store,
    }


def _copy_line(tx: Transaction, tax_rate: str, msg: TransactionMessage, pos: Position) -> str:
    origin = msg.origin
    return "\t".join((
        str(tx.id), tx.transaction_date.isoformat(), tx.category, tx.name.translate(_COPY_ESCAPES),
        str(tx.quantity), str(tx.amount_excl_tax), str(tx.amount_inc_tax), tax_rate,
        tx.store_id.translate(_COPY_ESCAPES),
        origin.source.translate(_COPY_ESCAPES) if origin and origin.source else "\\N",
        origin.ref.translate(_COPY_ESCAPES) if origin and origin.ref else "\\N",
        str(origin.line) if origin and origin.line else "\\N",
        str(pos.partition), str(pos.offset),
    ))


class PostgresSink:
    """Writes batches to PostgreSQL as the writer role; reconnects after an outage."""

    def __init__(self, database_url: str, tax_rate: Decimal) -> None:
        self._url = database_url
        self._tax_rate = str(tax_rate)
        self._conn: psycopg2.extensions.connection | None = None

    # -- connection ----------------------------------------------------------
    def _connection(self):
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg2.connect(self._url, connect_timeout=5, application_name="tillflow-consumer")
            except psycopg2.OperationalError as exc:
                raise SinkUnavailable(f"cannot connect to PostgreSQL: {_first_line(exc)}") from exc
        return self._conn

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None

    def check(self) -> None:
        """Raise SinkUnavailable unless PostgreSQL answers a trivial query."""
        try:
            conn = self._connection()
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
            conn.rollback()
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            self.close()
            raise SinkUnavailable(f"PostgreSQL is unavailable: {_first_line(exc)}") from exc

    # -- writing ---------------------------------------------------------------
    def write(self, batch: Batch) -> WriteResult:
        """Store the batch in one transaction and commit it; idempotent on replay."""
        for attempt in range(1, _MAX_ATTEMPTS_ON_RACE + 1):
            conn = self._connection()
            try:
                with conn:  # commits on success, rolls back on any exception
                    with conn.cursor() as cur:
                        result = WriteResult()
                        self._write_transactions(cur, batch.transactions, result)
                        self._write_rejects(cur, batch.rejects, result)
                return result
            except psycopg2.errors.UniqueViolation as exc:
                # Another consumer stored one of these ids after our lookup (a
                # partition changing hands): look again and write what is left.
                log.info("batch raced another writer (attempt %d): %s", attempt, _first_line(exc))
                continue
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                self.close()
                raise SinkUnavailable(f"PostgreSQL is unavailable: {_first_line(exc)}") from exc
            except psycopg2.Error as exc:
                raise SinkError(f"PostgreSQL refused the batch: {_first_line(exc)}") from exc
        raise SinkError(f"batch kept racing another writer after {_MAX_ATTEMPTS_ON_RACE} attempts")

    def _write_transactions(self, cur, items: Sequence[tuple[TransactionMessage, Position]], result: WriteResult) -> None:
        if not items:
            return
        cur.execute(_LOOKUP_SQL, (list({str(m.transaction.id) for m, _ in items}),))
        stored: dict[str, tuple] = {row[0]: row for row in cur.fetchall()}
        fresh: dict[str, Transaction] = {}  # first version of each new id in this batch
        lines: list[str] = []
        conflicts: list[tuple] = []
        for msg, pos in items:
            tx = msg.transaction
            key = str(tx.id)
            if key in stored:
                row = stored[key]
                if row[1:] == tx.content_key():
                    result.duplicates += 1
                else:
                    conflicts.append(self._conflict(_stored_content(row), tx, msg, pos))
            elif key in fresh:
                if fresh[key].content_key() == tx.content_key():
                    result.duplicates += 1
                else:
                    conflicts.append(self._conflict(_content(fresh[key]), tx, msg, pos))
            else:
                fresh[key] = tx
                lines.append(_copy_line(tx, self._tax_rate, msg, pos))
        if lines:
            cur.copy_expert(_COPY_SQL, io.StringIO("\n".join(lines) + "\n"))
            result.inserted += len(lines)
        if conflicts:
            psycopg2.extras.execute_values(cur, _CONFLICT_SQL, conflicts, page_size=500)
            result.conflicts += cur.rowcount if cur.rowcount >= 0 else len(conflicts)

    @staticmethod
    def _conflict(stored: dict, tx: Transaction, msg: TransactionMessage, pos: Position) -> tuple:
        origin = msg.origin
        return (
            str(tx.id), json.dumps(stored), json.dumps(_content(tx)),
            origin.source if origin else None, origin.ref if origin else None, origin.line if origin else None,
            pos.topic, pos.partition, pos.offset,
        )

    def _write_rejects(self, cur, items: Sequence[tuple[RejectMessage, Position]], result: WriteResult) -> None:
        if not items:
            return
        rows = []
        for msg, pos in items:
            origin = msg.origin
            reasons = [{"field": r.field, "code": r.code, "message": r.message} for r in msg.reasons]
            rows.append((
                msg.id, json.dumps(msg.raw), json.dumps(reasons),
                origin.source if origin else None, origin.ref if origin else None, origin.line if origin else None,
                pos.topic, pos.partition, pos.offset,
            ))
        psycopg2.extras.execute_values(cur, _REJECT_SQL, rows, page_size=500)
        result.rejects += len(rows)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
