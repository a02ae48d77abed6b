"""A real Prometheus (Debian's package) scraping the running Tillflow services.

The test starts ``tillflow consume``, ``tillflow watch``, ``tillflow serve``,
``tillflow backup schedule`` and Debian's PostgreSQL exporter (as
tillflow_monitor) against this test's database, topics and three brokers, and
a Prometheus of its own with a generated configuration that scrapes them and
loads prometheus/alerts.yml. Then:

* every target is up, and every alerting rule evaluates without error;
* every metric name an alert or a dashboard uses exists in what was scraped
  (a name that appears only after some event must be declared at zero);
* every dashboard expression evaluates on the real server;
* the values that say "healthy" say so: three brokers, nothing
  under-replicated, PostgreSQL up.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from devstack.proc import free_port
from support.api import ApiServer

ROOT = Path(__file__).resolve().parents[2]
TILLFLOW = str(Path(sys.executable).with_name("tillflow"))
ALERTS = ROOT / "prometheus" / "alerts.yml"
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
EXPORTER = "prometheus-postgres-exporter"  # Debian's name for postgres_exporter

# Series Prometheus makes itself rather than scrapes.
BUILT_IN = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds", "scrape_samples_scraped"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless",
            "inf", "nan"}
GRAFANA_DURATIONS = re.compile(r"\$\{?(__rate_interval|__interval|__range)\}?")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range durations
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    names = re.findall(r"(?<![\w:.$])([A-Za-z_:][\w:]*)\b(?!\s*\()", text)
    return {n for n in names if n.lower() not in KEYWORDS}


def alert_expressions() -> list[tuple[str, str]]:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return [(rule["alert"], rule["expr"]) for group in groups for rule in group["rules"]]


def dashboard_expressions() -> list[tuple[str, str]]:
    found = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text(encoding="utf-8"))["panels"]:
            for target in panel.get("targets", []):
                if target["datasource"]["type"] == "prometheus":
                    found.append((f"{path.stem}: {panel['title']}", target["expr"]))
    return found


def test_metric_names_are_read_from_expressions_like_prometheus_would():
    assert metric_names('sum by (topic_kind) (rate(a_total{x="y"}[5m])) > 0') == {"a_total"}
    assert metric_names("histogram_quantile(0.95, sum by (le) (rate(b_bucket[$__rate_interval])))") == {"b_bucket"}
    assert metric_names('pg_up == 0 or (c == 0 and increase(d[5m]) > 0)') == {"pg_up", "c", "d"}
    assert metric_names("time() - max(e) > 26 * 3600 and on () absent(up{job=\"x\"})") == {"e", "up"}


# ---------------------------------------------------------------- processes
class Processes:
    """Children started by this test, stopped with SIGTERM (then SIGKILL) at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=log, stderr=log)
        self.running.append((name, proc))
        return proc

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop_all(self) -> None:
        for _, proc in reversed(self.running):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in self.running:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except (httpx.HTTPError, OSError, ValueError) as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"{what} within {timeout:.0f}s (last error: {last})")


