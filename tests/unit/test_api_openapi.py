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


class _Tokens:
    """The app's authenticator for one token, "good", of store "main" (no PostgreSQL needed here)."""

    async def authenticate(self, header):
        from etl.api.auth import Principal
        from etl.api.errors import Unauthorized

        if header != "Bearer good":
            raise Unauthorized()
        return Principal("t1", "main")


def test_the_fast_path_and_the_documented_route_answer_alike():
    """POST /v1/transactions is answered before FastAPI's layers (TillflowAPI.fast_path); the route
    of the same path, in an app without the fast path, gives the same answers, and the request
    metrics label them with the route."""
    from etl.api import metrics

    app, without = create_app(SETTINGS), create_app(SETTINGS)
    without.fast_path = None
    app.state.auth = without.state.auth = _Tokens()
    # Without its route in the router, the app can answer these only through the fast path.
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) != "/v1/transactions"]
    good = {"Authorization": "Bearer good", "Content-Type": "application/json"}
    cases = [
        ({"Content-Type": "application/json"}, b"{}"),
        ({"Authorization": "Bearer bad", "Content-Type": "application/json"}, b"{}"),
        ({"Authorization": "Bearer good", "Content-Type": "text/plain"}, b"{}"),
        (good, b"{not json"),
        (good, b"\xff"),
        (good, b"[]"),
        (good, b"42"),
        (good, b"[" + b",".join([b"{}"] * 26) + b"]"),
        (good, b'{"store_id": "north"}'),
        (good, b"x" * (SETTINGS.api_max_body_bytes + 1)),
    ]

    def counted() -> float:
        return metrics.REQUESTS.labels(route="/v1/transactions", method="POST", status="401")._value.get()

    async def calls(asgi):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://api") as client:
            return [await client.post("/v1/transactions", content=body, headers=headers) for headers, body in cases]

    before = counted()
    fast = asyncio.run(calls(app))
    assert counted() == before + 2  # no token, a wrong one: counted under the route's template
    routed = asyncio.run(calls(without))
    expected = [401, 401, 415, 400, 400, 422, 422, 413, 403, 413]
    assert [r.status_code for r in fast] == expected == [r.status_code for r in routed]
    for one, other in zip(fast, routed):
        assert one.json() == other.json() and set(one.json()) == {"error"}
        assert one.headers["content-type"] == other.headers["content-type"] == "application/json"
        assert one.headers.get("www-authenticate") == other.headers.get("www-authenticate")
    assert fast[0].headers["www-authenticate"] == 'Bearer realm="tillflow"'
    assert fast[8].json()["error"]["code"] == "forbidden_store"


def test_an_unexpected_failure_on_the_fast_path_is_a_500_in_the_one_shape_and_logged(caplog):
    class Broken:
        async def authenticate(self, header):
            raise RuntimeError("/srv/secret/path exploded")

    app = create_app(SETTINGS)
    app.state.auth = Broken()

    async def call():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            return await client.post("/v1/transactions", json={})

    answer = asyncio.run(call())
    assert answer.status_code == 500
    assert answer.json() == {"error": {"code": "internal_error",
                                       "message": "the server failed to answer this request; it has been logged"}}
    assert "secret" not in answer.text
    assert any("unexpected error on POST /v1/transactions" in r.getMessage() and r.exc_info for r in caplog.records)


def test_a_middleware_the_fast_path_would_skip_is_refused_when_the_app_starts():
    """POST /v1/transactions is answered before any middleware: one added later must not
    silently miss the busiest route."""
    app = create_app(SETTINGS)
    app.build_middleware_stack()  # the app as made: its one middleware is covered

    class Audit:
        def __init__(self, app) -> None:
            self.app = app

        async def __call__(self, scope, receive, send) -> None:
            await self.app(scope, receive, send)

    app = create_app(SETTINGS)
    app.add_middleware(Audit)
    with pytest.raises(RuntimeError, match="middleware Audit would never see POST /v1/transactions"):
        app.build_middleware_stack()
