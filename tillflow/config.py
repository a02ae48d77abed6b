"""Settings: one frozen object per process, built once from the environment.

Nothing else in Tillflow reads ``os.environ``. Every variable is documented in
``.env.example``. A secret ``NAME`` may instead be given as ``NAME_FILE``, the
path of a file holding it (Docker secrets); the file wins over the variable.

Errors::

    ConfigError          a variable is missing or malformed; the message names it
"""
from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

from tillflow.errors import ConfigError
from tillflow.record import DEFAULT_TAX_RATE

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


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    value = _int(env, name, default, minimum=1)
    if value > 65535:
        raise ConfigError(f"{name}={value} is not a TCP port (1 to 65535)")
    return value


def _cron(env: Mapping[str, str], name: str, default: str) -> str:
    """A five-field cron expression (or @daily and the like), read in UTC."""
    from croniter import croniter

    raw = " ".join(env.get(name, "").split()) or default
    if not (croniter.is_valid(raw) and (raw.startswith("@") or len(raw.split()) == 5)):
        raise ConfigError(
            f"{name}={raw!r} is not a cron expression: give minute hour day-of-month month day-of-week "
            f"(UTC), such as {default!r}"
        )
    return raw


def _bindir(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not Path(raw).is_dir():
        raise ConfigError(f"{name}={raw} is not a directory: give the one holding pg_dump and pg_restore")
    return Path(raw)


def _http_url(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name, "").strip().rstrip("/")
    if not raw:
        return None
    parts = urllib.parse.urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}={raw!r} is not an http:// or https:// URL")
    return raw


