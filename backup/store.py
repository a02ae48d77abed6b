"""The backup directory: names, atomic writes, the lock, listing and deletion.

The files of a backup being taken have hidden partial names
(``.NAME.dump.partial``); they are fsynced, checked, and renamed into place one
by one, the manifest last, then the directory is fsynced. A backup without a
manifest is therefore not a backup: ``cleanup`` removes its files, and stale
partials, at the start of the next job. Jobs that change the directory (run,
verify, prune) hold an exclusive ``flock`` on ``.lock``, which the pg_dump they
start inherits: a dump orphaned by a killed job still holds it until it ends.
A restore holds a shared ``flock`` on the dump it reads, and pruning skips a
dump someone holds, so retention never pulls a file from under a restore.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from backup.errors import BackupError, VerifyError
from backup.manifest import Manifest, Verification, verifications_from_json, verifications_to_json

log = logging.getLogger(__name__)

DUMP, GLOBALS, SHA256, MANIFEST, VERIFY = ".dump", ".globals.sql", ".sha256", ".manifest.json", ".verify.json"
# The order files are renamed into place: the manifest makes the backup exist.
COMMIT_ORDER = (DUMP, GLOBALS, SHA256, MANIFEST)
SUFFIXES = (*COMMIT_ORDER, VERIFY)
NAME = re.compile(r"^(?P<database>.+)-(?P<stamp>\d{8}T\d{6}Z)$")
LOCK_FILE = ".lock"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Backup:
    """One complete backup: its manifest and the verifications recorded for it."""

    directory: Path
    manifest: Manifest
    verifications: dict[str, Verification] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.manifest.name

    def path(self, suffix: str) -> Path:
        return self.directory / f"{self.name}{suffix}"

    @property
    def dump_path(self) -> Path:
        return self.path(DUMP)

    @property
    def globals_path(self) -> Path:
        return self.path(GLOBALS)

    @property
    def verified(self) -> bool:
        """Passed its quick verification and failed no full one: retention may count on it."""
        quick, full = self.verifications.get("quick"), self.verifications.get("full")
        return bool(quick and quick.ok) and not (full and not full.ok)

    @property
    def fully_verified(self) -> bool:
        full = self.verifications.get("full")
        return bool(full and full.ok)


def split_name(path_name: str) -> tuple[str, str] | None:
    """``(name, suffix)`` of a backup file name, or None."""
    for suffix in SUFFIXES:
        if path_name.endswith(suffix):
            name = path_name[: -len(suffix)]
            if NAME.match(name):
                return name, suffix
    return None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a hidden partial name, fsync, rename over ``path``, fsync the directory."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640), "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
        fsync_dir(path.parent)
    except OSError:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise


class Store:
    """The backups in one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    # -- the job lock -----------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[int]:
        """Hold the directory's exclusive lock; yields its fd (pass it to children)."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as exc:
            raise BackupError(f"BACKUP_DIR={self.directory} is not writable: {exc.strerror}") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BackupError(
                    f"another backup job is running in {self.directory} (it holds {LOCK_FILE}); try again when it ends"
                ) from None
            yield fd
        finally:
            os.close(fd)  # releases the lock, unless a child still holds the description

    # -- names -------------------------------------------------------------------
    def partial(self, name: str, suffix: str) -> Path:
        return self.directory / f".{name}{suffix}.partial"

    def final(self, name: str, suffix: str) -> Path:
        return self.directory / f"{name}{suffix}"

    def taken(self, name: str) -> bool:
        return any(self.final(name, suffix).exists() for suffix in SUFFIXES)

    def commit(self, name: str) -> None:
        """Rename a fully written backup's partial files into place, the manifest last."""
        done: list[Path] = []
        try:
            for suffix in COMMIT_ORDER:
                target = self.final(name, suffix)
                os.rename(self.partial(name, suffix), target)
                done.append(target)
            fsync_dir(self.directory)
        except OSError as exc:
            for path in reversed(done):
                with contextlib.suppress(OSError):
                    path.unlink()
            raise BackupError(f"committing backup {name} in {self.directory} failed: {exc.strerror}") from exc

    def discard(self, name: str) -> None:
        """Remove the partial files of a backup that failed."""
        for suffix in SUFFIXES:
            with contextlib.suppress(FileNotFoundError):
                self.partial(name, suffix).unlink()

    def cleanup(self) -> list[str]:
        """Remove stale partial files and files of backups without a manifest; return their names."""
        removed = []
        for path in sorted(self.directory.iterdir()):
            stale = path.name.startswith(".") and path.name.endswith(".partial")
            parts = None if stale else split_name(path.name)
            orphan = parts is not None and not self.final(parts[0], MANIFEST).exists()
            if stale or orphan:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                removed.append(path.name)
        if removed:
            log.warning("removed what failed or killed jobs left in %s: %s", self.directory, ", ".join(removed))
        return removed

    # -- reading -------------------------------------------------------------------
    def load(self, name: str) -> Backup:
        manifest_path = self.final(name, MANIFEST)
        try:
            manifest = Manifest.from_json(manifest_path.read_text(encoding="utf-8"), source=str(manifest_path))
        except FileNotFoundError:
            raise VerifyError(f"no backup {name} in {self.directory}: {manifest_path.name} does not exist") from None
        except OSError as exc:
            raise VerifyError(f"cannot read {manifest_path}: {exc.strerror}") from exc
        if manifest.name != name:
            raise VerifyError(f"{manifest_path} describes backup {manifest.name}, not {name}")
        try:
            records = verifications_from_json(self.final(name, VERIFY).read_text(encoding="utf-8"))
        except OSError:
            records = {}
        return Backup(self.directory, manifest, records)

    def backups(self) -> list[Backup]:
        """Every complete backup, newest first; an unreadable manifest is logged and skipped."""
        found = []
        if not self.directory.is_dir():
            return found
        for path in self.directory.glob(f"*{MANIFEST}"):
            parts = split_name(path.name)
            if parts is None:
                continue
            try:
                found.append(self.load(parts[0]))
            except VerifyError as exc:
                log.error("%s", exc)
        return sorted(found, key=lambda b: (b.manifest.created, b.name), reverse=True)

    def find(self, ref: str) -> Backup:
        """A backup by name, or by the path of any of its files (here or elsewhere)."""
        path = Path(ref)
        parts = split_name(path.name)
        if parts is not None and path.is_file():
            return Store(path.parent).load(parts[0])
        if NAME.match(ref):
            return self.load(ref)
        if parts is not None and path.name == ref:
            return self.load(parts[0])  # a file name in this directory
        raise VerifyError(
            f"{ref} is neither a backup name such as tillflow-20260105T120000Z nor a backup file "
            f"(.dump or .manifest.json); `tillflow backup list` shows them"
        )

    # -- writing ---------------------------------------------------------------------
    def record(self, backup: Backup, verification: Verification) -> Backup:
        """Store one verification result beside the backup; return the backup updated."""
        records = {**backup.verifications, verification.kind: verification}
        write_atomic(backup.path(VERIFY), verifications_to_json(records))
        return Backup(backup.directory, backup.manifest, records)

    def delete(self, backup: Backup) -> bool:
        """Delete a backup's files, the manifest first; False if a restore holds its dump."""
        try:
            fd = os.open(backup.dump_path, os.O_RDONLY)
        except FileNotFoundError:
            fd = None
        try:
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    log.info("kept %s for now: a restore is reading it", backup.name)
                    return False
            for suffix in (MANIFEST, *COMMIT_ORDER[:-1], VERIFY):
                with contextlib.suppress(FileNotFoundError):
                    backup.path(suffix).unlink()
            fsync_dir(backup.directory)
            return True
        finally:
            if fd is not None:
                os.close(fd)


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """Hold a shared lock on a dump while it is read, so that pruning leaves it alone."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise VerifyError(f"cannot open {path}: {exc.strerror}") from exc
    try:
        with contextlib.suppress(OSError):  # some network filesystems refuse flock
            fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)
