"""``tillflow watch``: load the CSV files dropped into the inbox.

A file is taken only once it is complete: its size and modification time have
not changed for ``WATCH_SETTLE_SECONDS``, and names that uploaders use while
writing (dot files, ``*.part``, ``*.tmp``, ``*.partial``, ``*~``) are ignored.
Taking a file renames it into ``INBOX_DIR/.processing`` (atomic, same
filesystem), so a crash never leaves it half-taken. Then:

* published completely -> moved to ``ARCHIVE_DIR/YYYY-MM-DD/`` (the day it was
  loaded; a name already there gets a numbered suffix);
* unreadable as a whole (wrong header, no date in the name, not UTF-8...) ->
  moved to ``FAILED_DIR`` with ``<name>.reason.txt`` beside it;
* Kafka or PostgreSQL unavailable -> left in ``.processing`` and retried.

After a restart, files left in ``.processing`` are taken first; one whose
checksum ``ingest.uploads`` already lists as published is archived without
being published again. The same content dropped again later is archived
without publishing; an overlapping file is loaded and the consumer stores only
its new rows.
"""
from __future__ import annotations

import datetime
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path

from etl import metrics
from etl.load import Loader, LoadSummary
from etl.producer import Publisher
from etl.uploads import UploadLedger, file_digest
from tillflow.config import Settings
from tillflow.errors import ConfigError, InputError, TillflowError

log = logging.getLogger("tillflow.watch")

_PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", "~")
_RETRY_MAX = 60.0


