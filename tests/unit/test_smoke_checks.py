"""tillflow smoke without a stack: its settings, the canary, the retry loop,
and the HTTP checks against small local servers. The whole command runs
against real services in tests/integration/test_smoke.py."""
from __future__ import annotations

import datetime
import threading
from contextlib import contextmanager
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from etl.api.ingest import judge
from tillflow.config import Settings
from tillflow.errors import ConfigError
from tillflow.record import Origin, Transaction
from tillflow.smoke import (
    BACKUP_GAUGE,
    SmokeFailure,
    at_address,
    canary_transaction,
    check_backup,
    check_metrics,
    gauge,
    run_until,
)


# ---------------------------------------------------------------- settings
def test_smoke_settings_are_read_and_checked():
    settings = Settings.from_env({
        "TILLFLOW_API_URL": "http://api:8000/",
        "SMOKE_METRICS_URLS": " consumer=http://consumer:9100/metrics , backup=http://backup:9100/metrics",
        "SMOKE_TIMEOUT_SECONDS": "30",
    })
    assert settings.api_url == "http://api:8000"
    assert settings.smoke_metrics_urls == (("consumer", "http://consumer:9100/metrics"),
                                           ("backup", "http://backup:9100/metrics"))
    assert (settings.smoke_store_id, settings.smoke_timeout, settings.smoke_token) == ("smoke", 30.0, None)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"TILLFLOW_API_URL": "api:8000"}, "TILLFLOW_API_URL"),
        ({"SMOKE_METRICS_URLS": "http://consumer:9100/metrics"}, "SMOKE_METRICS_URLS"),
        ({"SMOKE_METRICS_URLS": "consumer=ftp://consumer/metrics"}, "SMOKE_METRICS_URLS"),
        ({"SMOKE_TIMEOUT_SECONDS": "0"}, "SMOKE_TIMEOUT_SECONDS"),
    ],
)
def test_a_bad_smoke_setting_is_named(env, named):
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)


def test_the_smoke_token_may_come_from_a_file(tmp_path):
    path = tmp_path / "token"
    path.write_text("tillflow_0123456789ab_secret\n")
    assert Settings.from_env({"SMOKE_TOKEN_FILE": str(path)}).smoke_token == "tillflow_0123456789ab_secret"


# ---------------------------------------------------------------- the canary
@pytest.mark.parametrize("rate", ["0.20", "0.055", "0", "0.99"])
def test_the_canary_passes_the_record_rules_at_any_tax_rate(rate):
    settings = Settings.from_env({"TAX_RATE": rate})
    record = canary_transaction(settings, datetime.date(2026, 1, 5))
    verdict = judge(record, store_id="smoke", tax_rate=Decimal(rate), origin=Origin("api", "smoke"))
    assert type(verdict) is Transaction, verdict
    assert (verdict.category, verdict.quantity, verdict.store_id) == ("BUY", 1, "smoke")
    assert record["amount_excl_tax"] == "0.01"


def test_each_canary_is_a_new_transaction():
    settings = Settings()
    assert canary_transaction(settings, datetime.date.today())["id"] != canary_transaction(
        settings, datetime.date.today())["id"]


# ---------------------------------------------------------------- the retry loop
class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_failing_check_is_tried_again_until_it_passes():
    clock, tries = FakeClock(), []

    def flaky() -> str:
        tries.append(clock())
        if len(tries) < 3:
            raise SmokeFailure("not yet")
        return "fine"

    outcomes = run_until([("flaky", flaky), ("steady", lambda: "ok")], 60, clock=clock, sleep=clock.sleep)

    assert outcomes["flaky"].ok and outcomes["flaky"].detail == "fine"
    assert outcomes["steady"].ok
    assert tries == [0.0, 2.0, 4.0]


def test_a_check_that_never_passes_fails_at_the_deadline_with_its_last_reason():
    clock, passed = FakeClock(), []

    def broken() -> str:
        raise SmokeFailure(f"still broken at {clock():.0f}")

    def once() -> str:
        passed.append(1)
        return "ok"

    outcomes = run_until([("broken", broken), ("once", once)], 10, clock=clock, sleep=clock.sleep)

    assert not outcomes["broken"].ok and outcomes["broken"].detail == "still broken at 10"
    assert passed == [1], "a check that passed is not run again"
    assert clock() == 10


# ---------------------------------------------------------------- metrics and backups
METRICS = f"""# HELP {BACKUP_GAUGE} When the newest complete backup was taken (Unix time)
# TYPE {BACKUP_GAUGE} gauge
{BACKUP_GAUGE} 1.7e+09
tillflow_backup_runs_total{{result="success"}} 3.0
"""


def test_gauges_are_read_from_the_text_format():
    assert gauge(METRICS, BACKUP_GAUGE) == 1.7e9
    assert gauge(METRICS, "tillflow_backup_runs_total") is None, "labelled series are not the plain gauge"
    assert gauge("", BACKUP_GAUGE) is None


def test_urls_are_pointed_at_one_address():
    assert at_address("http://consumer:9100/metrics", "172.18.0.5") == "http://172.18.0.5:9100/metrics"
    assert at_address("http://localhost/metrics", "::1") == "http://[::1]/metrics"


@contextmanager
def metrics_server(body: str, status: int = 200):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_metrics_endpoint_is_checked_at_every_address_of_its_host():
    with metrics_server("up 1\n") as url:
        assert check_metrics(url) == "metrics answer at 1 address"
        port = int(url.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(SmokeFailure, match="does not answer"):
        check_metrics(f"http://127.0.0.1:{port}/metrics")
    with pytest.raises(SmokeFailure, match="does not resolve"):
        check_metrics("http://no-such-service.invalid:9100/metrics")


def test_a_metrics_endpoint_that_answers_an_error_fails():
    with metrics_server("boom", status=500) as url, pytest.raises(SmokeFailure, match="answered 500"):
        check_metrics(url)


def test_the_backup_service_must_report_a_backup():
    with metrics_server(METRICS) as url:
        settings = Settings(smoke_metrics_urls=(("backup", url),))
        assert check_backup(settings, clock=lambda: 1.7e9 + 3600) == "newest backup taken 60 min ago"
    with metrics_server(f"{BACKUP_GAUGE} 0.0\n") as url, pytest.raises(SmokeFailure, match="no backup yet"):
        check_backup(Settings(smoke_metrics_urls=(("backup", url),)))


def test_without_a_backup_service_the_backup_directory_must_hold_one(tmp_path):
    with pytest.raises(SmokeFailure, match="no backup in BACKUP_DIR"):
        check_backup(Settings(backup_dir=tmp_path))
    with pytest.raises(SmokeFailure, match="SMOKE_METRICS_URLS .* or set BACKUP_DIR"):
        check_backup(Settings())
