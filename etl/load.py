"""Loading files into Kafka: ``tillflow load`` and ``tillflow migrate-sqlite``.

A load reads its source in chunks (bounded memory whatever the size), publishes
valid records to the transactions topic and rejects, with every reason, to the
rejects topic, waits until Kafka acknowledged all of them, and records the
upload (name, sha256, counts) in ``ingest.uploads``. A file that cannot be read
at all (wrong header, unreadable, no date) is refused before anything is
published.
"""
from __future__ import annotations

import datetime
import logging
import sys
import time
from collections import Counter
from decimal import Decimal
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from etl import metrics
from etl.producer import Publisher
from etl.sources.csv import date_from_filename, read_csv
from etl.uploads import UploadLedger, file_digest
from tillflow.config import Settings
from tillflow.errors import InputError, TillflowError
from tillflow.messages import encode_reject, key_for, transaction_record
from tillflow.record import Rejected, Transaction
from tillflow.runtime import bulk_mode

log = logging.getLogger(__name__)

PROGRESS_EVERY = 100_000
FIRST_REASONS = 5


@dataclass
class LoadSummary:
    """What one load did; ``render()`` is the line ``tillflow load`` prints."""

    name: str
    read: int = 0
    accepted: int = 0
    rejected: int = 0
    sha256: str = ""
    upload_id: str | None = None
    first_reasons: list[str] = field(default_factory=list)
    reason_counts: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    # Control totals of the rows published as transactions (tillflow reconcile).
    amount_excl_tax: Decimal = Decimal("0.00")
    amount_inc_tax: Decimal = Decimal("0.00")

    def render(self) -> str:
        line = f"{self.name}: {self.read} rows read, {self.accepted} accepted, {self.rejected} rejected"
        if self.first_reasons:
            line += "\n" + "\n".join(f"  rejected {r}" for r in self.first_reasons)
            if self.rejected > len(self.first_reasons):
                line += f"\n  ... and {self.rejected - len(self.first_reasons)} more (see ingest.rejects)"
        return line

    def as_dict(self) -> dict:
        return {
            "upload_id": self.upload_id, "file": self.name, "sha256": self.sha256, "rows_read": self.read,
            "rows_accepted": self.accepted, "rows_rejected": self.rejected,
            "first_reasons": self.first_reasons, "reasons": dict(self.reason_counts),
        }


