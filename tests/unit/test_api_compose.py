"""The API in the production stack: docker-compose.yml and the native `make local` stack."""
from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


def test_the_api_is_the_only_published_ingest_port_bound_to_loopback_by_default():
    services = compose()["services"]
    api = services["api"]
    assert api["command"] == ["serve"] and api["restart"] == "always"
    assert api["ports"] == ["${TILLFLOW_BIND:-127.0.0.1}:${TILLFLOW_API_PORT:-8000}:8000"]
    assert api["environment"]["API_HOST"] == "0.0.0.0" and str(api["environment"]["API_PORT"]) == "8000"
    published = {name for name, svc in services.items() if svc.get("ports")}
    assert published <= {"api", "grafana"}


def test_the_api_joins_a_routable_network_besides_the_internal_one():
    doc = compose()
    assert doc["services"]["api"]["networks"] == ["backend", "frontend"]
    assert not (doc["networks"]["frontend"] or {}).get("internal")
    assert doc["networks"]["backend"]["internal"] is True


def test_the_api_is_checked_on_healthz_and_starts_after_the_schema_and_topics():
    api = compose()["services"]["api"]
    assert "http://127.0.0.1:8000/healthz" in " ".join(api["healthcheck"]["test"])
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert api["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert api["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_the_api_connects_as_the_writer_and_spools_uploads_on_a_volume():
    doc = compose()
    api = doc["services"]["api"]
    assert api["environment"]["DATABASE_URL"].startswith("postgresql://tillflow_writer@")
    assert api["secrets"] == ["tillflow_writer_password"]
    assert "api-spool:/data/spool" in api["volumes"] and "api-spool" in doc["volumes"]
    assert api["environment"]["API_SPOOL_DIR"] == "/data/spool"
    assert "/data/spool" in (ROOT / "Dockerfile").read_text(encoding="utf-8"), "the image must own the mount point"


def test_make_local_starts_the_api_and_exports_its_url():
    from devstack import local

    assert local.SERVICES["api"] == ["serve"]
    assert local.API_URL == f"http://127.0.0.1:{local.API_PORT}"
    assert "TILLFLOW_API_URL" in (ROOT / "devstack" / "local.py").read_text(encoding="utf-8")
