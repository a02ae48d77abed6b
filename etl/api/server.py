"""``tillflow serve``: the API under uvicorn, configured from the settings.

One process, one event loop: uvloop (libuv) with the httptools HTTP parser,
both in C, where the pure-Python asyncio loop and h11 cost a large share of a
small request; no access log unless LOG_LEVEL=DEBUG (the request metrics
count every request). SIGTERM stops accepting connections, lets the requests
in hand finish (up to ``GRACEFUL_SECONDS``), closes WebSockets with 1012
(tills reconnect and resend what was not answered), then closes the Kafka
producer, which waits for what it still holds.
"""
from __future__ import annotations

import logging

import uvicorn

from etl.api.app import create_app
from etl.api.stream import transport_limit
from tillflow.config import Settings

GRACEFUL_SECONDS = 20


def config(settings: Settings, *, port: int | None = None) -> uvicorn.Config:
    """uvicorn's configuration for these settings (``port`` overrides API_PORT; 0 picks a free one)."""
    return uvicorn.Config(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port if port is None else port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_max_size=transport_limit(settings),
        ws_per_message_deflate=False,  # tiny JSON frames: compression costs more CPU than it saves
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
        server_header=False,
        proxy_headers=False,
        log_config=None,  # the CLI already configured logging
        access_log=settings.log_level == "DEBUG",
        log_level=settings.log_level.lower(),
    )


class _Server(uvicorn.Server):
    def handle_exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        # uvicorn raises the signal again once it has shut down, so the process
        # would die of it; a graceful stop is a success and exits 0 instead.
        getattr(self, "_captured_signals", []).clear()


def cli_serve(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT; 0 on a clean stop."""
    logging.getLogger("tillflow").setLevel(settings.log_level)
    if settings.log_level != "DEBUG":
        # While a broker is down librdkafka logs every reconnection attempt as an
        # error; the API logs one line when Kafka fails and one when it is back
        # (and a fatal producer error, through its error callback, always).
        logging.getLogger("tillflow.api.kafka").setLevel(logging.CRITICAL)
    server = _Server(config(settings))
    server.run()
    return 0 if server.started else 1
