"""What every backup job works with, built once from the settings."""
from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from backup.store import Store
from backup.tools import Server, Tools, find_bindir
from tillflow.config import Settings
from tillflow.errors import ConfigError

Clock = Callable[[], datetime.datetime]


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@dataclass(frozen=True)
class Context:
    """The backup directory, the server and role, the client programs and the policy."""

    store: Store
    server: Server | None
    tools: Tools
    keep_daily: int = 7
    keep_weekly: int = 4
    restore_jobs: int = 2
    clock: Clock = field(default=utcnow, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Clock = utcnow, directory: Path | None = None) -> Context:
        folder = directory or settings.backup_dir
        if folder is None:
            raise ConfigError("BACKUP_DIR is not set: give the directory backups are written to")
        return cls(
            store=Store(folder),
            server=Server.from_url(settings.database_url) if settings.database_url else None,
            tools=Tools(find_bindir(settings.pg_bindir)),
            keep_daily=settings.backup_keep_daily,
            keep_weekly=settings.backup_keep_weekly,
            restore_jobs=settings.backup_restore_jobs,
            clock=clock,
        )

    def need_server(self) -> Server:
        if self.server is None:
            raise ConfigError("DATABASE_URL is not set: give the libpq URL of the database to back up")
        return self.server
