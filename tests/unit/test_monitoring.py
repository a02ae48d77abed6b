"""Monitoring as configuration: the compose services Prometheus, Grafana and the
PostgreSQL exporter, Grafana's provisioning, what Prometheus scrapes, and the
ingest metrics' bounded labels. Read as data: no Docker engine needed."""
from __future__ import annotations

import re
from pathlib import Path

import yaml
from prometheus_client import generate_latest

from etl import metrics as etl_metrics
from tillflow.record import Reason

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


def services() -> dict:
    return compose()["services"]


def prometheus_targets() -> dict[str, set[str]]:
    """job -> host:port targets of prometheus/prometheus.yml (static and DNS)."""
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    jobs: dict[str, set[str]] = {}
    for job in config["scrape_configs"]:
        found = jobs.setdefault(job["job_name"], set())
        for static in job.get("static_configs", []):
            found.update(static["targets"])
        for dns in job.get("dns_sd_configs", []):
            found.update(f"{name}:{dns['port']}" for name in dns["names"])
    return jobs


def env(service: dict) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def mounts(service: dict) -> dict[str, str]:
    """container path -> 'source[:mode]'"""
    found = {}
    for volume in service.get("volumes") or []:
        source, target, *mode = volume.split(":")
        found[target] = ":".join([source, *mode])
    return found


# ---------------------------------------------------------------- Prometheus
def test_prometheus_scrapes_every_service_that_serves_metrics():
    targets = {t for found in prometheus_targets().values() for t in found}
    for name, svc in services().items():
        port = env(svc).get("METRICS_PORT")
        if port:
            assert f"{name}:{port}" in targets, f"{name} serves /metrics on {port} but Prometheus does not scrape it"
    assert "api:8000" in targets, "the API serves /metrics on its own port"
    assert "postgres-exporter:9187" in targets


def test_the_consumer_is_discovered_per_replica():
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    (consumer,) = [job for job in config["scrape_configs"] if job["job_name"] == "consumer"]
    assert consumer["dns_sd_configs"][0]["type"] == "A", "every replica's address, not one at random"


def test_prometheus_is_internal_and_reads_its_configuration_read_only():
    prometheus = services()["prometheus"]
    assert not prometheus.get("ports"), "Prometheus is read through Grafana, never published"
    assert prometheus["networks"] == ["backend"]
    assert mounts(prometheus)["/etc/prometheus"] == "./prometheus:ro"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert any(arg.startswith("--storage.tsdb.retention.size=") for arg in prometheus["command"]), (
        "bound the disk Prometheus may use"
    )


# ---------------------------------------------------------------- Grafana
def test_grafana_is_published_on_the_bind_address_with_no_anonymous_access_or_sign_up():
    grafana = services()["grafana"]
    assert grafana["ports"] == ["${TILLFLOW_BIND:-127.0.0.1}:${GRAFANA_PORT:-3000}:3000"]
    settings = env(grafana)
    assert settings["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert settings["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert settings["GF_USERS_AUTO_ASSIGN_ORG_ROLE"] == "Viewer"
    assert settings["GF_USERS_VIEWERS_CAN_EDIT"] == "false"
    assert settings["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in settings, "no admin password in the environment"
    assert "grafana_admin_password" in grafana["secrets"]


def test_grafana_provisioning_and_dashboards_are_mounted_read_only():
    grafana = services()["grafana"]
    found = mounts(grafana)
    assert found["/etc/grafana/provisioning"] == "./grafana/provisioning:ro"
    assert found["/etc/grafana/dashboards"] == "./grafana/dashboards:ro"
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "tillflow.yml").read_text(encoding="utf-8"))
    (files,) = provider["providers"]
    assert files["options"]["path"] == "/etc/grafana/dashboards"
    assert files["allowUiUpdates"] is False and files["disableDeletion"] is True
    home = env(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (GRAFANA / "dashboards" / Path(home).name).is_file() and home.startswith("/etc/grafana/dashboards/")


def test_grafana_reads_postgresql_as_the_reader_with_the_password_from_its_secret():
    grafana = services()["grafana"]
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "tillflow.yml").read_text(encoding="utf-8"))
    by_uid = {ds["uid"]: ds for ds in datasources["datasources"]}
    assert set(by_uid) == {"tillflow-postgres", "tillflow-prometheus"}
    postgres = by_uid["tillflow-postgres"]
    assert postgres["user"] == "tillflow_reader" and postgres["jsonData"]["database"] == "tillflow"
    secret = re.fullmatch(r"\$__file\{/run/secrets/([a-z_]+)\}", postgres["secureJsonData"]["password"])
    assert secret and secret.group(1) == "tillflow_reader_password" and secret.group(1) in grafana["secrets"]
    assert by_uid["tillflow-prometheus"]["url"] == "http://prometheus:9090"
    assert all(ds["editable"] is False for ds in by_uid.values())


