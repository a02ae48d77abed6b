"""PostgreSQL sink: one batch of Kafka records, one database transaction.

Lifecycle (the order quix-streams documents for checkpoints): the worker adds a
batch, the sink writes it in one transaction and commits that transaction, and
only then does the worker commit the Kafka offsets. A crash anywhere before the
offset commit replays the batch, and replaying is a no-op:

* a transaction id already stored with the same content is a duplicate: counted,
  nothing written;
* the same id with different content keeps the stored version and records the
  conflict once (``ingest.conflicts`` is unique on the record's Kafka position);
* a reject is stored once (``ingest.rejects``, unique on its Kafka position);
* a record whose id another record stored, with the same content, is noted
  once in ``ingest.duplicates`` (unique on its Kafka position), so a file's
  control totals add up (``tillflow reconcile``); found at its own position,
  it is this record replayed, and nothing is noted.

The rollups (``sales.daily_*_totals``) are kept by a trigger on
``sales.transactions`` in the same transaction, from the rows the COPY really
inserted: whatever is retried or rolled back here is counted exactly once.

The fast path COPYs a batch of new rows straight into ``sales.transactions``:
no staging table, no ``ON CONFLICT``, and, while batches keep being new, no
lookup either: the primary key is the check. When it refuses the COPY (some id
is stored already: a replay, an overlapping file), the transaction rolls back
and the batch is written the careful way: its ids looked up in one indexed
query, then only the new rows COPYed; later batches stay careful until one has
no stored id. If another writer stored one of those ids in between (only
possible while a rebalance hands a partition over), the primary key refuses the
COPY again and the whole batch is simply tried again.

Errors::

    SinkError            PostgreSQL refused the batch for good (a bug or bad data)
     └── SinkUnavailable  PostgreSQL cannot be reached right now: retry later
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import NamedTuple

import psycopg2
import psycopg2.errors
import psycopg2.extras

from consumer.rows import COLUMNS as ROW_COLUMNS
from consumer.rows import NULL, TransactionRow, copy_text, plain_text
from tillflow import pg
from tillflow.errors import SinkError, first_line
from tillflow.messages import RejectMessage
from tillflow.record import Origin, Reason

log = logging.getLogger(__name__)

# A row's own columns (consumer.rows.TransactionRow), then what the sink adds.
_COLUMNS = (*ROW_COLUMNS, "tax_rate", "kafka_partition", "kafka_offset")
_COPY_SQL = f"COPY sales.transactions ({', '.join(_COLUMNS)}) FROM STDIN"
# The stored version as the same COPY text a row holds, to compare them as bytes,
# then the Kafka position it was stored from (a record found at its own position
# is a replay of itself, not a duplicate).
_LOOKUP_SQL = (
    "SELECT id::text, to_char(transaction_date, 'YYYY-MM-DD'), category, name, quantity::text,"
    " amount_excl_tax::text, amount_inc_tax::text, store_id, kafka_partition, kafka_offset"
    " FROM sales.transactions WHERE id = ANY(%s::uuid[])"
)
_CONFLICT_SQL = (
    "INSERT INTO ingest.conflicts (transaction_id, stored, incoming, source, source_ref, source_line,"
    " kafka_topic, kafka_partition, kafka_offset) VALUES %s ON CONFLICT DO NOTHING"
)
_DUPLICATE_SQL = (
    "INSERT INTO ingest.duplicates (transaction_id, source, source_ref, source_line,"
    " kafka_topic, kafka_partition, kafka_offset) VALUES %s ON CONFLICT DO NOTHING"
)
_REJECT_SQL = (
    "INSERT INTO ingest.rejects (transaction_id, raw, reasons, source, source_ref, source_line,"
    " kafka_topic, kafka_partition, kafka_offset) VALUES %s ON CONFLICT DO NOTHING"
)
# The batch's Kafka positions, in key order (replicas lock the rows in one order);
# a position only moves forward (postgres/migrations/0010_kafka_positions.sql).
_POSITIONS_SQL = (
    "INSERT INTO ingest.kafka_positions AS p (topic, partition, next_offset) VALUES %s"
    " ON CONFLICT (topic, partition) DO UPDATE SET next_offset = GREATEST(p.next_offset, EXCLUDED.next_offset),"
    " updated_at = now() WHERE p.next_offset < EXCLUDED.next_offset"
)
_MAX_ATTEMPTS_ON_RACE = 5
_COPY_CHUNK = 64 * 1024  # bytes handed to COPY at a time
_CONTENT_FIELDS = ROW_COLUMNS[1:8]


class SinkUnavailable(SinkError):
    """PostgreSQL cannot be reached or is shutting down; the batch can be retried."""


class Position(NamedTuple):
    """Where a record sits in Kafka (a tuple: built once per record on the hot path)."""

    topic: str
    partition: int
    offset: int


@dataclass(slots=True)
class Batch:
    """Decoded records of one poll cycle, with their Kafka positions.

    ``positions``: per (topic, partition), the offset after the batch's last
    record, stored with the batch (``ingest.kafka_positions``). Every record
    before it in that partition is in this batch or an earlier one.
    """

    transactions: list[tuple[TransactionRow, Position]] = field(default_factory=list)
    rejects: list[tuple[RejectMessage, Position]] = field(default_factory=list)
    positions: dict[tuple[str, int], int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.transactions) + len(self.rejects)


@dataclass(slots=True)
class WriteResult:
    inserted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    rejects: int = 0

    def add(self, other: WriteResult) -> None:
        self.inserted += other.inserted
        self.duplicates += other.duplicates
        self.conflicts += other.conflicts
        self.rejects += other.rejects


def _content(key: bytes, content: Sequence[bytes]) -> dict[str, object]:
    """A version of a transaction as the JSON ``ingest.conflicts`` keeps."""
    doc: dict[str, object] = {"id": plain_text(key)}
    for name, value in zip(_CONTENT_FIELDS, content):
        doc[name] = plain_text(value)
    doc["quantity"] = int(doc["quantity"])
    return doc


class _Stored(NamedTuple):
    """A looked-up row: its content as COPY text (comparable with TransactionRow.content()) and where it came from."""

    content: tuple[bytes, ...]
    partition: int | None
    offset: int | None


def _stored(row: tuple) -> _Stored:
    return _Stored(tuple(copy_text(value) for value in row[1:8]), row[8], row[9])


def _copy_lines(rows: Sequence[tuple[TransactionRow, Position]], tax_rate: bytes) -> Iterator[bytes]:
    """COPY text lines: the row's own columns, then the tax rate and the Kafka position."""
    tail = b"\t" + tax_rate + b"\t%d\t%d\n"
    join = b"\t".join
    for row, pos in rows:
        yield join(row) + tail % (pos.partition, pos.offset)