def _named_urls(env: Mapping[str, str], name: str) -> tuple[tuple[str, str], ...]:
    """``name=url,name=url`` (SMOKE_METRICS_URLS) as pairs, in order."""
    pairs = []
    for item in filter(None, (part.strip() for part in env.get(name, "").split(","))):
        label, sep, url = item.partition("=")
        if not sep or not label.strip() or not url.strip():
            raise ConfigError(f"{name}: {item!r} is not name=url, such as consumer=http://consumer:9101/metrics")
        pairs.append((label.strip(), _http_url({name: url}, name)))
    return tuple(pairs)


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("true", "yes", "1", "on"):
        return True
    if raw in ("false", "no", "0", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is neither true nor false")


def _duration(env: Mapping[str, str], name: str, default: str) -> str:
    """A duration as Prometheus and Alertmanager write one: 90s, 5m, 1h30m."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not re.fullmatch(r"(\d+(ms|s|m|h|d|w|y))+", raw) or not re.search(r"[1-9]", raw):
        raise ConfigError(f"{name}={raw!r} must be a duration such as 90s, 5m or 1h30m")
    return raw


def _host_port(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{name}={raw!r} is not host:port, such as smtp.example.com:587")
    return raw


def _addresses(env: Mapping[str, str], name: str, single: bool = False) -> str | None:
    """Comma-separated e-mail addresses, as Alertmanager's ``to`` takes them."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if single and "," in raw:
        raise ConfigError(f"{name}={raw!r}: give one address")
    for address in (part.strip() for part in raw.split(",")):
        if "@" not in address or any(c.isspace() for c in address):
            raise ConfigError(f"{name}: {address!r} is not an e-mail address")
    return ", ".join(part.strip() for part in raw.split(","))


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
    consumer_batch_size: int = 10_000
    consumer_batch_timeout_ms: int = 500
    consumer_session_timeout_ms: int = 30_000
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
    # tillflow serve (etl/api)
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_max_body_bytes: int = 1 << 20
    api_max_batch: int = 1000
    api_max_upload_bytes: int = 64 << 20
    api_max_frame_bytes: int = 64 << 10
    api_ws_max_in_flight: int = 1000
    api_publish_timeout: float = 10.0
    api_auth_cache_seconds: float = 5.0
    api_spool_dir: Path | None = None
    # tillflow backup (backup/)
    backup_dir: Path | None = None
    backup_schedule: str = "0 */6 * * *"
    backup_verify_schedule: str = "30 3 * * *"
    backup_keep_daily: int = 7
    backup_keep_weekly: int = 4
    backup_restore_jobs: int = 2
    pg_bindir: Path | None = None
    # tillflow reconcile, run by the backup service (tillflow/reconcile.py)
    reconcile_schedule: str = "15 2 * * *"
    # tillflow smoke (tillflow/smoke.py)
    api_url: str | None = None
    smoke_token: str | None = None
    smoke_store_id: str = "smoke"
    smoke_timeout: float = 120.0
    smoke_metrics_urls: tuple[tuple[str, str], ...] = ()
    alertmanager_url: str | None = None
    # tillflow alertmanager-config (tillflow/alerting.py): where Alertmanager sends alerts
    alert_webhook_url: str | None = None
    alert_email_to: str | None = None
    alert_email_from: str | None = None
    alert_smtp_smarthost: str | None = None
    alert_smtp_username: str | None = None
    alert_smtp_password: str | None = None
    alert_smtp_require_tls: bool = True
    alert_group_interval: str = "5m"

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
        environment = env.get("TILLFLOW_ENV", "").strip() or cls.environment
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
        for role in ("owner", "writer", "reader", "backup", "monitor"):
            secret = _secret(env, f"TILLFLOW_{role.upper()}_PASSWORD")
            if secret:
                if environment != "development" and secret.lower() in _PLACEHOLDERS:
                    raise ConfigError(
                        f"TILLFLOW_{role.upper()}_PASSWORD is a placeholder ({secret!r}): set a real secret (make secrets)"
                    )
                roles[role] = secret
        log_level = env.get("LOG_LEVEL", "").strip().upper() or cls.log_level
        if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"LOG_LEVEL={log_level!r} must be DEBUG, INFO, WARNING or ERROR")
        store = env.get("STORE_ID", "").strip() or cls.store_id
        return cls(
            database_url=_database_url(env, need_database),
            kafka_bootstrap_servers=_bootstrap(env, need_kafka),
            topic_transactions=env.get("KAFKA_TOPIC_TRANSACTIONS", "").strip() or cls.topic_transactions,
            topic_rejects=env.get("KAFKA_TOPIC_REJECTS", "").strip() or cls.topic_rejects,
            consumer_group=env.get("KAFKA_CONSUMER_GROUP", "").strip() or cls.consumer_group,
            consumer_batch_size=_int(env, "CONSUMER_BATCH_SIZE", cls.consumer_batch_size, minimum=1),
            consumer_batch_timeout_ms=_int(env, "CONSUMER_BATCH_TIMEOUT_MS", cls.consumer_batch_timeout_ms, minimum=1),
            # The brokers refuse a session under 6 s (group.min.session.timeout.ms).
            consumer_session_timeout_ms=_int(env, "CONSUMER_SESSION_TIMEOUT_MS", cls.consumer_session_timeout_ms,
                                             minimum=6_000),
            tax_rate=_tax_rate(env),
            store_id=store,
            inbox_dir=inbox_dir,
            archive_dir=_dir("ARCHIVE_DIR", "archive"),
            failed_dir=_dir("FAILED_DIR", "failed"),
            watch_interval=_float(env, "WATCH_INTERVAL_SECONDS", cls.watch_interval, minimum=0.05),
            watch_settle_seconds=_float(env, "WATCH_SETTLE_SECONDS", cls.watch_settle_seconds, minimum=0.0),
            metrics_port=_int(env, "METRICS_PORT", cls.metrics_port, minimum=0),
            log_level=log_level,
            environment=environment,
            role_passwords=roles,
            api_host=env.get("API_HOST", "").strip() or cls.api_host,
            api_port=_port(env, "API_PORT", cls.api_port),
            api_max_body_bytes=_int(env, "API_MAX_BODY_BYTES", cls.api_max_body_bytes, minimum=1024),
            api_max_batch=_int(env, "API_MAX_BATCH", cls.api_max_batch, minimum=1),
            api_max_upload_bytes=_int(env, "API_MAX_UPLOAD_BYTES", cls.api_max_upload_bytes, minimum=1024),
            api_max_frame_bytes=_int(env, "API_MAX_FRAME_BYTES", cls.api_max_frame_bytes, minimum=1024),
            api_ws_max_in_flight=_int(env, "API_WS_MAX_IN_FLIGHT", cls.api_ws_max_in_flight, minimum=1),
            api_publish_timeout=_float(env, "API_PUBLISH_TIMEOUT_SECONDS", cls.api_publish_timeout, minimum=0.5),
            api_auth_cache_seconds=_float(env, "API_AUTH_CACHE_SECONDS", cls.api_auth_cache_seconds, minimum=0.0),
            api_spool_dir=Path(env["API_SPOOL_DIR"].strip()) if env.get("API_SPOOL_DIR", "").strip() else None,
            backup_dir=Path(env["BACKUP_DIR"].strip()) if env.get("BACKUP_DIR", "").strip() else None,
            backup_schedule=_cron(env, "BACKUP_SCHEDULE", cls.backup_schedule),
            backup_verify_schedule=_cron(env, "BACKUP_VERIFY_SCHEDULE", cls.backup_verify_schedule),
            backup_keep_daily=_int(env, "BACKUP_KEEP_DAILY", cls.backup_keep_daily, minimum=0),
            backup_keep_weekly=_int(env, "BACKUP_KEEP_WEEKLY", cls.backup_keep_weekly, minimum=0),
            backup_restore_jobs=_int(env, "BACKUP_RESTORE_JOBS", cls.backup_restore_jobs, minimum=1),
            pg_bindir=_bindir(env, "PG_BINDIR"),
            reconcile_schedule=_cron(env, "RECONCILE_SCHEDULE", cls.reconcile_schedule),
            api_url=_http_url(env, "TILLFLOW_API_URL"),
            smoke_token=_secret(env, "SMOKE_TOKEN"),
            smoke_store_id=env.get("SMOKE_STORE_ID", "").strip() or cls.smoke_store_id,
            smoke_timeout=_float(env, "SMOKE_TIMEOUT_SECONDS", cls.smoke_timeout, minimum=1.0),
            smoke_metrics_urls=_named_urls(env, "SMOKE_METRICS_URLS"),
            alertmanager_url=_http_url(env, "ALERTMANAGER_URL"),
            alert_webhook_url=_http_url(env, "ALERT_WEBHOOK_URL") and env["ALERT_WEBHOOK_URL"].strip(),
            alert_email_to=_addresses(env, "ALERT_EMAIL_TO"),
            alert_email_from=_addresses(env, "ALERT_EMAIL_FROM", single=True),
            alert_smtp_smarthost=_host_port(env, "ALERT_SMTP_SMARTHOST"),
            alert_smtp_username=env.get("ALERT_SMTP_USERNAME", "").strip() or None,
            alert_smtp_password=_secret(env, "ALERT_SMTP_PASSWORD"),
            alert_smtp_require_tls=_bool(env, "ALERT_SMTP_REQUIRE_TLS", cls.alert_smtp_require_tls),
            alert_group_interval=_duration(env, "ALERT_GROUP_INTERVAL", cls.alert_group_interval),
        )
