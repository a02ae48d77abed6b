"""Alerts reach a person: a real Prometheus and a real Alertmanager (Debian's
packages), the configuration `tillflow alertmanager-config` renders, and
receivers this test runs (an HTTP webhook receiver and an SMTP server).

Prometheus scrapes a metrics endpoint of the test under the job ``consumer``
and evaluates TargetDown exactly as prometheus/alerts.yml writes it (its
expression, labels and annotations), with only its ``for`` shortened. The test
takes the endpoint away, then brings it back, and expects from the one outage:
exactly one firing and one resolved notification on the webhook and by e-mail,
each carrying the alert's summary and runbook.

The grouping is shortened through the renderer's ``Timing`` parameter only; the
production timing (``tillflow.alerting.PRODUCTION``) is tested in
tests/unit/test_alertmanager_config.py and, end to end, in tests/stack.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from devstack.proc import free_port
from support.alerts import Alertmanager, SmtpSink, WebhookReceiver
from support.pipeline import wait_for
from tillflow.alerting import Timing, render
from tillflow.config import Settings

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "prometheus" / "alerts.yml"
FAST = Timing(group_wait="1s", group_interval="2s", repeat_interval="1h")
WITHIN = 60  # seconds for each notification, far above the shortened timing


def target_down_rule() -> dict:
    """prometheus/alerts.yml's TargetDown as it is, but firing after 2 s instead of minutes."""
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    (rule,) = [r for g in groups for r in g["rules"] if r["alert"] == "TargetDown"]
    return {**rule, "for": "2s"}