class _StreamedText:
    """A read()-able view of an iterator of lines, so COPY streams while lines are built.

    psycopg2 sends each chunk as soon as it is read: the server parses and
    indexes one chunk while this process formats the next, instead of the
    whole batch being formatted first and sent after.
    """

    def __init__(self, lines: Iterator[bytes]) -> None:
        self._lines = lines

    def read(self, size: int = -1) -> bytes:
        parts: list[bytes] = []
        length = 0
        for line in self._lines:
            parts.append(line)
            length += len(line)
            if 0 < size <= length:
                break
        return b"".join(parts)


class PostgresSink:
    """Writes batches to PostgreSQL as the writer role; reconnects after an outage."""

    def __init__(self, database_url: str, tax_rate: Decimal) -> None:
        self._url = database_url
        self._tax_rate = str(tax_rate).encode("ascii")
        self._conn: psycopg2.extensions.connection | None = None
        # True while the last batch found none of its ids stored: the next one is
        # COPYed without the lookup, and looked up only if the primary key refuses it.
        self._optimistic = True

    # -- connection ----------------------------------------------------------
    def _connection(self):
        if self._conn is None or self._conn.closed:
            self._conn = pg.connect(self._url, "tillflow-consumer", error=SinkUnavailable, timeout=5)
        return self._conn

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None

    # -- writing ---------------------------------------------------------------
    def write(self, batch: Batch) -> WriteResult:
        """Store the batch in one transaction and commit it; idempotent on replay.

        Fresh data (the usual case: the last batch had none of its ids stored)
        is COPYed straight away, without looking its ids up: if any of them is
        stored after all (a replay, an overlapping file), the primary key refuses
        the COPY, the transaction rolls back, and the batch is written again the
        careful way (look the ids up, COPY only the new ones), as are the batches
        after it until one has no stored id again.
        """
        attempt = 0
        while attempt < _MAX_ATTEMPTS_ON_RACE:
            optimistic = self._optimistic
            conn = self._connection()
            try:
                with conn:  # commits on success, rolls back on any exception
                    with conn.cursor() as cur:
                        result = WriteResult()
                        self._write_transactions(cur, batch.transactions, result, lookup=not optimistic)
                        self._write_rejects(cur, batch.rejects, result)
                        _write_positions(cur, batch.positions)
                return result
            except psycopg2.errors.UniqueViolation as exc:
                if optimistic:
                    self._optimistic = False  # some ids are stored already: look them up
                    continue
                # Another consumer stored one of these ids after our lookup (a
                # partition changing hands): look again and write what is left.
                attempt += 1
                log.info("batch raced another writer (attempt %d): %s", attempt, first_line(exc))
                continue
            except psycopg2.extensions.TransactionRollbackError as exc:
                # A deadlock or serialization failure rolled the batch back whole
                # (rows and rollups): nothing is half-written, so try it again.
                attempt += 1
                log.warning("batch rolled back by PostgreSQL (attempt %d): %s", attempt, first_line(exc))
                continue
            except pg.UNAVAILABLE as exc:
                self.close()
                raise SinkUnavailable(f"PostgreSQL is unavailable: {first_line(exc)}") from exc
            except psycopg2.Error as exc:
                raise SinkError(f"PostgreSQL refused the batch: {first_line(exc)}") from exc
        raise SinkError(f"batch kept racing another writer after {_MAX_ATTEMPTS_ON_RACE} attempts")

    def _write_transactions(self, cur, items: Sequence[tuple[TransactionRow, Position]], result: WriteResult,
                            *, lookup: bool = True) -> None:
        if not items:
            return
        stored: dict[bytes, _Stored] = {}
        if lookup:
            cur.execute(_LOOKUP_SQL, (list({row.id.decode("ascii") for row, _ in items}),))
            stored = {found[0].encode("ascii"): _stored(found) for found in cur.fetchall()}
            self._optimistic = not stored
        fresh: dict[bytes, TransactionRow] = {}  # first version of each new id in this batch
        rows: list[tuple[TransactionRow, Position]] = []
        conflicts: list[tuple] = []
        duplicates: list[tuple] = []
        for item in items:
            row, pos = item
            key = row.id
            if key in stored:
                found = stored[key]
                if found.content != row.content():
                    conflicts.append(self._conflict(found.content, *item))
                    continue
                result.duplicates += 1
                if (found.partition, found.offset) != (pos.partition, pos.offset):
                    duplicates.append(_duplicate(row, pos))  # else: this very record, replayed
            elif key in fresh:
                if fresh[key].content() == row.content():
                    result.duplicates += 1
                    duplicates.append(_duplicate(row, pos))
                else:
                    conflicts.append(self._conflict(fresh[key].content(), *item))
            else:
                fresh[key] = row
                rows.append(item)
        if rows:
            cur.copy_expert(_COPY_SQL, _StreamedText(_copy_lines(rows, self._tax_rate)), size=_COPY_CHUNK)
            result.inserted += len(rows)
        if conflicts:
            psycopg2.extras.execute_values(cur, _CONFLICT_SQL, conflicts, page_size=500)
            result.conflicts += cur.rowcount if cur.rowcount >= 0 else len(conflicts)
        if duplicates:
            psycopg2.extras.execute_values(cur, _DUPLICATE_SQL, duplicates, page_size=500)

    @staticmethod
    def _conflict(stored: Sequence[bytes], row: TransactionRow, pos: Position) -> tuple:
        return (
            plain_text(row.id), json.dumps(_content(row.id, stored)), json.dumps(_content(row.id, row.content())),
            plain_text(row.source), plain_text(row.source_ref), _line(row),
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


class IsolatingSink(PostgresSink):
    """A sink that survives a poison record.

    When PostgreSQL refuses a batch for a reason other than being unavailable
    (a record the validator let through but a CHECK refuses, a number too large
    for its column...), the batch is written again one record at a time; a
    record refused on its own is kept as a reject, with the server's reason,
    at its own Kafka position. The partition moves on; nothing is dropped.
    """

    def write(self, batch: Batch) -> WriteResult:
        try:
            return super().write(batch)
        except SinkUnavailable:
            raise
        except SinkError as exc:
            log.error("batch of %d refused (%s): writing its records one by one", len(batch), exc)
        total = WriteResult()
        for row, pos in batch.transactions:
            try:
                result = super().write(Batch(transactions=[(row, pos)]))
            except SinkUnavailable:
                raise
            except SinkError as exc:
                result = super().write(Batch(rejects=[(_refused(row, pos, exc), pos)]))
            total.add(result)
        # The positions go with the last write: were this process to die before
        # it, they stay where the last whole batch left them, and the records
        # above are replayed rather than skipped by a restore.
        total.add(super().write(Batch(rejects=batch.rejects, positions=batch.positions)))
        return total


def _write_positions(cur, positions: dict[tuple[str, int], int]) -> None:
    if positions:
        psycopg2.extras.execute_values(cur, _POSITIONS_SQL, sorted((t, p, o) for (t, p), o in positions.items()))


def _duplicate(row: TransactionRow, pos: Position) -> tuple:
    """An ``ingest.duplicates`` row: which file (and line) sent a stored transaction again."""
    return (plain_text(row.id), plain_text(row.source), plain_text(row.source_ref), _line(row),
            pos.topic, pos.partition, pos.offset)


def _line(row: TransactionRow) -> int | None:
    return None if row.source_line == NULL else int(row.source_line)


def _refused(row: TransactionRow, pos: Position, exc: SinkError) -> RejectMessage:
    where = f"{pos.topic}[{pos.partition}] offset {pos.offset}"
    content = {name: plain_text(value) for name, value in zip(ROW_COLUMNS[:8], row)}
    return RejectMessage(
        id=content["id"], raw=content,
        reasons=(Reason("row", "database_refused", f"PostgreSQL refused the record at {where}: {exc}"),),
        origin=Origin(plain_text(row.source) or "kafka", plain_text(row.source_ref), _line(row)),
    )