@pytest.fixture
def stack(env, migrated_db, tmp_path):
    """Every Tillflow service with its /metrics, the exporter, and a Prometheus scraping them."""
    for binary in ("prometheus", EXPORTER):
        assert shutil.which(binary), f"{binary} is missing: `make deps` installs Debian's package of that name"
    procs = Processes(tmp_path)
    api = ApiServer(env, tmp_path / "api.log")
    ports = {name: free_port() for name in ("consumer", "watcher", "backup", "postgres", "prometheus")}
    try:
        Path(env["INBOX_DIR"]).mkdir(parents=True, exist_ok=True)
        procs.start("consumer", [TILLFLOW, "consume"], {**env, "METRICS_PORT": str(ports["consumer"])})
        procs.start("watcher", [TILLFLOW, "watch"], {**env, "METRICS_PORT": str(ports["watcher"])})
        procs.start("backup", [TILLFLOW, "backup", "schedule"], {
            **env, "DATABASE_URL": migrated_db.url("backup"), "BACKUP_DIR": str(tmp_path / "backups"),
            "METRICS_PORT": str(ports["backup"]),
        })
        password_file = tmp_path / "monitor_password"
        password_file.write_text(migrated_db.passwords["monitor"], encoding="utf-8")
        server = migrated_db.server
        procs.start("postgres", [EXPORTER, f"--web.listen-address=127.0.0.1:{ports['postgres']}"], {
            "DATA_SOURCE_URI": f"{server.host}:{server.port}/{migrated_db.name}?sslmode=disable",
            "DATA_SOURCE_USER": "tillflow_monitor", "DATA_SOURCE_PASS_FILE": str(password_file),
        })
        api.start()
        # One answered request, so that the per-route request series exist.
        assert httpx.get(f"{api.url}/healthz", timeout=5).status_code == 200

        targets = {name: f"127.0.0.1:{ports[name]}" for name in ("consumer", "watcher", "backup", "postgres")}
        targets["api"] = f"127.0.0.1:{api.port}"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                               for job, target in targets.items()],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
        url = f"http://127.0.0.1:{ports['prometheus']}"
        procs.start("prometheus", [
            "prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
        ], {})
        wait_until(lambda: httpx.get(f"{url}/-/ready", timeout=2).status_code == 200, 60, "Prometheus is not ready")

        def all_up():
            active = httpx.get(f"{url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
            return len(active) == len(targets) and all(t["health"] == "up" for t in active)

        try:
            wait_until(all_up, 90, "not every target is up")
        except AssertionError:
            active = httpx.get(f"{url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
            details = "\n".join(f"{t['labels']['job']}: {t['health']} {t['lastError']}" for t in active)
            logs = "\n".join(f"--- {name}\n{procs.log(name)}" for name in targets)
            raise AssertionError(f"not every target is up:\n{details}\n{logs}") from None
        yield url
    finally:
        api.stop()
        procs.stop_all()


def query(url: str, expr: str) -> list[dict]:
    answer = httpx.post(f"{url}/api/v1/query", data={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", f"{expr}: {answer.get('error')}"
    return answer["data"]["result"]


def scalar(url: str, expr: str) -> float | None:
    result = query(url, expr)
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_every_name_the_alerts_and_dashboards_use(stack):
    """One stack for every check: starting it is most of this test's time."""
    url = stack
    # The consumer's first cluster probe may come a moment after its first scrape.
    wait_until(lambda: scalar(url, "max(tillflow_kafka_brokers)") == 3, 60,
               "the consumer does not report 3 Kafka brokers")
    scraped = set(httpx.get(f"{url}/api/v1/label/__name__/values", timeout=10).json()["data"])
    used: dict[str, str] = {}
    for where, expr in alert_expressions() + dashboard_expressions():
        for name in metric_names(expr):
            used.setdefault(name, where)
    missing = {name: where for name, where in used.items() if name not in scraped and name not in BUILT_IN}
    assert not missing, f"used but never scraped (declare them, at zero if labelled): {missing}"

    for _, expr in dashboard_expressions():
        query(url, GRAFANA_DURATIONS.sub("5m", expr))  # evaluates without error
    for _, expr in alert_expressions():
        query(url, expr)

    def evaluated():
        groups = httpx.get(f"{url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return rules if rules and all(rule["health"] != "unknown" for rule in rules) else None

    rules = wait_until(evaluated, 30, "the alerting rules were not evaluated")
    assert {rule["name"] for rule in rules} == {alert for alert, _ in alert_expressions()}
    broken = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not broken, broken

    # What a healthy stack reports.
    assert scalar(url, "sum(tillflow_kafka_under_replicated_partitions)") == 0
    assert scalar(url, "sum(tillflow_kafka_offline_partitions)") == 0
    assert scalar(url, "min(pg_up)") == 1, "the exporter reaches PostgreSQL as tillflow_monitor"
    assert scalar(url, 'max(pg_database_size_bytes{datname=~"t_.*"})') > 0, "pg_monitor shows database sizes"
    assert scalar(url, "min(up)") == 1
