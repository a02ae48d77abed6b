"""What a backup is, written beside it as ``NAME.manifest.json``; pure, no I/O.

The manifest is the commit marker of a backup: written last, atomically. It
holds what a restore needs besides the dump (the database's encoding, locale,
owner, privileges and settings, which ``pg_restore`` applies only when it
recreates a database under its original name) and what a verification compares
against: the files' sha256 and the row count and content checksum of
``sales.transactions`` taken in the dump's own snapshot, and, from the same
snapshot, the Kafka positions the consumer had stored up to.
"""
from __future__ import annotations

import datetime
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from backup.errors import VerifyError

FORMAT = 1
STAMP = "%Y%m%dT%H%M%SZ"


def utc(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(datetime.timezone.utc)


def iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class FileInfo:
    file: str
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class Content:
    """Row count and content checksum of one table (see backup.database)."""

    table: str
    rows: int
    checksum: str
    algorithm: str


@dataclass(frozen=True)
class DatabaseProperties:
    """What ``CREATE DATABASE`` and the database's GRANTs and settings need."""

    name: str
    owner: str
    encoding: str
    locale_provider: str  # c (libc) or i (ICU)
    collate: str
    ctype: str
    icu_locale: str | None
    # None: the default privileges; else [grantee or "PUBLIC", privilege, grantable]
    acl: list[list[Any]] | None
    # [role or None for every role, ["name=value", ...]] from pg_db_role_setting
    settings: list[list[Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Manifest:
    name: str
    created_at: str
    finished_at: str
    duration_seconds: float
    server_version: str
    server_version_num: int
    pg_dump_version: str
    taken_by: str
    dump: FileInfo
    globals: FileInfo
    database: DatabaseProperties
    transactions: Content
    format: int = FORMAT
    # [[topic, partition, next offset], ...] as stored in the dump's snapshot
    # (ingest.kafka_positions): where a restore replays Kafka from. None: the
    # database kept no positions (before migration 0010).
    kafka_positions: list[list[Any]] | None = None

    @property
    def positions(self) -> dict[tuple[str, int], int] | None:
        if self.kafka_positions is None:
            return None
        return {(topic, int(partition)): int(offset) for topic, partition, offset in self.kafka_positions}

    @property
    def created(self) -> datetime.datetime:
        return utc(self.created_at)

    @property
    def size_bytes(self) -> int:
        return self.dump.size_bytes + self.globals.size_bytes

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str) -> Manifest:
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise VerifyError(f"{source}: manifest format {data.get('format')!r}, this release reads {FORMAT}")
            return cls(
                **{
                    **data,
                    "dump": FileInfo(**data["dump"]),
                    "globals": FileInfo(**data["globals"]),
                    "database": DatabaseProperties(**data["database"]),
                    "transactions": Content(**data["transactions"]),
                }
            )
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise VerifyError(f"{source}: not a Tillflow backup manifest ({exc})") from exc


@dataclass(frozen=True)
class Verification:
    """One verification of one backup: ``quick`` (checksums and ``pg_restore --list``)
    or ``full`` (a restore into a scratch database compared with the manifest)."""

    kind: str
    at: str
    ok: bool
    detail: str
    duration_seconds: float = 0.0

    @property
    def moment(self) -> datetime.datetime:
        return utc(self.at)


def verifications_from_json(text: str) -> dict[str, Verification]:
    """``NAME.verify.json``: the latest verification of each kind."""
    try:
        data = json.loads(text)
        return {kind: Verification(**entry) for kind, entry in data.items()}
    except (ValueError, TypeError, AttributeError):
        return {}  # an unreadable record counts as "not verified", never as verified


def verifications_to_json(records: dict[str, Verification]) -> str:
    return json.dumps({kind: asdict(v) for kind, v in sorted(records.items())}, indent=2, sort_keys=True) + "\n"
