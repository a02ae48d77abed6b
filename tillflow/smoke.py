"""``tillflow smoke``: is the running stack whole, end to end? Exit 0 if so.

It runs against a live stack: Docker Compose (``make smoke`` runs the compose
service ``smoke``, which deploy/redeploy calls after every deploy) or the
native one of ``make local`` (``make smoke`` sources ``.local/env``). Each
check has a name, printed with its result, and named again on stderr when it
fails:

``postgres``  DATABASE_URL answers and the schema is migrated
``kafka``     every broker of KAFKA_BOOTSTRAP_SERVERS is registered, unfenced
``api``       TILLFLOW_API_URL/readyz answers 200 (Kafka can take writes)
``<name>``    each ``name=url`` of SMOKE_METRICS_URLS answers, at every
              address its host resolves to (each consumer replica)
``alertmanager``  ALERTMANAGER_URL/-/ready answers 200 (when set); the line says
              when no receiver is configured, so alerts reach nobody
``backup``    a backup exists: the ``backup`` metrics endpoint reports a
              last success, or, without one, BACKUP_DIR holds a backup
``canary``    a transaction posted to the API is in ``sales.transactions``

A stack that has just started needs a moment: a failing check is tried again
until SMOKE_TIMEOUT_SECONDS have passed. The canary is sent once the
``postgres``, ``kafka`` and ``api`` checks pass, and is awaited for up to as
long again.

The canary is a real transaction, and financial rows are never deleted: a BUY
of one "tillflow smoke canary" at 0.01, dated today (UTC), in store
SMOKE_STORE_ID (``smoke``), one row per run; the analytics views leave out
the stores listed in ``sales.synthetic_stores`` (migration 0008 lists
``smoke``), and the check fails if the canary's store is not listed there. It is sent with SMOKE_TOKEN (or SMOKE_TOKEN_FILE), or,
without one, with a token created for the run through DATABASE_URL (as
``tillflow_owner``, which may also read the canary back) and revoked after it.

Errors::

    TillflowError
     └── SmokeFailure     a check failed; the message names it and says why
"""
from __future__ import annotations

import datetime
import json
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import TextIO

import yaml

from tillflow.alerting import NULL_RECEIVER
from tillflow.config import Settings
from tillflow.errors import ConfigError, TillflowError

RETRY_SECONDS = 2.0
HTTP_TIMEOUT = 5.0
CANARY_NAME = "tillflow smoke canary"
BACKUP_GAUGE = "tillflow_backup_last_success_timestamp_seconds"
# The checks the canary needs; the others do not hold it back.
CANARY_NEEDS = ("postgres", "kafka", "api")


class SmokeFailure(TillflowError):
    """A check failed; the message names it and says why."""


@dataclass
class Outcome:
    name: str
    ok: bool
    detail: str