class MetricsEndpoint:
    """A /metrics endpoint on a fixed port that can be taken away and brought back."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    def up(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = b"tillflow_test_up 1\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join()
            self.server = None


def waited(what: str, found, timeout: float = WITHIN):
    return wait_for(found, timeout, what, every=0.5)


@pytest.fixture
def receivers():
    with WebhookReceiver() as webhook, SmtpSink() as smtp:
        yield webhook, smtp


@pytest.fixture
def pipeline(tmp_path, receivers):
    """Endpoint -> Prometheus (TargetDown) -> Alertmanager (rendered config) -> the receivers."""
    if not shutil.which("prometheus"):
        pytest.fail("no prometheus binary: `make deps` installs Debian's prometheus package", pytrace=False)
    webhook, smtp = receivers
    settings = Settings.from_env({
        "ALERT_WEBHOOK_URL": f"http://127.0.0.1:{webhook.port}/alerts",
        "ALERT_EMAIL_TO": "oncall@example.com", "ALERT_EMAIL_FROM": "tillflow@example.com",
        "ALERT_SMTP_SMARTHOST": f"127.0.0.1:{smtp.port}", "ALERT_SMTP_REQUIRE_TLS": "false",
    })
    config = tmp_path / "alertmanager.yml"
    config.write_text(render(settings, FAST).text, encoding="utf-8")
    alertmanager = Alertmanager(config, tmp_path / "alertmanager").start()

    endpoint = MetricsEndpoint()
    endpoint.up()
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "targets", "rules": [target_down_rule()]}]}))
    port = free_port()
    scraping = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "consumer", "static_configs": [{"targets": [f"127.0.0.1:{endpoint.port}"]}]}],
    }
    alerting = {
        **scraping,
        "rule_files": [str(rules)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager.port}"]}]}]},
    }
    # Scraping first, the rule and Alertmanager once the job has its `up`: before its first scrape,
    # absent(up{job="consumer"}) holds, and with the shortened `for` that would already be an alert.
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(scraping))
    with open(tmp_path / "prometheus.log", "ab") as log:
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--rules.alert.resend-delay=1s"],
            stdout=log, stderr=log, env={**os.environ})
    url = f"http://127.0.0.1:{port}"

    def target_up():
        try:
            targets = httpx.get(f"{url}/api/v1/targets", timeout=2).json()["data"]["activeTargets"]
        except (httpx.HTTPError, ValueError, KeyError):
            return False
        return bool(targets) and all(t["health"] == "up" for t in targets)

    def alerting_loaded():
        rules = httpx.get(f"{url}/api/v1/rules", timeout=5).json()["data"]["groups"]
        managers = httpx.get(f"{url}/api/v1/alertmanagers", timeout=5).json()["data"]["activeAlertmanagers"]
        return bool(rules) and bool(managers)

    try:
        waited("Prometheus scraping the endpoint", target_up, 60)
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(alerting))
        prometheus.send_signal(signal.SIGHUP)
        waited("Prometheus with the rule and Alertmanager", alerting_loaded, 60)
        yield endpoint, webhook, smtp
    finally:
        endpoint.down()
        prometheus.send_signal(signal.SIGTERM)
        try:
            prometheus.wait(timeout=30)
        except subprocess.TimeoutExpired:
            prometheus.kill()
            prometheus.wait(timeout=10)
        alertmanager.stop()


def target_down(notifications, status: str) -> list[dict]:
    return [n for _, n in notifications if n["status"] == status
            and n["groupLabels"].get("alertname") == "TargetDown"]


def test_one_outage_is_one_firing_and_one_resolved_notification_with_summary_and_runbook(pipeline):
    endpoint, webhook, smtp = pipeline
    rule = target_down_rule()
    started = time.monotonic()
    endpoint.down()

    [firing] = waited("the firing notification", lambda: target_down(webhook.notifications(), "firing"))
    print(f"\nfiring notification {time.monotonic() - started:.1f} s after the endpoint went away")
    # Alertmanager's standard webhook JSON, the rule's annotations in it.
    assert firing["version"] == "4" and firing["receiver"] == "tillflow"
    [alert] = firing["alerts"]
    assert alert["status"] == "firing"
    assert alert["labels"]["alertname"] == "TargetDown" and alert["labels"]["severity"] == "critical"
    assert alert["labels"]["job"] == "consumer"
    assert alert["annotations"]["summary"] == f"consumer (127.0.0.1:{endpoint.port}) is down"
    assert alert["annotations"]["runbook"] == rule["annotations"]["runbook"]
    assert "docs/runbook.md#targetdown" in alert["annotations"]["runbook"]
    assert alert["annotations"]["description"].startswith("Prometheus has not scraped the consumer service")

    [mail] = waited("the firing e-mail", lambda: [m for m in smtp.received() if "FIRING" in m.subject])
    assert mail.subject == (f"[Tillflow FIRING] TargetDown (critical): consumer (127.0.0.1:{endpoint.port}) is down")
    assert mail.recipients == ["<oncall@example.com>"] and "tillflow@example.com" in mail.sender
    assert f"Summary: consumer (127.0.0.1:{endpoint.port}) is down" in mail.text
    assert f"Runbook: {rule['annotations']['runbook']}" in mail.text

    endpoint.up()
    back = time.monotonic()
    [resolved] = waited("the resolved notification", lambda: target_down(webhook.notifications(), "resolved"))
    print(f"resolved notification {time.monotonic() - back:.1f} s after the endpoint came back")
    [alert] = resolved["alerts"]
    assert alert["status"] == "resolved" and alert["endsAt"] > alert["startsAt"]
    assert "docs/runbook.md#targetdown" in alert["annotations"]["runbook"]
    [mail] = waited("the resolved e-mail", lambda: [m for m in smtp.received() if "RESOLVED" in m.subject])
    assert mail.subject.startswith("[Tillflow RESOLVED] TargetDown (critical): ")
    assert "RESOLVED: TargetDown (critical)" in mail.text and "Runbook: " in mail.text

    time.sleep(5)  # more than two group intervals: nothing else comes of this outage
    assert len(target_down(webhook.notifications(), "firing")) == 1
    assert len(target_down(webhook.notifications(), "resolved")) == 1
    assert len(smtp.received()) == 2, [m.subject for m in smtp.received()]


def test_without_a_receiver_alertmanager_runs_and_sends_nothing(tmp_path, receivers):
    """The null receiver: a valid configuration that Alertmanager loads, which delivers nowhere."""
    webhook, smtp = receivers
    config = tmp_path / "alertmanager.yml"
    config.write_text(render(Settings.from_env({}), FAST).text, encoding="utf-8")
    alertmanager = Alertmanager(config, tmp_path / "alertmanager").start()
    try:
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        answer = httpx.post(f"{alertmanager.url}/api/v2/alerts", json=[{
            "labels": {"alertname": "TargetDown", "severity": "critical", "job": "consumer"},
            "annotations": {"summary": "consumer is down", "runbook": "docs/runbook.md#targetdown"},
            "startsAt": stamp}], timeout=10)
        assert answer.status_code == 200, answer.text
        groups = waited("the alert grouped", lambda: httpx.get(f"{alertmanager.url}/api/v2/alerts/groups",
                                                                 timeout=5).json())
        assert [g["receiver"]["name"] for g in groups] == ["nobody"]
        time.sleep(3)  # past group_wait: the null receiver sent nothing anywhere
        assert webhook.notifications() == [] and smtp.received() == []
        assert "level=error" not in alertmanager.log(), alertmanager.log()
    finally:
        alertmanager.stop()
