"""The API benchmark (``make bench-api``): the HTTP API and the WebSocket against their ceiling.

``python -m bench.api [--seconds S] [--local]`` starts its own native stack in
a temporary directory (PostgreSQL and three KRaft brokers, as ``make local``
does; ``--local`` uses the running ``make local`` stack from ``.local/env``
instead, on topics of its own), creates a token, runs ``tillflow serve`` as a
child process, warms the brokers up (30 s of records at 1000/s: fresh brokers
compile their hot paths first) and measures, in one run:

``ceiling``
    a plain kafka-python producer loop with the API's producer settings
    (acks=all, idempotence, the API's linger, 256 KiB batches) sending the same
    encoded transactions: its throughput, and the latency from send to
    acknowledgement of one record at a time at each offered load.
``ceiling_confluent``
    the same with a plain confluent-kafka (librdkafka) producer loop with
    exactly the API's settings (``etl.api.publish.api_producer_config``):
    the client the API actually uses, so the API's own cost is what is left.
``http``
    ``POST /v1/transactions`` with one transaction per request, open loop at
    fixed offered loads (100, 500, 1000 tx/s for S seconds each): latency is
    counted from when each request was due, so a server that falls behind
    shows it (no coordinated omission); and closed loop with 32 concurrent
    connections for the maximum throughput.
``websocket``
    5 connections sending one transaction per frame, up to 500 unanswered
    each; and the same with 100 transactions per frame (``results`` answers).

The load generators are lean (raw HTTP/1.1 on keep-alive connections, the
``websockets`` client) and run in this process; the server's CPU time per
transaction is read from /proc, which stays meaningful on a busy machine where
wall-clock rates do not. Prints a table and writes ``bench/results/api.json``.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "api.json"
LOADS = (100, 500, 1000)
TARGETS = {"http_p99_ms_at_500": 50.0, "websocket_tx_per_s": 5000.0}
WARM_UP_SECONDS = 30


def log(message: str) -> None:
    print(f"[bench-api {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _run(coroutine):
    """Run a load generator on uvloop, as the server runs: on 2 cores shared with the server and
    the brokers, the pure-Python asyncio loop cost the generator CPU the server then lacked, and
    its late timestamps counted as the server's latency."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def transactions(n: int) -> list[dict]:
    from tillflow import sample

    return [{"id": r.id, "transaction_date": r.transaction_date.isoformat(), "category": r.category,
             "name": r.name, "quantity": r.quantity, "amount_excl_tax": str(r.amount_excl_tax),
             "amount_inc_tax": str(r.amount_inc_tax)} for r in sample.rows(n, seed=int(time.time()))]


# -- the stack ---------------------------------------------------------------------------
class Stack:
    """Its own PostgreSQL and three brokers, or the running ``make local`` stack."""

    def __init__(self, local: bool) -> None:
        self.local = local
        self.root = Path(tempfile.mkdtemp(prefix="tillflow-bench-api-"))
        self.root.chmod(0o755)
        self.postgres = self.kafka = None
        suffix = uuid.uuid4().hex[:8]
        self.topics = (f"bench.api.{suffix}.transactions", f"bench.api.{suffix}.rejects")

    def start(self) -> None:
        if self.local:
            values = _read_env(REPO / ".local" / "env")
            self.bootstrap = values["KAFKA_BOOTSTRAP_SERVERS"]
            self.owner_url, self.writer_url = values["DATABASE_URL"], values["TILLFLOW_WRITER_URL"]
        else:
            from bench.ingest import Stack as NativeStack

            native = NativeStack(self.root)
            try:
                native.start_services()
            finally:  # whatever started is stopped by stop(), also when start-up failed halfway
                self.postgres, self.kafka = native.postgres, native.kafka
            self.bootstrap = native.kafka.bootstrap_servers
            self.owner_url, self.writer_url = native.url("owner"), native.url("writer")
        from etl.topics import create_topics

        create_topics(self.bootstrap.split(","), list(self.topics))

    def stop(self) -> None:
        for server in (self.kafka, self.postgres):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _read_env(path: Path) -> dict[str, str]:
    if not path.exists():
        raise SystemExit(f"bench-api: {path} does not exist: run `make local` first, or drop --local")
    values = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            values[key] = shlex.split(value)[0] if value else ""
    return values