class Loader:
    """Publishes sources through one ``Publisher`` and records them in one ``UploadLedger``."""

    def __init__(self, settings: Settings, publisher: Publisher, ledger: UploadLedger | None,
                 progress: TextIO | None = None) -> None:
        self.settings = settings
        self.publisher = publisher
        self.ledger = ledger
        self.progress = progress

    def load_csv(self, path: Path, *, date: datetime.date | None = None, store: str | None = None,
                 source: str = "csv", display_name: str | None = None,
                 digest: tuple[str, int] | None = None) -> LoadSummary:
        """Publish one CSV file; ``digest`` is its (sha256, size) when the caller already read it."""
        path = Path(path)
        name = display_name or path.name
        if date is None:
            date = date_from_filename(path)
            if date is None:
                raise InputError(
                    f"{name}: no date in the file name (expected retail_DD_MM_YYYY.csv); give one with --date YYYY-MM-DD"
                )
        if not path.is_file():
            raise InputError(f"{path}: not a readable file")
        store = store or self.settings.store_id
        chunks = read_csv(path, tax_rate=self.settings.tax_rate, default_date=date, store_id=store, source=source)
        # Pull the first chunk before recording anything: a wrong header or an
        # unreadable file fails here, with nothing published.
        first, chunks = _peek(chunks)
        return self._publish(name, path, source, store, first, chunks, digest)

    def load_sqlite(self, path: Path, *, store: str | None = None) -> LoadSummary:
        from etl.sources.sqlite import read_sqlite

        path = Path(path)
        store = store or self.settings.store_id
        chunks = read_sqlite(path, tax_rate=self.settings.tax_rate, store_id=store)
        first, chunks = _peek(chunks)
        return self._publish(path.name, path, "sqlite", store, first, chunks)

    def _publish(self, name: str, path: Path, source: str, store: str, first, chunks,
                 digest: tuple[str, int] | None = None) -> LoadSummary:
        started = time.monotonic()
        summary = LoadSummary(name)
        summary.sha256, size = digest or file_digest(path)
        upload_id = None
        if self.ledger is not None:
            upload_id = self.ledger.start(file_name=name, sha256=summary.sha256, size=size, source=source,
                                          store_id=store)
            summary.upload_id = str(upload_id)
        ok = False
        try:
            next_progress = PROGRESS_EVERY
            for chunk in _chain(first, chunks):
                self._send_chunk(chunk, summary, source)
                if self.progress is not None and summary.read >= next_progress:
                    print(f"{name}: {summary.read} rows read...", file=self.progress, flush=True)
                    next_progress += PROGRESS_EVERY
            self.publisher.flush()
            ok = True
        finally:
            if self.ledger is not None and upload_id is not None:
                try:
                    self.ledger.finish(upload_id, read=summary.read, accepted=summary.accepted,
                                       rejected=summary.rejected, ok=ok,
                                       amounts=(summary.amount_excl_tax, summary.amount_inc_tax))
                except TillflowError as exc:
                    if ok:
                        raise
                    log.error("could not mark upload %s failed: %s", upload_id, exc)
        summary.seconds = time.monotonic() - started
        metrics.PUBLISH_SECONDS.observe(summary.seconds)
        metrics.UPLOADS.labels(source=source).inc()
        return summary

    def _send_chunk(self, chunk: Iterable[Transaction | Rejected], summary: LoadSummary, source: str) -> None:
        topic_tx = self.settings.topic_transactions
        topic_rej = self.settings.topic_rejects
        send = self.publisher.send
        accepted = rejected = 0
        excl = inc = 0
        for item in chunk:
            if isinstance(item, Transaction):
                key, value = transaction_record(item)
                send(topic_tx, key, value)
                accepted += 1
                excl += item.amount_excl_tax
                inc += item.amount_inc_tax
            else:
                send(topic_rej, key_for(item.id), encode_reject(item))
                rejected += 1
                metrics.count_rejected(source, item.reasons)
                for reason in item.reasons:
                    summary.reason_counts[reason.code] += 1
                if len(summary.first_reasons) < FIRST_REASONS:
                    where = f"line {item.origin.line}" if item.origin.line else "row"
                    summary.first_reasons.append(f"{where}: " + "; ".join(r.message for r in item.reasons))
        summary.read += accepted + rejected
        summary.accepted += accepted
        summary.rejected += rejected
        summary.amount_excl_tax += excl
        summary.amount_inc_tax += inc
        metrics.RECORDS.labels(source=source, outcome="accepted").inc(accepted)
        metrics.RECORDS.labels(source=source, outcome="rejected").inc(rejected)


def _peek(chunks: Iterator[list]) -> tuple[list, Iterator[list]]:
    try:
        first = next(chunks)
    except StopIteration:
        first = []
    return first, chunks


def _chain(first: list, rest: Iterator[list]) -> Iterator[list]:
    if first:
        yield first
    yield from rest


def _open(settings: Settings) -> tuple[Publisher, UploadLedger | None]:
    publisher = Publisher(settings.kafka_bootstrap_servers)
    ledger = UploadLedger(settings.database_url) if settings.database_url else None
    if ledger is None:
        log.warning("DATABASE_URL is not set: uploads are published but not recorded in ingest.uploads")
    return publisher, ledger


@bulk_mode()
def cli_load(settings: Settings, files: list[str], *, date: datetime.date | None, store: str | None,
             out: TextIO | None = None) -> int:
    """``tillflow load``: every file is loaded or refused on its own; exit 1 if any was refused."""
    out = out or sys.stdout
    publisher, ledger = _open(settings)
    loader = Loader(settings, publisher, ledger, progress=sys.stderr)
    failed = 0
    try:
        for name in files:
            try:
                summary = loader.load_csv(Path(name), date=date, store=store)
            except InputError as exc:
                failed += 1
                print(f"tillflow load: {exc}", file=sys.stderr)
                continue
            print(summary.render(), file=out, flush=True)
    finally:
        publisher.close()
        if ledger is not None:
            ledger.close()
    return 1 if failed else 0


@bulk_mode()
def cli_migrate_sqlite(settings: Settings, db: str, *, store: str | None, out: TextIO | None = None) -> int:
    """``tillflow migrate-sqlite``: the legacy database through the same validation and path."""
    out = out or sys.stdout
    publisher, ledger = _open(settings)
    try:
        summary = Loader(settings, publisher, ledger, progress=sys.stderr).load_sqlite(Path(db), store=store)
        print(summary.render(), file=out)
    finally:
        publisher.close()
        if ledger is not None:
            ledger.close()
    return 0
