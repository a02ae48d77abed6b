"""The API's OpenAPI document and error shape, from the app alone (no services)."""
from __future__ import annotations

import asyncio

import httpx
import pytest

from etl.api.app import create_app
from tillflow.config import Settings

SETTINGS = Settings.from_env({"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
                              "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "API_MAX_BATCH": "25"})


@pytest.fixture(scope="module")
def document() -> dict:
    return create_app(SETTINGS).openapi()


def test_every_route_is_documented_with_its_errors(document):
    paths = document["paths"]
    assert set(paths) == {"/v1/transactions", "/v1/uploads", "/v1/uploads/{upload_id}", "/healthz", "/readyz",
                          "/metrics"}
    post = paths["/v1/transactions"]["post"]
    assert set(post["responses"]) == {"200", "400", "401", "403", "413", "415", "422", "503"}
    assert "Retry-After" in post["responses"]["503"]["headers"]
    assert set(paths["/v1/uploads"]["post"]["responses"]) >= {"201", "401", "413", "415", "422", "503"}


def test_the_transactions_body_is_one_object_or_a_bounded_array(document):
    schema = document["paths"]["/v1/transactions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    single, array = schema["anyOf"]
    assert single["type"] == "object" and {"id", "amount_excl_tax"} <= set(single["properties"])
    assert (array["type"], array["minItems"], array["maxItems"]) == ("array", 1, 25)


def test_writes_require_the_bearer_scheme(document):
    assert document["components"]["securitySchemes"]["token"] == {
        "type": "http", "scheme": "bearer", "description": document["components"]["securitySchemes"]["token"][
            "description"]}
    for path in ("/v1/transactions", "/v1/uploads"):
        assert document["paths"][path]["post"]["security"] == [{"token": []}]
    assert "security" not in document["paths"]["/healthz"]["get"]


def test_unknown_routes_and_methods_answer_in_the_one_error_shape():
    async def calls():
        # ASGITransport runs no lifespan: nothing here needs Kafka or PostgreSQL.
        transport = httpx.ASGITransport(app=create_app(SETTINGS))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return [await client.get("/nowhere"), await client.delete("/v1/transactions"),
                    await client.get("/healthz"), await client.get("/docs")]

    missing, wrong, health, docs = asyncio.run(calls())
    assert missing.status_code == 404 and missing.json() == {"error": {"code": "not_found", "message": "Not Found"}}
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
    assert health.json() == {"status": "ok"}
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