class Server:
    """``tillflow serve`` as a child process, as in production."""

    def __init__(self, stack: Stack) -> None:
        from devstack.proc import free_port

        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "DATABASE_", "API_", "TILLFLOW_"))}
        env.update({"DATABASE_URL": stack.writer_url, "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap,
                    "KAFKA_TOPIC_TRANSACTIONS": stack.topics[0], "KAFKA_TOPIC_REJECTS": stack.topics[1],
                    "API_HOST": "127.0.0.1", "API_PORT": str(self.port), "LOG_LEVEL": "WARNING"})
        self.log_path = stack.root / "api.log"
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen([str(Path(sys.executable).with_name("tillflow")), "serve"], env=env,
                                         stdout=out, stderr=out)

    def wait_ready(self, timeout: float = 120) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"bench-api: tillflow serve exited: {self.log_path.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=5).status_code == 200:
                    return
            time.sleep(0.3)
        raise SystemExit("bench-api: the API did not become ready")

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# -- the ceilings: plain producer loops -----------------------------------------------------------
# Two: a kafka-python loop (the client the API used first, named by the issue) and a
# confluent-kafka (librdkafka) loop with exactly the API's settings, the client it uses now.
def _producer(bootstrap: str):
    from kafka import KafkaProducer

    from etl.api.publish import LINGER_MS

    return KafkaProducer(bootstrap_servers=bootstrap.split(","), acks="all", enable_idempotence=True,
                         retries=2**31 - 1, max_in_flight_requests_per_connection=5, linger_ms=LINGER_MS,
                         request_timeout_ms=5000, delivery_timeout_ms=10000, batch_size=256 * 1024)


def _encoded(items: list[dict]) -> list[tuple[bytes, bytes]]:
    from tillflow.messages import encode_transaction
    from tillflow.record import Origin, validate

    out = []
    for i, item in enumerate(items):
        tx = validate(item, origin=Origin("api", "bench", i + 1))
        out.append((item["id"].encode(), encode_transaction(tx)))
    return out


def ceiling(stack: Stack, n: int, seconds: float) -> dict:
    """The plain kafka-python producer loop."""
    producer = _producer(stack.bootstrap)
    topic = stack.topics[0]
    records = _encoded(transactions(n))
    producer.send(topic, key=b"warm-up", value=records[0][1]).get(30)
    done = threading.Event()
    acked = [0]

    def ok(_metadata) -> None:
        acked[0] += 1
        if acked[0] == n:
            done.set()

    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for key, value in records:
        producer.send(topic, key=key, value=value).add_callback(ok)
    done.wait(300)
    elapsed, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result = {"tx_per_s": round(n / elapsed), "cpu_us_per_tx": round(cpu / n * 1e6, 1), "latency": {}}
    for load in LOADS:
        latencies: list[float] = []
        count = int(load * seconds)
        paced = _encoded(transactions(count))
        t0 = time.perf_counter()
        for i, (key, value) in enumerate(paced):
            due = t0 + i / load
            while (delay := due - time.perf_counter()) > 0:
                time.sleep(delay)
            producer.send(topic, key=key, value=value).add_callback(
                lambda _m, due=due: latencies.append(time.perf_counter() - due))
        producer.flush(60)
        result["latency"][str(load)] = _latency(latencies, count, time.perf_counter() - t0, errors=0)
    producer.close(10)
    return result


def _api_producer(stack: Stack, client_id: str, delivery_timeout_ms: int):
    """A confluent-kafka producer with exactly the API's settings (its log lines to stderr)."""
    from confluent_kafka import Producer

    from etl.api.publish import api_producer_config

    config = api_producer_config(stack.bootstrap.split(","), client_id=client_id,
                                 delivery_timeout_ms=delivery_timeout_ms)
    config.pop("logger", None)
    return Producer(config)