# ---------------------------------------------------------------- PostgreSQL exporter
def test_the_exporter_connects_as_the_monitoring_role_with_a_secret_file():
    exporter = services()["postgres-exporter"]
    settings = env(exporter)
    assert settings["DATA_SOURCE_USER"] == "tillflow_monitor"
    assert settings["DATA_SOURCE_PASS_FILE"] == "/run/secrets/tillflow_monitor_password"
    assert "DATA_SOURCE_NAME" not in settings, "a DSN would carry the password"
    assert exporter["secrets"] == ["tillflow_monitor_password"]
    migrate = services()["migrate"]
    assert env(migrate)["TILLFLOW_MONITOR_PASSWORD_FILE"] == "/run/secrets/tillflow_monitor_password"
    assert exporter["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


# ---------------------------------------------------------------- ingest metrics
def test_reason_codes_fold_into_a_fixed_set_of_classes():
    assert etl_metrics.reason_class("amount_inc_tax", "tax_mismatch") == "tax"
    assert etl_metrics.reason_class("row", "column_count") == "structure"
    assert etl_metrics.reason_class("row", "anything_new") == "structure"
    assert etl_metrics.reason_class("quantity", "out_of_range") == "range"
    assert etl_metrics.reason_class("name", "nul_byte") == "characters"
    assert etl_metrics.reason_class("id", "missing") == "missing"
    assert etl_metrics.reason_class("id", "a_code_added_later") == "other"
    assert set(etl_metrics._CLASS_OF_CODE.values()) <= set(etl_metrics.REASON_CLASSES)


def sample(name: str, **labels: str) -> float:
    text = generate_latest().decode()
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        metric, _, value = line.rpartition(" ")
        if metric.startswith(name + "{"):
            got = ",".join(sorted(metric[len(name) + 1:-1].split(",")))
            if got == wanted:
                return float(value)
    raise AssertionError(f"{name}{{{wanted}}} is not exported")


def test_a_rejected_record_counts_once_per_class_it_breaks():
    before_format = sample("tillflow_etl_rejects_total", source="ws", reason="format")
    before_tax = sample("tillflow_etl_rejects_total", source="ws", reason="tax")
    etl_metrics.count_rejected("ws", [
        Reason("quantity", "not_integer", "x"), Reason("transaction_date", "invalid_date", "y"),
        Reason("amount_inc_tax", "tax_mismatch", "z"),
    ])
    assert sample("tillflow_etl_rejects_total", source="ws", reason="format") == before_format + 1
    assert sample("tillflow_etl_rejects_total", source="ws", reason="tax") == before_tax + 1


def test_every_labelled_ingest_series_exists_before_its_first_event():
    for source in etl_metrics.SOURCES:
        for outcome in ("accepted", "rejected"):
            sample("tillflow_etl_records_total", source=source, outcome=outcome)
        for reason in etl_metrics.REASON_CLASSES:
            sample("tillflow_etl_rejects_total", source=source, reason=reason)
        sample("tillflow_etl_uploads_total", source=source)
    for outcome in etl_metrics.WATCH_OUTCOMES:
        sample("tillflow_watch_files_total", outcome=outcome)
