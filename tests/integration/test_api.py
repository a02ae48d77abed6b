"""The HTTP API end to end, against the real Kafka cluster and PostgreSQL: every
route and error path, tokens, uploads, limits, schemathesis, and a Kafka outage.

Invariants are computed from sets of ids: what the API answered "accepted" is
stored exactly once after ``tillflow consume``; what it refused is not stored,
and nothing was published for it."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from tillflow import sample
from etl.api import tokens
from support.api import (
    DAY, ApiServer, assert_each_stored_once, consume_until_idle, query, stored_ids, tillflow, topic_size,
    transaction, wait_for,
)

UNAUTHORIZED = {"error": {"code": "unauthorized",
                          "message": "a valid bearer token is required: send Authorization: Bearer <token>"}}


def published(running_kafka, topics) -> tuple[int, int]:
    servers = running_kafka.bootstrap_servers
    return topic_size(servers, topics.transactions), topic_size(servers, topics.rejects)


# -- operations ---------------------------------------------------------------------------
def test_health_readiness_metrics_openapi_and_docs(server):
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "kafka": "ok"}
    metrics = httpx.get(f"{server.url}/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert 'tillflow_api_requests_total{method="GET",route="/readyz",status="200"} 1.0' in metrics.text
    document = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/v1/transactions", "/v1/uploads", "/v1/uploads/{upload_id}"} <= set(document["paths"])
    assert "swagger-ui" in httpx.get(f"{server.url}/docs").text


# -- transactions -------------------------------------------------------------------------
def test_one_transaction_is_stored_once_with_where_it_came_from(server, token, api_env, migrated_db):
    item = transaction(cents=1234)
    with server.client(token) as client:
        answer = client.post("/v1/transactions", json=item)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["results"] == [{"index": 0, "id": item["id"], "status": "accepted"}]
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (1, 0, 0)
    assert answer.headers["x-request-id"] == body["request_id"]
    consume_until_idle(api_env)
    rows = query(migrated_db, "SELECT id::text, amount_excl_tax, amount_inc_tax, store_id, source, source_ref,"
                              " source_line FROM sales.transactions")
    assert rows == [(item["id"], Decimal("12.34"), Decimal("14.81"), "main", "api", body["request_id"], 1)]
    assert query(migrated_db, "SELECT last_used_at IS NOT NULL FROM api.tokens") == [(True,)]


def test_a_batch_answers_each_item_and_keeps_rejects_and_conflicts(server, token, api_env, migrated_db):
    good = [transaction(cents=100 + i) for i in range(5)]
    bad = transaction(id="not-a-uuid", quantity=0, category="GIFT")
    conflicting = dict(good[1], quantity=9)
    items = [*good, dict(good[0]), bad, 42, conflicting]
    with server.client(token) as client:
        body = client.post("/v1/transactions", json=items).json()
    statuses = [r["status"] for r in body["results"]]
    assert statuses == ["accepted"] * 5 + ["duplicate_in_request", "rejected", "rejected", "duplicate_in_request"]
    assert body["results"][5]["duplicate_of"] == 0 and "conflict" not in body["results"][5]
    assert body["results"][8] == {"index": 8, "id": good[1]["id"], "status": "duplicate_in_request",
                                  "duplicate_of": 1, "conflict": True}
    codes = {r["code"] for r in body["results"][6]["reasons"]}
    assert {"invalid_uuid", "out_of_range", "unknown_category"} <= codes
    consume_until_idle(api_env)
    assert stored_ids(migrated_db) == {g["id"] for g in good}
    assert_each_stored_once(migrated_db)
    rejects = query(migrated_db, "SELECT transaction_id, reasons, source, source_line FROM ingest.rejects"
                                 " ORDER BY source_line")
    assert [(r[0], r[2], r[3]) for r in rejects] == [("not-a-uuid", "api", 7), (None, "api", 8)]
    assert {reason["code"] for reason in rejects[0][1]} == codes
    conflicts = query(migrated_db, "SELECT transaction_id::text, stored->>'quantity', incoming->>'quantity'"
                                   " FROM ingest.conflicts")
    assert conflicts == [(good[1]["id"], "2", "9")]


def test_retrying_the_same_request_stores_each_id_once(server, token, api_env, migrated_db):
    items = [transaction(cents=200 + i) for i in range(50)]
    with server.client(token) as client:
        for _ in range(3):
            assert client.post("/v1/transactions", json=items).json()["accepted"] == 50
    consume_until_idle(api_env)
    assert stored_ids(migrated_db) == {i["id"] for i in items}
    assert_each_stored_once(migrated_db)
    assert query(migrated_db, "SELECT count(*) FROM ingest.conflicts") == [(0,)]


def test_amounts_as_json_numbers_are_exact_decimals(server, token, api_env, migrated_db):
    exact = transaction()
    body = json.dumps(exact).replace(f'"{exact["amount_excl_tax"]}"', "9999999.99").replace(
        f'"{exact["amount_inc_tax"]}"', "11999999.99")
    ten = transaction()
    ten_body = json.dumps(ten).replace(f'"{ten["amount_excl_tax"]}"', "1e1").replace(
        f'"{ten["amount_inc_tax"]}"', "12")
    too_fine = transaction()
    fine_body = json.dumps(too_fine).replace(f'"{too_fine["amount_excl_tax"]}"', "0.105")
    payload = f"[{body}, {ten_body}, {fine_body}]"
    with server.client(token) as client:
        answer = client.post("/v1/transactions", content=payload, headers={"Content-Type": "application/json"})
    assert [r["status"] for r in answer.json()["results"]] == ["accepted", "accepted", "rejected"]
    assert "too_many_decimals" in {r["code"] for r in answer.json()["results"][2]["reasons"]}
    consume_until_idle(api_env)
    amounts = dict(query(migrated_db, "SELECT id::text, amount_excl_tax FROM sales.transactions"))
    assert amounts == {exact["id"]: Decimal("9999999.99"), ten["id"]: Decimal("10.00")}


@pytest.mark.parametrize(("content", "content_type", "status", "code"), [
    (b"{", "application/json", 400, "invalid_json"),
    (b'{"amount_excl_tax": NaN}', "application/json", 400, "invalid_json"),
    (b'\xff{"id": 1}', "application/json", 400, "invalid_json"),
    (b'"text"', "application/json", 422, "unprocessable"),
    (b"[]", "application/json", 422, "unprocessable"),
    (b"{}", "text/plain", 415, "unsupported_media_type"),
    (b"{}", None, 415, "unsupported_media_type"),
])
def test_bodies_that_cannot_be_read_are_refused_and_nothing_is_published(
        server, token, running_kafka, topics, content, content_type, status, code):
    headers = {"Content-Type": content_type} if content_type else {}
    with server.client(token) as client:
        answer = client.post("/v1/transactions", content=content, headers=headers)
    assert answer.status_code == status and answer.json()["error"]["code"] == code, answer.text
    assert published(running_kafka, topics) == (0, 0)


def test_limits_on_body_size_and_batch_length_are_413(api_env, tmp_path, token, running_kafka, topics):
    api_env.update(API_MAX_BODY_BYTES="4096", API_MAX_BATCH="10")
    server = ApiServer(api_env, tmp_path / "api.log").start()
    try:
        with server.client(token) as client:
            big = client.post("/v1/transactions", json=[transaction(name="x" * 150) for _ in range(30)])
            assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large"

            def chunks():  # no Content-Length: the limit holds on the bytes received
                for _ in range(20):
                    yield b" " * 1000
                yield b"{}"

            streamed = client.post("/v1/transactions", content=chunks(), headers={"Content-Type": "application/json"})
            assert streamed.status_code == 413
            many = client.post("/v1/transactions", json=[{"id": str(i)} for i in range(11)])
            assert many.status_code == 413 and many.json()["error"]["code"] == "batch_too_large"
            assert client.post("/v1/transactions", json=[transaction() for _ in range(10)]).status_code == 200
    finally:
        assert server.stop() == 0
    assert published(running_kafka, topics) == (10, 0)


# -- security ------------------------------------------------------------------------------
def test_no_or_bad_token_is_401_and_never_says_why(api_env, tmp_path, migrated_db, running_kafka, topics):
    api_env["API_AUTH_CACHE_SECONDS"] = "0"
    good = tokens.create(migrated_db.url("owner"), "main")
    revoked = tokens.create(migrated_db.url("owner"), "main")
    token_id, secret = tokens.parse(good)
    tokens.revoke(migrated_db.url("owner"), tokens.parse(revoked)[0])
    server = ApiServer(api_env, tmp_path / "api.log").start()
    variants = {
        "missing": {}, "basic": {"Authorization": "Basic dXNlcjpwYXNz"}, "empty": {"Authorization": "Bearer"},
        "malformed": {"Authorization": "Bearer tillflow_nope"},
        "unknown id": {"Authorization": f"Bearer tillflow_{'0' * 12}_{secret}"},
        "wrong secret": {"Authorization": f"Bearer tillflow_{token_id}_{secret[::-1]}"},
        "revoked": {"Authorization": f"Bearer {revoked}"},
    }
    try:
        with httpx.Client(base_url=server.url) as client:
            for what, headers in variants.items():
                for method, path, kwargs in (("POST", "/v1/transactions", {"json": transaction()}),
                                             ("POST", "/v1/uploads", {"content": b"x"}),
                                             ("GET", f"/v1/uploads/{uuid.uuid4()}", {})):
                    answer = client.request(method, path, headers=headers, **kwargs)
                    assert answer.status_code == 401, (what, path, answer.text)
                    assert answer.json() == UNAUTHORIZED, what
                    assert answer.headers["www-authenticate"] == 'Bearer realm="tillflow"'
            assert client.post("/v1/transactions", json=transaction(),
                               headers={"Authorization": f"Bearer {good}"}).status_code == 200
            tokens.revoke(migrated_db.url("owner"), token_id)
            assert client.post("/v1/transactions", json=transaction(),
                               headers={"Authorization": f"Bearer {good}"}).status_code == 401
    finally:
        assert server.stop() == 0
    assert published(running_kafka, topics) == (1, 0)
    log = server.log()
    assert secret not in log and secret[::-1] not in log and "Traceback" not in log


def test_a_token_for_another_store_is_refused_and_nothing_is_stored(server, migrated_db, api_env, running_kafka,
                                                                    topics):
    north = tokens.create(migrated_db.url("owner"), "north")
    mine = [transaction(cents=300 + i) for i in range(3)]
    theirs = transaction(store_id="main")
    with server.client(north) as client:
        whole = client.post("/v1/transactions", json=[*mine, theirs])
        assert whole.status_code == 403, whole.text
        assert whole.json()["error"] == {
            "code": "forbidden_store",
            "message": "item 3 names another store than this token's (north): nothing was published;"
                       " use a token of that store"}
        assert client.post("/v1/transactions", json=theirs).status_code == 403
        assert client.post("/v1/transactions", json=dict(mine[0], store_id=7)).status_code == 403
        assert published(running_kafka, topics) == (0, 0)
        ok = client.post("/v1/transactions", json=[mine[0], dict(mine[1], store_id="north"), dict(mine[2],
                                                                                               store_id="")])
        assert ok.json()["accepted"] == 3
    consume_until_idle(api_env)
    assert stored_ids(migrated_db) == {m["id"] for m in mine}
    assert query(migrated_db, "SELECT DISTINCT store_id FROM sales.transactions") == [("north",)]


def test_token_commands_create_list_and_revoke(migrated_db, api_env):
    owner = {**api_env, "DATABASE_URL": migrated_db.url("owner")}
    made = tillflow(owner, "token", "create", "--store", "main", "--name", "till 3")
    assert re.fullmatch(r"tillflow_[0-9a-f]{12}_[A-Za-z0-9_-]{43}\n", made.stdout), made.stdout
    token_id, secret = tokens.parse(made.stdout.strip())
    listed = tillflow(owner, "token", "list").stdout
    assert token_id in listed and "till 3" in listed and "main" in listed and secret not in listed
    stored_hash = query(migrated_db, "SELECT encode(secret_sha256, 'hex') FROM api.tokens")[0][0]
    assert secret not in stored_hash and made.stdout.strip() not in stored_hash
    assert tillflow(owner, "token", "revoke", token_id).stdout == f"token {token_id} revoked\n"
    assert tillflow(owner, "token", "revoke", token_id).stdout == f"token {token_id} was already revoked\n"
    for args, words in ((["revoke", "0" * 12], "no token"), (["revoke", "x"], "not a token id"),
                        (["create", "--store", "bad store"], "store"), (["create", "--store", ".x"], "start")):
        refused = tillflow(owner, "token", *args, check=False)
        assert refused.returncode == 1 and words in refused.stderr and refused.stdout == "", refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    as_writer = tillflow(api_env, "token", "create", "--store", "main", check=False)
    assert as_writer.returncode == 1 and "tillflow_owner" in as_writer.stderr and as_writer.stdout == ""


# -- uploads ---------------------------------------------------------------------------------
def _csv(tmp_path: Path, n: int, seed: int, name: str | None = None) -> tuple[Path, list]:
    rows = list(sample.rows(n, seed=seed, start=DAY, days=1))
    (tmp_path / "files").mkdir(exist_ok=True)
    path = sample.write_csv(tmp_path / "files" / (name or sample.csv_name(DAY)), rows)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("not-a-uuid,SELL,Milk,1,1.00,1.20\n")
    return path, rows


def test_uploads_have_the_semantics_and_summary_of_tillflow_load(server, token, api_env, migrated_db, tmp_path):
    path, rows = _csv(tmp_path, 300, seed=31)
    other, other_rows = _csv(tmp_path, 50, seed=32, name="evening.csv")
    with server.client(token) as client:
        raw = client.post(f"/v1/uploads?filename={path.name}", content=path.read_bytes(),
                          headers={"Content-Type": "text/csv"})
        assert raw.status_code == 201, raw.text
        summary = raw.json()
        assert raw.headers["location"] == f"/v1/uploads/{summary['upload_id']}"
        assert {k: summary[k] for k in ("file", "rows_read", "rows_accepted", "rows_rejected", "store_id",
                                        "transaction_date", "status", "reasons")} == {
            "file": path.name, "rows_read": 301, "rows_accepted": 300, "rows_rejected": 1, "store_id": "main",
            "transaction_date": DAY.isoformat(), "status": "published", "reasons": {"invalid_uuid": 1}}
        assert summary["first_reasons"] == ["line 302: id 'not-a-uuid' is not a UUID"]
        multipart = client.post("/v1/uploads", params={"date": "2026-02-01"},
                                files={"file": (other.name, other.read_bytes(), "text/csv")})
        assert multipart.status_code == 201, multipart.text
        assert (multipart.json()["rows_accepted"], multipart.json()["transaction_date"]) == (50, "2026-02-01")
        again = client.post("/v1/uploads", files={"file": (path.name, path.read_bytes(), "text/csv")})
        assert again.status_code == 201 and again.json()["sha256"] == summary["sha256"]
        record = client.get(f"/v1/uploads/{summary['upload_id']}")
        assert record.status_code == 200
        assert {k: record.json()[k] for k in ("file", "source", "store_id", "rows_read", "rows_accepted",
                                              "rows_rejected", "status", "size_bytes", "sha256")} == {
            "file": path.name, "source": "upload", "store_id": "main", "rows_read": 301, "rows_accepted": 300,
            "rows_rejected": 1, "status": "published", "size_bytes": path.stat().st_size,
            "sha256": summary["sha256"]}
    loaded = tillflow(api_env, "load", str(path)).stdout
    assert f"{path.name}: 301 rows read, 300 accepted, 1 rejected" in loaded
    consume_until_idle(api_env)
    assert stored_ids(migrated_db) == {r.id for r in rows} | {r.id for r in other_rows}
    assert_each_stored_once(migrated_db)
    dates = dict(query(migrated_db, "SELECT id::text, transaction_date FROM sales.transactions"))
    assert {dates[r.id].isoformat() for r in other_rows} == {"2026-02-01"}
    assert query(migrated_db, "SELECT count(*) FROM ingest.rejects") == [(4,)]


def test_upload_errors(api_env, tmp_path, token, migrated_db, running_kafka, topics):
    api_env["API_MAX_UPLOAD_BYTES"] = "8192"
    server = ApiServer(api_env, tmp_path / "api.log").start()
    path, _ = _csv(tmp_path, 20, seed=33)
    big, _ = _csv(tmp_path, 300, seed=34, name="retail_06_01_2026.csv")
    north = tokens.create(migrated_db.url("owner"), "north")
    try:
        with server.client(token) as client:
            def error(answer) -> tuple[int, str]:
                return answer.status_code, answer.json()["error"]["code"]

            assert error(client.post("/v1/uploads", content=big.read_bytes(),
                                     headers={"Content-Type": "text/csv"})) == (413, "payload_too_large")
            assert error(client.post("/v1/uploads", files={"file": (big.name, big.read_bytes())})) == (
                413, "payload_too_large")
            no_date = client.post("/v1/uploads", files={"file": ("sales.csv", path.read_bytes())})
            assert error(no_date) == (422, "no_date") and "retail_DD_MM_YYYY.csv" in no_date.json()["error"]["message"]
            assert error(client.post("/v1/uploads?filename=retail_31_02_2026.csv", content=path.read_bytes(),
                                     headers={"Content-Type": "text/csv"})) == (422, "no_date")
            header = client.post("/v1/uploads?date=2026-01-05", files={"file": ("x.csv", b"a,b\n1,2\n")})
            assert error(header) == (422, "unreadable_file")
            assert header.json()["error"]["message"].startswith("x.csv: ")
            assert "tillflow-upload" not in header.text and "/tmp" not in header.text
            assert error(client.post("/v1/uploads", content=b"{}", headers={"Content-Type": "application/json"})) \
                == (415, "unsupported_media_type")
            assert error(client.post("/v1/uploads", data={"date": "2026-01-05"}, files={"other": ("", b"")})) == (
                422, "unprocessable")
            assert error(client.post("/v1/uploads?date=05-01-2026", content=b"x",
                                     headers={"Content-Type": "text/csv"}))[0] == 422
            assert error(client.get(f"/v1/uploads/{uuid.uuid4()}")) == (404, "not_found")
            assert error(client.get("/v1/uploads/not-a-uuid")) == (422, "unprocessable")
            mine = client.post(f"/v1/uploads?filename={path.name}", content=path.read_bytes(),
                               headers={"Content-Type": "text/csv"}).json()["upload_id"]
        with server.client(north) as client:
            assert client.get(f"/v1/uploads/{mine}").status_code == 404, "another store's upload is not shown"
    finally:
        assert server.stop() == 0
    assert published(running_kafka, topics) == (20, 1), "only the one good upload was published"


# -- schemathesis -------------------------------------------------------------------------------
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
          "response_schema_conformance")


def test_schemathesis_finds_no_server_error_and_no_response_breaking_the_schema(server, token, tmp_path):
    schemathesis = Path(sys.executable).with_name("st")
    done = subprocess.run(
        [str(schemathesis), "run", f"{server.url}/openapi.json", "--checks", CHECKS, "-H",
         f"Authorization: Bearer {token}", "--max-examples", "40", "--workers", "1", "--request-timeout", "60",
         "--no-color", "--report", "junit", "--report-dir", str(tmp_path / "schemathesis")],
        capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "passed" in done.stdout and " failed" not in done.stdout.split("SUMMARY")[-1]


# -- Kafka outage ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_kafka_down_is_503_with_retry_after_nothing_confirmed_and_recovery_by_itself(
        api_env, tmp_path, token, running_kafka, migrated_db):
    api_env["API_PUBLISH_TIMEOUT_SECONDS"] = "3"
    server = ApiServer(api_env, tmp_path / "api.log").start()
    items = [transaction(cents=400 + i) for i in range(20)]
    nodes = running_kafka.nodes
    try:
        with server.client(token) as client:
            assert client.post("/v1/transactions", json=items[:1]).status_code == 200
            for node in nodes[:2]:  # no quorum, fewer than min.insync.replicas: nothing can be acknowledged
                node.stop(signal.SIGKILL)
            started = time.monotonic()
            down = client.post("/v1/transactions", json=items)
            assert down.status_code == 503, down.text
            assert down.headers["retry-after"] == "5" and down.json()["error"]["code"] == "kafka_unavailable"
            assert time.monotonic() - started < 20
            nodes[2].stop(signal.SIGKILL)  # now unreachable altogether
            wait_for(lambda: httpx.get(f"{server.url}/readyz", timeout=10).status_code == 503, 30, "/readyz 503")
            started = time.monotonic()
            assert client.post("/v1/transactions", json=items).status_code == 503
            assert time.monotonic() - started < 5, "while Kafka is known to be down, 503 comes at once"
            assert httpx.get(f"{server.url}/healthz").status_code == 200, "alive, only not ready"
            for node in nodes:
                node.start()
            for node in nodes:
                node.wait_listening()
            running_kafka.wait_ready()
            server.wait_ready()

            def retried() -> bool:
                return client.post("/v1/transactions", json=items).status_code == 200

            wait_for(retried, 120, "the API to accept again", every=2)
    finally:
        for node in nodes:
            if not node.running():
                node.start()
        assert server.stop() == 0, server.log()
    consume_until_idle(api_env)
    assert stored_ids(migrated_db) == {i["id"] for i in items}
    assert_each_stored_once(migrated_db)