# ---------------------------------------------------------------- HTTP
def _get(url: str, timeout: float = HTTP_TIMEOUT) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        raise SmokeFailure(f"{url} answered {exc.code}: {_text(exc.read())}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SmokeFailure(f"{url} does not answer ({reason})") from exc


def _text(body: bytes, limit: int = 200) -> str:
    return " ".join(body.decode("utf-8", "replace").split())[:limit] or "no body"


def addresses(host: str, port: int) -> list[str]:
    """Every IPv4 address ``host`` resolves to (IPv6 only if it has none): one per replica under Compose."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise SmokeFailure(f"{host} does not resolve ({exc.strerror}): is the service running?") from exc
    v4 = sorted({info[4][0] for info in infos if info[0] == socket.AF_INET})
    return v4 or sorted({info[4][0] for info in infos})


def at_address(url: str, address: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = f"[{address}]" if ":" in address else address
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def gauge(metrics_text: str, name: str) -> float | None:
    """The value of an unlabelled gauge in Prometheus' text format, None if absent."""
    for line in metrics_text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == name:
            try:
                return float(fields[1])
            except ValueError:
                return None
    return None


# ---------------------------------------------------------------- checks
def check_postgres(settings: Settings) -> str:
    from tillflow.pg import connect, translated

    conn = connect(settings.database_url, "tillflow-smoke", error=SmokeFailure, timeout=5)
    try:
        with translated(SmokeFailure, "cannot query"), conn.cursor() as cur:
            cur.execute("SELECT to_regclass('sales.transactions') IS NOT NULL, current_user")
            migrated, user = cur.fetchone()
    finally:
        conn.close()
    if not migrated:
        raise SmokeFailure("sales.transactions does not exist: the migrations have not run (tillflow migrate)")
    return f"answers, migrated (as {user})"


def check_kafka(settings: Settings) -> str:
    """Every broker up, and every partition of both topics able to take a write
    (``tillflow.kafka_admin.cluster_health``, the API's and the consumer's check too)."""
    from tillflow.kafka_admin import admin_client, cluster_health

    admin = admin_client(settings.kafka_bootstrap_servers, client_id="tillflow-smoke", timeout=5.0)
    try:
        health = cluster_health(admin, [settings.topic_transactions, settings.topic_rejects], timeout=5.0)
    except TillflowError as exc:
        raise SmokeFailure(f"the cluster does not answer ({exc})") from exc
    wanted = set(settings.kafka_bootstrap_servers)
    missing = sorted(wanted - health.addresses)
    # Another spelling of the same hosts (localhost, 127.0.0.1) is fine when the count is right.
    if missing and health.brokers < len(wanted):
        raise SmokeFailure(f"{health.brokers} of {len(wanted)} brokers up; missing {', '.join(missing)}")
    if health.write_problem is not None:
        raise SmokeFailure(f"{health.brokers} brokers up, but {health.write_problem}")
    return f"{health.brokers} brokers up, both topics take writes"


def check_api(settings: Settings) -> str:
    body = _get(f"{settings.api_url}/readyz")
    return f"ready ({_text(body, 80)})"


def check_alertmanager(settings: Settings) -> str:
    _get(f"{settings.alertmanager_url}/-/ready")
    try:
        status = json.loads(_get(f"{settings.alertmanager_url}/api/v2/status"))
        route = yaml.safe_load(status["config"]["original"])["route"]
    except (ValueError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise SmokeFailure(f"ready, but its status does not show its configuration ({exc})") from exc
    if route.get("receiver") == NULL_RECEIVER:
        return "ready; no receiver configured: alerts reach nobody (set ALERT_WEBHOOK_URL or ALERT_EMAIL_* in .env)"
    return f"ready, alerts go to {route.get('receiver')}"


def check_metrics(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    found = addresses(parts.hostname or "", parts.port or 80)
    for address in found:
        _get(at_address(url, address))
    return f"metrics answer at {len(found)} address{'es' if len(found) > 1 else ''}"


def check_backup(settings: Settings, clock: Callable[[], float] = time.time) -> str:
    endpoints = dict(settings.smoke_metrics_urls)
    if "backup" in endpoints:
        value = gauge(_get(endpoints["backup"]).decode("utf-8", "replace"), BACKUP_GAUGE)
        if not value:
            raise SmokeFailure(f"no backup yet ({BACKUP_GAUGE} is {value}): see `tillflow backup list`")
        return f"newest backup taken {_age(clock() - value)} ago"
    if settings.backup_dir is not None:
        from backup.store import Store

        backups = Store(settings.backup_dir).backups()
        if not backups:
            raise SmokeFailure(f"no backup in BACKUP_DIR={settings.backup_dir}: run `tillflow backup run`")
        newest = backups[0].manifest.created.timestamp()
        return f"{len(backups)} in {settings.backup_dir}, newest taken {_age(clock() - newest)} ago"
    raise SmokeFailure("nowhere to look: name the backup service in SMOKE_METRICS_URLS (backup=http://...) "
                       "or set BACKUP_DIR")


def _age(seconds: float) -> str:
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"



def readiness_checks(settings: Settings) -> list[tuple[str, Callable[[], str]]]:
    checks: list[tuple[str, Callable[[], str]]] = [
        ("postgres", lambda: check_postgres(settings)),
        ("kafka", lambda: check_kafka(settings)),
        ("api", lambda: check_api(settings)),
    ]
    for name, url in settings.smoke_metrics_urls:
        checks.append((name, lambda url=url: check_metrics(url)))
    if settings.alertmanager_url:
        checks.append(("alertmanager", lambda: check_alertmanager(settings)))
    checks.append(("backup", lambda: check_backup(settings)))
    return checks


def run_until(checks: list[tuple[str, Callable[[], str]]], deadline: float, *,
              clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
              ) -> dict[str, Outcome]:
    """Run every check; try the failing ones again every RETRY_SECONDS until they pass or ``deadline``."""
    outcomes: dict[str, Outcome] = {}
    pending = list(checks)
    while True:
        still = []
        for name, check in pending:
            try:
                outcomes[name] = Outcome(name, True, check())
            except SmokeFailure as exc:
                outcomes[name] = Outcome(name, False, str(exc))
                still.append((name, check))
        pending = still
        if not pending or clock() >= deadline:
            return outcomes
        sleep(min(RETRY_SECONDS, max(deadline - clock(), 0)))


# ---------------------------------------------------------------- the canary
def canary_transaction(settings: Settings, today: datetime.date) -> dict:
    excl = Decimal("0.01")
    inc = (excl * (1 + settings.tax_rate)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return {"id": str(uuid.uuid4()), "transaction_date": today.isoformat(), "category": "BUY",
            "name": CANARY_NAME, "quantity": 1, "amount_excl_tax": str(excl), "amount_inc_tax": str(inc)}


class Canary:
    """One canary transaction: posted through the API, then looked for in PostgreSQL."""

    def __init__(self, settings: Settings, token: str) -> None:
        self.settings = settings
        self.token = token
        self.record = canary_transaction(settings, datetime.datetime.now(datetime.timezone.utc).date())

    def post(self) -> str:
        request = urllib.request.Request(
            f"{self.settings.api_url}/v1/transactions", data=json.dumps(self.record).encode("utf-8"), method="POST",
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.settings.api_publish_timeout + HTTP_TIMEOUT) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise SmokeFailure(f"POST /v1/transactions answered {exc.code}: {_text(exc.read())}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise SmokeFailure(f"POST /v1/transactions failed ({getattr(exc, 'reason', exc)})") from exc
        status = (answer.get("results") or [{}])[0].get("status")
        if status != "accepted":
            raise SmokeFailure(f"the API did not accept the canary: {json.dumps(answer)[:300]}")
        return f"posted {self.record['id']}"

    def stored(self) -> str:
        from tillflow.pg import connect, translated

        conn = connect(self.settings.database_url, "tillflow-smoke", error=SmokeFailure, timeout=5)
        try:
            with translated(SmokeFailure, "cannot look for it in PostgreSQL"), conn.cursor() as cur:
                cur.execute(
                    "SELECT t.store_id, EXISTS (SELECT 1 FROM sales.synthetic_stores AS s"
                    " WHERE s.store_id = t.store_id) FROM sales.transactions AS t WHERE t.id = %s",
                    (self.record["id"],),
                )
                row = cur.fetchone()
        finally:
            conn.close()
        if row is None:
            raise SmokeFailure(f"{self.record['id']} was accepted by the API but is not in sales.transactions "
                               "(is the consumer writing?)")
        if not row[1]:
            raise SmokeFailure(
                f"the canary is stored, but its store {row[0]!r} is not in sales.synthetic_stores, so the analytics"
                f" views count it as business: INSERT INTO sales.synthetic_stores VALUES ({row[0]!r}, 'smoke')"
                " as tillflow_owner, or set SMOKE_STORE_ID=smoke")
        return f"{self.record['id']} is in sales.transactions (store {row[0]})"


def run_canary(settings: Settings, timeout: float, *, clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> Outcome:
    from etl.api import tokens

    created = None
    token = settings.smoke_token
    try:
        if token is None:
            try:
                token = created = tokens.create(settings.database_url, settings.smoke_store_id, "tillflow smoke")
            except TillflowError as exc:
                return Outcome("canary", False, f"cannot create a token ({exc}); or set SMOKE_TOKEN_FILE")
        canary = Canary(settings, token)
        posted = run_until([("canary", canary.post)], clock() + timeout, clock=clock, sleep=sleep)["canary"]
        if not posted.ok:
            return posted
        return run_until([("canary", canary.stored)], clock() + timeout, clock=clock, sleep=sleep)["canary"]
    finally:
        if created is not None:
            parsed = tokens.parse(created)
            try:
                tokens.revoke(settings.database_url, parsed[0])
            except TillflowError as exc:
                print(f"tillflow smoke: could not revoke the token made for this run: {exc}", file=sys.stderr)


# ---------------------------------------------------------------- the command
def cli_smoke(settings: Settings, out: TextIO | None = None) -> int:
    """``tillflow smoke``: print every check's outcome; SmokeFailure naming the failing ones."""
    out = out or sys.stdout
    if not settings.api_url:
        raise ConfigError("TILLFLOW_API_URL is not set: give the API's base URL, such as http://api:8000")
    timeout = settings.smoke_timeout
    outcomes = list(run_until(readiness_checks(settings), time.monotonic() + timeout).values())
    passed = {o.name for o in outcomes if o.ok}
    if all(name in passed for name in CANARY_NEEDS):
        outcomes.append(run_canary(settings, timeout))
    else:
        outcomes.append(Outcome("canary", False, "not sent: " + ", ".join(
            n for n in CANARY_NEEDS if n not in passed) + " not ready"))
    width = max(len(o.name) for o in outcomes)
    for outcome in outcomes:
        print(f"{'ok' if outcome.ok else 'FAIL':<4}  {outcome.name:<{width}}  {outcome.detail}", file=out, flush=True)
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise SmokeFailure("failed: " + "; ".join(f"{o.name}: {o.detail}" for o in failed))
    print(f"smoke: all {len(outcomes)} checks passed", file=out)
    return 0