def ceiling_confluent(stack: Stack, n: int, seconds: float) -> dict:
    """A plain confluent-kafka producer loop with the API's settings (etl.producer.producer_config, the
    API's linger and delivery timeout): the same encoded transactions, acknowledgements served by poll()."""
    producer = _api_producer(stack, "bench-api-ceiling", 10_000)
    topic = stack.topics[0]
    records = _encoded(transactions(n))
    producer.produce(topic, records[0][1], b"warm-up")
    if producer.flush(30):
        raise SystemExit("bench-api: Kafka did not acknowledge the confluent-kafka warm-up record")
    acked, failed = [0], [0]

    def counted(err, _msg) -> None:
        if err is None:
            acked[0] += 1
        else:
            failed[0] += 1

    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=counted)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush(300)
    elapsed, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result = {"tx_per_s": round(acked[0] / elapsed), "cpu_us_per_tx": round(cpu / n * 1e6, 1),
              "errors": failed[0], "latency": {}}
    for load in LOADS:
        latencies: list[float] = []
        errors = [0]
        count = int(load * seconds)
        paced = _encoded(transactions(count))

        def timed(err, _msg, due: float) -> None:
            if err is None:
                latencies.append(time.perf_counter() - due)
            else:
                errors[0] += 1

        t0 = time.perf_counter()
        for i, (key, value) in enumerate(paced):
            due = t0 + i / load
            while (delay := due - time.perf_counter()) > 0:
                producer.poll(delay)  # serves acknowledgements while waiting for the next send
            producer.produce(topic, value, key, on_delivery=lambda err, msg, due=due: timed(err, msg, due))
            producer.poll(0)
        producer.flush(60)
        result["latency"][str(load)] = _latency(latencies, count, time.perf_counter() - t0, errors=errors[0])
    producer.flush(10)
    return result


def warm_up(stack: Stack, seconds: float, rate: int = 1000) -> None:
    """Records at ``rate`` a second for ``seconds``, before anything is measured. Fresh brokers
    compile their hot paths for their first half-minute of traffic (C1, devstack.kafka): p99 at
    500 tx/s was 4-10x its later value in that time, and whichever case ran first paid for it.
    Brokers in production have long been warm."""
    producer = _api_producer(stack, "bench-api-warm-up", 30_000)
    records = _encoded(transactions(int(rate * seconds)))
    t0 = time.perf_counter()
    for i, (key, value) in enumerate(records):
        while (delay := t0 + i / rate - time.perf_counter()) > 0:
            producer.poll(delay)
        producer.produce(stack.topics[0], value, key)
        producer.poll(0)
    if producer.flush(60):
        raise SystemExit("bench-api: Kafka did not acknowledge the warm-up records")


def _latency(latencies: list[float], count: int, elapsed: float, errors: int) -> dict:
    return {"requests": count, "achieved_per_s": round(len(latencies) / elapsed, 1), "errors": errors,
            "p50_ms": _ms(percentile(latencies, 0.50)), "p99_ms": _ms(percentile(latencies, 0.99)),
            "max_ms": _ms(max(latencies) if latencies else None)}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


