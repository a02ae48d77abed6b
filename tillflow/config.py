"""Settings: one frozen object per process, built once from the environment.

Nothing else in Tillflow reads ``os.environ``. Every variable is documented in
``.env.example``. A secret ``NAME`` may instead be given as ``NAME_FILE``, the
path of a file holding it (Docker secrets); the file wins over the variable.

Errors::

    ConfigError          a variable is missing or malformed; the message names it
"""
from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

from tillflow.errors import ConfigError

DEFAULT_TAX_RATE = Decimal("0.20")

# Values that mean "somebody copied .env.example and forgot to fill it in".
_PLACEHOLDERS = {"changeme", "change-me", "password", "secret", "admin", "postgres"}


def _secret(env: Mapping[str, str], name: str) -> str | None:
    path = env.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE={path}: cannot read the secret file ({exc.strerror})") from exc
    return env.get(name) or None


def _database_url(env: Mapping[str, str], required: bool) -> str | None:
    url = env.get("DATABASE_URL", "").strip()
    if not url:
        if required:
            raise ConfigError("DATABASE_URL is not set: give a libpq URL such as postgresql://user@host:5432/tillflow")
        return None
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"DATABASE_URL must start with postgresql://, got {parts.scheme or 'no scheme'}://")
    password = _secret(env, "DATABASE_PASSWORD")
    if password and not parts.password:
        # Splice the password from the secret file into the URL, quoted for libpq.
        user = urllib.parse.quote(parts.username or "", safe="")
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{user}:{urllib.parse.quote(password, safe='')}@{host}"
        if parts.port:
            netloc += f":{parts.port}"
        url = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return url


def _bootstrap(env: Mapping[str, str], required: bool) -> tuple[str, ...]:
    raw = env.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if not raw:
        if required:
            raise ConfigError("KAFKA_BOOTSTRAP_SERVERS is not set: give comma-separated host:port pairs")
        return ()
    servers = tuple(s.strip() for s in raw.split(",") if s.strip())
    for server in servers:
        host, sep, port = server.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"KAFKA_BOOTSTRAP_SERVERS: {server!r} is not host:port")
    return servers


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be at least {minimum}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not value >= minimum:
        raise ConfigError(f"{name}={raw} must be at least {minimum}")
    return value


def _tax_rate(env: Mapping[str, str]) -> Decimal:
    raw = env.get("TAX_RATE", "").strip()
    if not raw:
        return DEFAULT_TAX_RATE
    try:
        rate = Decimal(raw)
    except InvalidOperation:
        raise ConfigError(f"TAX_RATE={raw!r} is not a decimal number such as 0.20") from None
    if not rate.is_finite() or not Decimal(0) <= rate < Decimal(1):
        raise ConfigError(f"TAX_RATE={raw} must be a fraction between 0 and 1, such as 0.20")
    return rate


@dataclass(frozen=True)
class Settings:
    """Everything a Tillflow process is configured with."""

    database_url: str | None = None
    kafka_bootstrap_servers: tuple[str, ...] = ()
    topic_transactions: str = "tillflow.transactions"
    topic_rejects: str = "tillflow.rejects"
    consumer_group: str = "tillflow-writer"
    consumer_batch_size: int = 5000
    consumer_batch_timeout_ms: int = 500
    tax_rate: Decimal = DEFAULT_TAX_RATE
    store_id: str = "main"
    inbox_dir: Path | None = None
    archive_dir: Path | None = None
    failed_dir: Path | None = None
    watch_interval: float = 2.0
    watch_settle_seconds: float = 2.0
    metrics_port: int = 0  # 0: no metrics server
    log_level: str = "INFO"
    environment: str = "production"
    role_passwords: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        need_database: bool = False,
        need_kafka: bool = False,
        need_inbox: bool = False,
    ) -> Settings:
        """Build the settings; ``need_*`` make a variable mandatory for this command."""
        env = os.environ if env is None else env
        environment = env.get("TILLFLOW_ENV", "production").strip() or "production"
        inbox = env.get("INBOX_DIR", "").strip()
        if need_inbox and not inbox:
            raise ConfigError("INBOX_DIR is not set: give the directory the watcher takes CSV files from")
        inbox_dir = Path(inbox) if inbox else None

        def _dir(name: str, sibling: str) -> Path | None:
            raw = env.get(name, "").strip()
            if raw:
                return Path(raw)
            return inbox_dir.parent / sibling if inbox_dir else None

        roles = {}
        for role in ("owner", "writer", "reader", "backup"):
            secret = _secret(env, f"TILLFLOW_{role.upper()}_PASSWORD")
            if secret:
                if environment != "development" and secret.lower() in _PLACEHOLDERS:
                    raise ConfigError(
                        f"TILLFLOW_{role.upper()}_PASSWORD is a placeholder ({secret!r}): set a real secret (make secrets)"
                    )
                roles[role] = secret
        log_level = env.get("LOG_LEVEL", "INFO").strip().upper() or "INFO"
        if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"LOG_LEVEL={log_level!r} must be DEBUG, INFO, WARNING or ERROR")
        store = env.get("STORE_ID", "main").strip() or "main"
        return cls(
            database_url=_database_url(env, need_database),
            kafka_bootstrap_servers=_bootstrap(env, need_kafka),
            topic_transactions=env.get("KAFKA_TOPIC_TRANSACTIONS", "").strip() or "tillflow.transactions",
            topic_rejects=env.get("KAFKA_TOPIC_REJECTS", "").strip() or "tillflow.rejects",
            consumer_group=env.get("KAFKA_CONSUMER_GROUP", "").strip() or "tillflow-writer",
            consumer_batch_size=_int(env, "CONSUMER_BATCH_SIZE", 5000, minimum=1),
            consumer_batch_timeout_ms=_int(env, "CONSUMER_BATCH_TIMEOUT_MS", 500, minimum=1),
            tax_rate=_tax_rate(env),
            store_id=store,
            inbox_dir=inbox_dir,
            archive_dir=_dir("ARCHIVE_DIR", "archive"),
            failed_dir=_dir("FAILED_DIR", "failed"),
            watch_interval=_float(env, "WATCH_INTERVAL_SECONDS", 2.0, minimum=0.05),
            watch_settle_seconds=_float(env, "WATCH_SETTLE_SECONDS", 2.0, minimum=0.0),
            metrics_port=_int(env, "METRICS_PORT", 0, minimum=0),
            log_level=log_level,
            environment=environment,
            role_passwords=roles,
        )