class Watcher:
    def __init__(self, settings: Settings, loader: Loader, ledger: UploadLedger | None) -> None:
        if settings.inbox_dir is None or settings.archive_dir is None or settings.failed_dir is None:
            raise ConfigError("INBOX_DIR is not set: give the directory the watcher takes CSV files from")
        self.settings = settings
        self.inbox = settings.inbox_dir
        self.processing = self.inbox / ".processing"
        self.archive = settings.archive_dir
        self.failed = settings.failed_dir
        self.loader = loader
        self.ledger = ledger
        self.stopping = threading.Event()
        self._seen: dict[str, tuple[int, int, float]] = {}  # name -> (size, mtime_ns, first seen unchanged)
        self._retry_at = 0.0
        self._retry_delay = 1.0
        for directory in (self.inbox, self.processing, self.archive, self.failed):
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot create {directory}: {exc.strerror}") from exc

    # -- scanning ------------------------------------------------------------------
    def ready_files(self, now: float | None = None) -> list[Path]:
        """Inbox files whose size and mtime have been stable for the settle time."""
        now = time.monotonic() if now is None else now
        ready, present = [], set()
        try:
            entries = list(os.scandir(self.inbox))
        except OSError as exc:
            raise ConfigError(f"cannot read the inbox {self.inbox}: {exc.strerror}") from exc
        for entry in sorted(entries, key=lambda e: e.name):
            name = entry.name
            if name.startswith(".") or name.endswith(_PARTIAL_SUFFIXES) or not entry.is_file(follow_symlinks=False):
                continue
            present.add(name)
            st = entry.stat(follow_symlinks=False)
            previous = self._seen.get(name)
            if previous is None or previous[:2] != (st.st_size, st.st_mtime_ns):
                self._seen[name] = (st.st_size, st.st_mtime_ns, now)
                if self.settings.watch_settle_seconds > 0:
                    continue
            if now - self._seen[name][2] >= self.settings.watch_settle_seconds:
                ready.append(Path(entry.path))
        for gone in set(self._seen) - present:
            del self._seen[gone]
        return ready

    def run_once(self) -> int:
        """Handle recovered and ready files; return how many were handled."""
        if time.monotonic() < self._retry_at:
            return 0
        handled = 0
        for path in sorted(self.processing.iterdir()):
            if self.stopping.is_set() or not self._handle(path):
                return handled
            handled += 1
        for path in self.ready_files():
            if self.stopping.is_set():
                break
            taken = self.processing / path.name
            try:
                os.replace(path, taken)
            except FileNotFoundError:
                continue  # another watcher took it
            self._seen.pop(path.name, None)
            if not self._handle(taken):
                break
            handled += 1
        return handled

    def run(self, once: bool = False) -> None:
        log.info("watching %s (archive %s, failed %s)", self.inbox, self.archive, self.failed)
        while not self.stopping.is_set():
            self.run_once()
            if once:
                # --once: wait out the settle time for files present now, then finish.
                if not any(True for _ in self.processing.iterdir()) and not self._pending():
                    break
            self.stopping.wait(self.settings.watch_interval)

    def _pending(self) -> bool:
        return any(
            not (p.name.startswith(".") or p.name.endswith(_PARTIAL_SUFFIXES)) and p.is_file()
            for p in self.inbox.iterdir()
        )

    # -- one file --------------------------------------------------------------------
    def _handle(self, path: Path) -> bool:
        """Load one taken file; False if it must be retried later (infrastructure down)."""
        name = path.name
        try:
            digest = file_digest(path)  # the file is complete and no longer changes: read once
            if self.ledger is not None and self.ledger.published(digest[0]):
                log.info("%s: same content already published, archiving without loading", name)
                self._archive(path)
                metrics.WATCH_FILES.labels(outcome="already_loaded").inc()
                return True
            summary: LoadSummary = self.loader.load_csv(path, source="csv", digest=digest)
        except InputError as exc:
            log.error("%s: cannot be loaded, moved to %s: %s", name, self.failed, exc)
            self._fail(path, str(exc))
            metrics.WATCH_FILES.labels(outcome="failed").inc()
            return True
        except TillflowError as exc:
            log.error("%s: will retry in %.0fs: %s", name, self._retry_delay, exc)
            self._retry_at = time.monotonic() + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, _RETRY_MAX)
            metrics.WATCH_FILES.labels(outcome="retry").inc()
            return False
        self._retry_delay = 1.0
        log.info("%s", summary.render().replace("\n", " | "))
        self._archive(path)
        metrics.WATCH_FILES.labels(outcome="loaded").inc()
        return True

    def _archive(self, path: Path) -> None:
        day = self.archive / datetime.date.today().isoformat()
        day.mkdir(parents=True, exist_ok=True)
        _move(path, _free_name(day / path.name))

    def _fail(self, path: Path, reason: str) -> None:
        target = _free_name(self.failed / path.name)
        _move(path, target)
        target.with_name(target.name + ".reason.txt").write_text(reason + "\n", encoding="utf-8")

    def stop(self, *_: object) -> None:
        self.stopping.set()


def _free_name(path: Path) -> Path:
    if not path.exists():
        return path
    for n in range(1, 100_000):
        candidate = path.with_name(f"{path.stem}.{n}{path.suffix}")
        if not candidate.exists():
            return candidate
    raise InputError(f"too many files named {path.name} in {path.parent}")


def _move(source: Path, target: Path) -> None:
    """Move across filesystems without a window where the file exists nowhere."""
    try:
        os.replace(source, target)
        return
    except OSError:
        pass
    partial = target.with_name(f".{target.name}.moving")
    shutil.copy2(source, partial)
    with open(partial, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, target)
    source.unlink()


def cli_watch(settings: Settings, once: bool = False) -> int:
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
    publisher = Publisher(settings.kafka_bootstrap_servers, client_id="tillflow-watch")
    ledger = UploadLedger(settings.database_url) if settings.database_url else None
    watcher = Watcher(settings, Loader(settings, publisher, ledger), ledger)
    signal.signal(signal.SIGTERM, watcher.stop)
    signal.signal(signal.SIGINT, watcher.stop)
    try:
        watcher.run(once=once)
    finally:
        publisher.close()
        if ledger is not None:
            ledger.close()
    return 0