# -- HTTP ------------------------------------------------------------------------------------
class _Connection:
    """One keep-alive HTTP/1.1 connection; requests are pre-built bytes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader = self.writer = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def request(self, raw: bytes) -> int:
        self.writer.write(raw)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return int(status_line.split()[1])


def _post(token: str, body: bytes) -> bytes:
    return (b"POST /v1/transactions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + token.encode() + b"\r\nContent-Length: " + str(len(body)).encode()
            + b"\r\n\r\n" + body)


async def _open_pool(port: int, size: int) -> asyncio.Queue:
    pool: asyncio.Queue = asyncio.Queue()
    for _ in range(size):
        conn = _Connection(port)
        await conn.open()
        pool.put_nowait(conn)
    return pool


async def http_open_loop(port: int, token: str, load: int, seconds: float) -> dict:
    count = int(load * seconds)
    bodies = [_post(token, json.dumps(item).encode()) for item in transactions(count)]
    pool = await _open_pool(port, 64)
    latencies: list[float] = []
    errors = [0]

    async def one(raw: bytes, due: float) -> None:
        conn = await pool.get()
        try:
            status = await conn.request(raw)
        finally:
            pool.put_nowait(conn)
        if status == 200:
            latencies.append(time.perf_counter() - due)
        else:
            errors[0] += 1

    tasks = []
    t0 = time.perf_counter()
    for i, raw in enumerate(bodies):
        due = t0 + i / load
        if (delay := due - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(raw, due)))
    await asyncio.gather(*tasks)
    return _latency(latencies, count, time.perf_counter() - t0, errors[0])


async def http_closed_loop(port: int, token: str, seconds: float, concurrency: int = 32) -> dict:
    pool = await _open_pool(port, concurrency)
    bodies = [_post(token, json.dumps(item).encode()) for item in transactions(int(2000 * seconds))]
    done = [0]
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        conn = await pool.get()
        while time.perf_counter() < deadline and bodies:
            if await conn.request(bodies.pop()) == 200:
                done[0] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"concurrency": concurrency, "transactions": done[0],
            "tx_per_s": round(done[0] / (time.perf_counter() - t0), 1)}


# -- WebSocket ---------------------------------------------------------------------------------
async def websocket(port: int, token: str, *, clients: int, per_client: int, per_frame: int,
                    window: int = 500) -> dict:
    from websockets.asyncio.client import connect

    async def till(items: list[dict]) -> int:
        frames = ([json.dumps(i) for i in items] if per_frame == 1 else
                  [json.dumps(items[k:k + per_frame]) for k in range(0, len(items), per_frame)])
        acked = 0
        async with connect(f"ws://127.0.0.1:{port}/v1/stream", additional_headers={
                "Authorization": f"Bearer {token}"}, max_queue=None, max_size=2**24) as ws:
            slots = asyncio.Semaphore(max(1, window // per_frame))

            async def send() -> None:
                for frame in frames:
                    await slots.acquire()
                    await ws.send(frame)

            sender = asyncio.create_task(send())
            for _ in frames:
                answer = json.loads(await ws.recv())
                slots.release()
                answers = answer["results"] if answer["type"] == "results" else [answer]
                acked += sum(1 for a in answers if a["type"] == "ack")
            await sender
        return acked

    batches = [transactions(per_client) for _ in range(clients)]
    t0 = time.perf_counter()
    acked = sum(await asyncio.gather(*(till(items) for items in batches)))
    elapsed = time.perf_counter() - t0
    return {"clients": clients, "per_frame": per_frame, "transactions": clients * per_client, "acked": acked,
            "tx_per_s": round(acked / elapsed, 1)}


# -- run -----------------------------------------------------------------------------------------
def _with_cpu(server: Server, run, transactions_done) -> dict:
    before = server.cpu()
    result = run()
    spent = server.cpu() - before
    done = transactions_done(result)
    result["server_cpu_us_per_tx"] = round(spent / done * 1e6, 1) if done else None
    return result


def measure(stack: Stack, seconds: float, ws_per_client: int) -> dict:
    from etl.api import tokens

    token = tokens.create(stack.owner_url, "main", "bench")
    server = Server(stack)
    try:
        server.wait_ready()
        log(f"warming the brokers up: {WARM_UP_SECONDS:g} s at 1000 tx/s")
        warm_up(stack, WARM_UP_SECONDS)
        log("ceiling: plain kafka-python producer loop")
        report = {"ceiling": ceiling(stack, 20_000, seconds)}
        log("ceiling: plain confluent-kafka producer loop with the same settings")
        report |= {"ceiling_confluent": ceiling_confluent(stack, 20_000, seconds), "http": {}, "websocket": {}}
        _run(http_open_loop(server.port, token, 100, 2))  # warm-up: producer, connections, caches
        for load in LOADS:
            log(f"HTTP: {load} tx/s for {seconds:g} s")
            report["http"][str(load)] = _with_cpu(
                server, lambda: _run(http_open_loop(server.port, token, load, seconds)),
                lambda r: r["requests"] - r["errors"])
        log("HTTP: closed loop, 32 connections")
        report["http"]["max"] = _with_cpu(server, lambda: _run(http_closed_loop(server.port, token, seconds)),
                                          lambda r: r["transactions"])
        for per_frame in (1, 100):
            log(f"WebSocket: 5 connections, {per_frame} transaction(s) per frame")
            report["websocket"][f"per_frame_{per_frame}"] = _with_cpu(
                server, lambda: _run(websocket(server.port, token, clients=5, per_client=ws_per_client,
                                                      per_frame=per_frame)),
                lambda r: r["acked"])
    finally:
        server.stop()
    return report


def summarise(report: dict, seconds: float) -> dict:
    from etl.topics import PARTITIONS

    p99 = report["http"]["500"]["p99_ms"]
    ws = report["websocket"]["per_frame_1"]["tx_per_s"]
    report["targets"] = {
        "http_p99_ms_at_500": {"value": p99, "target": f"< {TARGETS['http_p99_ms_at_500']}",
                               "met": p99 is not None and p99 < TARGETS["http_p99_ms_at_500"]},
        "websocket_tx_per_s": {"value": ws, "target": f">= {TARGETS['websocket_tx_per_s']:g}",
                               "met": ws >= TARGETS["websocket_tx_per_s"]},
    }
    report["vs_ceiling"] = {
        "http_max": round(report["http"]["max"]["tx_per_s"] / report["ceiling"]["tx_per_s"], 3),
        "websocket_per_frame_1": round(ws / report["ceiling"]["tx_per_s"], 3),
        "websocket_per_frame_100": round(report["websocket"]["per_frame_100"]["tx_per_s"]
                                         / report["ceiling"]["tx_per_s"], 3),
    }
    confluent = report["ceiling_confluent"]["tx_per_s"]
    report["vs_ceiling_confluent"] = {
        "http_max": round(report["http"]["max"]["tx_per_s"] / confluent, 3),
        "websocket_per_frame_1": round(ws / confluent, 3),
        "websocket_per_frame_100": round(report["websocket"]["per_frame_100"]["tx_per_s"] / confluent, 3),
    }
    report["machine"] = {"cores": os.cpu_count(), "load_average_at_end": [round(x, 1) for x in os.getloadavg()],
                         "python": platform.python_version(), "platform": platform.platform()}
    report["settings"] = {"seconds_per_load": seconds, "loads_tx_per_s": list(LOADS), "warm_up_seconds": WARM_UP_SECONDS,
                          "partitions": PARTITIONS}
    return report


def render(report: dict) -> str:
    c, h, w = report["ceiling"], report["http"], report["websocket"]
    cc = report["ceiling_confluent"]
    lines = ["", "Tillflow API benchmark (tx = one transaction, acknowledged by Kafka)", "",
             f"{'case':44} {'tx/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'server CPU us/tx':>17}"]
    for ceiling, loop, each in ((c, "ceiling: kafka-python producer loop", "ceiling: one record at a time"),
                                (cc, "ceiling: confluent-kafka producer loop", "ceiling (confluent): one at a time")):
        lines.append(f"{loop:44} {ceiling['tx_per_s']:>9} {'':>8} {'':>8} {ceiling['cpu_us_per_tx']:>17}")
        for load in LOADS:
            lat = ceiling["latency"][str(load)]
            lines.append(f"{f'{each}, {load}/s':44} {lat['achieved_per_s']:>9} "
                         f"{lat['p50_ms']:>8} {lat['p99_ms']:>8} {'':>17}")
    for load in LOADS:
        r = h[str(load)]
        lines.append(f"{f'HTTP POST, offered {load}/s':44} {r['achieved_per_s']:>9} {r['p50_ms']:>8} "
                     f"{r['p99_ms']:>8} {r['server_cpu_us_per_tx']!s:>17}")
    lines.append(f"{'HTTP POST, 32 connections (max)':44} {h['max']['tx_per_s']:>9} {'':>8} {'':>8} "
                 f"{h['max']['server_cpu_us_per_tx']!s:>17}")
    for key, label in (("per_frame_1", "WebSocket, 5 tills, 1 tx per frame"),
                       ("per_frame_100", "WebSocket, 5 tills, 100 tx per frame")):
        lines.append(f"{label:44} {w[key]['tx_per_s']:>9} {'':>8} {'':>8} {w[key]['server_cpu_us_per_tx']!s:>17}")
    lines.append("")
    for name, target in report["targets"].items():
        verdict = "met" if target["met"] else "NOT met"
        lines.append(f"target {name}: {target['value']} (want {target['target']}): {verdict}")
    lines.append(f"machine: {report['machine']['cores']} cores, load average at the end "
                 f"{report['machine']['load_average_at_end']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10, help="seconds per offered load (default 10)")
    parser.add_argument("--ws-per-client", type=int, default=4000, help="transactions per WebSocket client")
    parser.add_argument("--local", action="store_true", help="use the running `make local` stack (.local/env)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results file (default {RESULTS.relative_to(REPO)})")
    args = parser.parse_args(argv)
    stack = Stack(args.local)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        stack.start()
        report = summarise(measure(stack, args.seconds, args.ws_per_client), args.seconds)
    finally:
        stack.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(render(report))
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
