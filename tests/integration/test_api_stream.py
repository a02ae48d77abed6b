"""The ``/v1/stream`` WebSocket end to end, against the real Kafka cluster and PostgreSQL.

Invariant of every test here, computed from sets of ids: each message the API
acknowledged is stored exactly once after ``tillflow consume``; a message it
refused (error) was not published."""
from __future__ import annotations

import asyncio
import json
import re
import signal
import threading
import time

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from support.api import (
    ApiServer, assert_each_stored_once, consume_until_idle, query, stored_ids, topic_size, transaction,
)


def opened(server: ApiServer, token: str | None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return connect(server.ws_url, additional_headers=headers, open_timeout=30, max_size=2**22)


async def _round(ws, items: list[dict], window: int) -> dict[str, dict]:
    """Send ``items`` on one connection, at most ``window`` unanswered; their answers by id."""
    answers: dict[str, dict] = {}
    slots = asyncio.Semaphore(window)

    async def send() -> None:
        for item in items:
            await slots.acquire()
            await ws.send(json.dumps(item))

    sender = asyncio.create_task(send())
    try:
        while len(answers) < len(items):
            answer = json.loads(await ws.recv())
            slots.release()
            answers[answer["id"]] = answer
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    return answers


async def till(server: ApiServer, token: str, items: list[dict], *, window: int = 200,
               deadline: float = 300) -> tuple[set[str], int]:
    """A till that resends until every item is acknowledged: reconnects after a dropped
    connection, resends after a retryable error. (acked ids, retryable errors seen)."""
    pending = {item["id"]: item for item in items}
    acked: set[str] = set()
    retryable = 0
    give_up = time.monotonic() + deadline
    while pending and time.monotonic() < give_up:
        try:
            async with opened(server, token) as ws:
                while pending:
                    answers = await _round(ws, list(pending.values()), window)
                    for tx_id, answer in answers.items():
                        if answer["type"] == "ack":
                            acked.add(tx_id)
                            pending.pop(tx_id, None)
                        else:
                            assert answer["type"] == "error" and answer["retryable"], answer
                            retryable += 1
                    if pending:
                        await asyncio.sleep(0.5)
        except (ConnectionClosed, OSError, InvalidStatus, TimeoutError):
            await asyncio.sleep(0.5)
    assert not pending, f"{len(pending)} messages never acknowledged"
    return acked, retryable


def test_each_frame_gets_one_answer_and_bad_frames_keep_the_connection(server, token, api_env, migrated_db,
                                                                       running_kafka, topics):
    good = [transaction(cents=500 + i) for i in range(3)]
    bad = transaction(quantity=0, name="")

    async def session() -> list[dict]:
        async with opened(server, token) as ws:
            frames = [json.dumps(good[0]), "not json", "[]", b"\xff\xfe", "x" * 70_000,
                      json.dumps(dict(good[1], store_id="north")), json.dumps(bad), json.dumps(good[1]).encode(),
                      json.dumps(good[2])]
            answers = []
            for frame in frames:  # one at a time: answers in frame order
                await ws.send(frame)
                answers.append(json.loads(await ws.recv()))
            return answers

    answers = asyncio.run(session())
    assert [a["seq"] for a in answers] == list(range(1, 10))
    assert answers[0] == {"type": "ack", "seq": 1, "id": good[0]["id"]}
    assert [(a["type"], a.get("code"), a.get("retryable")) for a in answers[1:6]] == [
        ("error", "malformed_frame", False), ("error", "malformed_frame", False),
        ("error", "malformed_frame", False), ("error", "frame_too_large", False),
        ("error", "forbidden_store", False)]
    assert answers[5]["id"] == good[1]["id"] and "(main)" in answers[5]["message"]
    assert answers[6]["type"] == "reject" and answers[6]["id"] == bad["id"]
    assert {(r["field"], r["code"]) for r in answers[6]["reasons"]} == {("quantity", "out_of_range"),
                                                                        ("name", "missing")}
    assert answers[7] == {"type": "ack", "seq": 8, "id": good[1]["id"]}
    assert answers[8] == {"type": "ack", "seq": 9, "id": good[2]["id"]}
    servers = running_kafka.bootstrap_servers
    assert (topic_size(servers, topics.transactions), topic_size(servers, topics.rejects)) == (3, 1)
    consume_until_idle(api_env)
    assert stored_ids(migrated_db) == {g["id"] for g in good}
    rejects = query(migrated_db, "SELECT transaction_id, source, source_line FROM ingest.rejects")
    assert rejects == [(bad["id"], "ws", 7)]
    assert query(migrated_db, "SELECT DISTINCT source FROM sales.transactions") == [("ws",)]


def test_a_batch_frame_gets_one_results_answer_in_item_order(server, token, api_env, migrated_db):
    items = [transaction(cents=600 + i) for i in range(4)]
    bad = transaction(amount_inc_tax="9.99")

    async def session() -> list[dict]:
        async with opened(server, token) as ws:
            answers = []
            for frame in ([items[0], bad, items[1]], [items[2], 7], [items[3], dict(items[0], store_id="north")],
                          [{}] * 1001):
                await ws.send(json.dumps(frame))
                answers.append(json.loads(await ws.recv()))
            return answers

    batch, with_junk, foreign, too_many = asyncio.run(session())
    assert batch["type"] == "results" and batch["seq"] == 1
    assert [(r["type"], r["id"]) for r in batch["results"]] == [
        ("ack", items[0]["id"]), ("reject", bad["id"]), ("ack", items[1]["id"])]
    assert batch["results"][1]["reasons"][0]["code"] == "tax_mismatch"
    assert [r["type"] for r in with_junk["results"]] == ["ack", "reject"]
    assert with_junk["results"][1]["reasons"][0]["code"] == "not_an_object"
    assert (foreign["type"], foreign["code"], foreign["seq"]) == ("error", "forbidden_store", 3)
    assert (too_many["type"], too_many["code"]) == ("error", "batch_too_large")
    consume_until_idle(api_env)
    assert stored_ids(migrated_db) == {i["id"] for i in items[:3]}, "nothing of a refused frame is published"
    assert query(migrated_db, "SELECT count(*) FROM ingest.rejects") == [(2,)]


def test_the_handshake_needs_a_valid_token(server, token):
    async def refused(header_token: str | None) -> int:
        try:
            async with opened(server, header_token):
                return 101
        except InvalidStatus as exc:
            body = json.loads(exc.response.body)
            assert body["error"]["code"] == "unauthorized"
            return exc.response.status_code

    assert asyncio.run(refused(None)) == 401
    assert asyncio.run(refused(token[:-2] + "xx")) == 401
    assert asyncio.run(refused("tillflow_nonsense")) == 401
    assert asyncio.run(refused(token)) == 101


def test_10000_messages_from_concurrent_tills_are_stored_exactly_once(server, token, api_env, migrated_db):
    clients = [[transaction(cents=1000 + i) for i in range(2000)] for _ in range(5)]

    async def tills():
        return await asyncio.gather(*(till(server, token, items, window=500) for items in clients))

    started = time.monotonic()
    results = asyncio.run(tills())
    seconds = time.monotonic() - started
    sent = {item["id"] for items in clients for item in items}
    acked = set().union(*(r[0] for r in results))
    assert len(sent) == 10_000 and acked == sent
    consume_until_idle(api_env)
    assert stored_ids(migrated_db) == sent
    assert_each_stored_once(migrated_db)
    print(f"10,000 WebSocket messages acknowledged in {seconds:.1f} s ({10_000 / seconds:.0f}/s)")


def test_resending_after_a_reconnect_is_safe(server, token, api_env, migrated_db):
    items = [transaction(cents=2000 + i) for i in range(300)]

    async def interrupted() -> set[str]:
        async with opened(server, token) as ws:
            for item in items:
                await ws.send(json.dumps(item))
            first = {json.loads(await ws.recv())["id"] for _ in range(100)}
        # The connection is gone with ~200 answers unread: resend everything.
        acked, _ = await till(server, token, items)
        return first | acked

    assert asyncio.run(interrupted()) == {i["id"] for i in items}
    consume_until_idle(api_env)
    assert stored_ids(migrated_db) == {i["id"] for i in items}
    assert_each_stored_once(migrated_db)


def test_in_flight_messages_per_connection_are_bounded(api_env, tmp_path, token):
    api_env["API_WS_MAX_IN_FLIGHT"] = "4"
    server = ApiServer(api_env, tmp_path / "api.log").start()
    items = [transaction(cents=3000 + i) for i in range(600)]
    gauge = re.compile(r"^tillflow_api_ws_in_flight (\S+)$", re.MULTILINE)
    seen: list[float] = []

    async def flood() -> set[str]:
        async with opened(server, token) as ws:
            async def send() -> None:
                for item in items:
                    await ws.send(json.dumps(item))

            sender = asyncio.create_task(send())
            async with httpx.AsyncClient(base_url=server.url) as client:
                for _ in range(20):  # not reading any answer meanwhile
                    seen.append(float(gauge.search((await client.get("/metrics")).text).group(1)))
                    await asyncio.sleep(0.05)
            answers = {json.loads(await ws.recv())["id"] for _ in items}
            await sender
            return answers

    try:
        assert asyncio.run(flood()) == {i["id"] for i in items}
    finally:
        assert server.stop() == 0
    assert max(seen) <= 4, seen


@pytest.mark.slow
def test_a_broker_sigkilled_during_the_stream_loses_no_acknowledged_message(
        server, token, api_env, migrated_db, running_kafka):
    clients = [[transaction(cents=4000 + i) for i in range(3000)] for _ in range(3)]
    victim = running_kafka.nodes[0]
    outcome: dict = {}

    async def tills():
        return await asyncio.gather(*(till(server, token, items, window=100) for items in clients))

    def stream() -> None:
        try:
            outcome["results"] = asyncio.run(tills())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            outcome["error"] = exc

    # The tills run on a thread of their own: a native broker dies with the thread
    # that started it, so the test's own thread kills and restarts it.
    streaming = threading.Thread(target=stream)
    streaming.start()
    try:
        time.sleep(1.5)
        victim.stop(signal.SIGKILL)
        time.sleep(8)
        victim.start()
    finally:
        streaming.join(timeout=600)
        if not victim.running():
            victim.start()
    if "error" in outcome:
        raise outcome["error"]
    results = outcome["results"]
    victim.wait_listening()
    running_kafka.wait_ready()
    acked = set().union(*(r[0] for r in results))
    sent = {item["id"] for items in clients for item in items}
    assert acked == sent
    consume_until_idle(api_env)
    stored = stored_ids(migrated_db)
    assert acked <= stored, f"{len(acked - stored)} acknowledged messages lost"
    assert stored <= sent
    assert_each_stored_once(migrated_db)
