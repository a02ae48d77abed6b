"""A webhook receiver that redeploys on a push to main: ``python3 -m deploy.webhook``.

Run it from the work tree on the VPS (a systemd unit in deploy/README.md). It
takes GitHub's and Gitea's push events, signed with HMAC-SHA256 of the body
under a shared secret:

* GitHub (and Gitea, which sends both): ``X-Hub-Signature-256: sha256=<hex>``
* Gitea: ``X-Gitea-Signature: <hex>``

A request without a valid signature is answered 401 and does nothing else.
A signed push to ``refs/heads/<WEBHOOK_BRANCH>`` starts ``deploy/redeploy`` in
the background and is answered 202 at once; while a deploy runs, further
pushes queue one more run (any number of them collapse into one, which
deploys whatever main is by then). Pings are answered 200; other events and
branches are ignored with 200. ``GET /healthz`` answers 200.

Settings (environment)::

    WEBHOOK_SECRET_FILE  file holding the shared secret (or WEBHOOK_SECRET); required
    WEBHOOK_HOST         address to listen on (default 127.0.0.1)
    WEBHOOK_PORT         port (default 9000; 0 picks a free one)
    WEBHOOK_BRANCH       the branch whose pushes deploy (default main)
    DEPLOY_COMMAND       what a push runs (default: deploy/redeploy of this work tree)

Standard library only: it runs with the host's python3.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

log = logging.getLogger("tillflow.webhook")

ROOT = Path(__file__).resolve().parent.parent
MAX_BODY_BYTES = 10 << 20  # GitHub caps payloads at 25 MB; pushes are far smaller
MIN_SECRET_CHARS = 16
_HEX = re.compile(r"[0-9a-fA-F]{64}")


class ConfigError(Exception):
    """A setting is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Settings:
    secret: bytes
    host: str = "127.0.0.1"
    port: int = 9000
    branch: str = "main"
    command: tuple = ()

    @classmethod
    def from_env(cls, env) -> Settings:
        path = env.get("WEBHOOK_SECRET_FILE", "").strip()
        if path:
            try:
                secret = Path(path).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"WEBHOOK_SECRET_FILE={path}: cannot read it ({exc.strerror})") from exc
        else:
            secret = env.get("WEBHOOK_SECRET", "").strip()
        if len(secret) < MIN_SECRET_CHARS:
            raise ConfigError(f"WEBHOOK_SECRET_FILE (or WEBHOOK_SECRET) must hold a secret of at least "
                              f"{MIN_SECRET_CHARS} characters, e.g. from `openssl rand -hex 32`")
        raw_port = env.get("WEBHOOK_PORT", "").strip() or "9000"
        if not raw_port.isdigit() or int(raw_port) > 65535:
            raise ConfigError(f"WEBHOOK_PORT={raw_port!r} is not a TCP port")
        default = shlex.quote(str(ROOT / "deploy" / "redeploy"))
        command = tuple(shlex.split(env.get("DEPLOY_COMMAND", "").strip() or default))
        return cls(secret=secret.encode("utf-8"), host=env.get("WEBHOOK_HOST", "").strip() or "127.0.0.1",
                   port=int(raw_port), branch=env.get("WEBHOOK_BRANCH", "").strip() or "main", command=command)


def signature_valid(secret: bytes, body: bytes, headers) -> bool:
    """Whether the body carries a valid HMAC-SHA256 under ``secret``, as GitHub or Gitea sign it.

    ``X-Hub-Signature-256`` is preferred when present (a wrong one is not rescued
    by a second header); the comparison takes constant time.
    """
    github = headers.get("X-Hub-Signature-256")
    if github is not None:
        scheme, _, given = github.strip().partition("=")
        if scheme != "sha256":
            return False
    else:
        given = (headers.get("X-Gitea-Signature") or "").strip()
    if not _HEX.fullmatch(given):
        return False
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given.lower())


def event_of(headers) -> str:
    return (headers.get("X-GitHub-Event") or headers.get("X-Gitea-Event") or headers.get("X-Gogs-Event") or "").strip()


class Runner:
    """Runs the deploy command on a thread, one run at a time; a trigger while
    one runs queues exactly one more."""

    def __init__(self, command: tuple) -> None:
        self.command = list(command)
        self._lock = threading.Lock()
        self._running = False
        self._pending = False
        self._thread: threading.Thread | None = None

    def trigger(self) -> str:
        with self._lock:
            if self._running:
                self._pending = True
                return "queued"
            self._running = True
            self._thread = threading.Thread(target=self._loop, name="deploy", daemon=True)
            self._thread.start()
            return "started"

    def _loop(self) -> None:
        while True:
            self._run_once()
            with self._lock:
                if not self._pending:
                    self._running = False
                    return
                self._pending = False

    def _run_once(self) -> None:
        log.info("running %s", shlex.join(self.command))
        try:
            # A session of its own: stopping the receiver does not stop a deploy halfway.
            code = subprocess.run(self.command, stdin=subprocess.DEVNULL, start_new_session=True,
                                  check=False).returncode
        except OSError as exc:
            log.error("cannot run %s: %s", self.command[0], exc.strerror)
            return
        log.log(logging.INFO if code == 0 else logging.ERROR, "deploy finished with exit status %d", code)

    def join(self, timeout: float | None = None) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)


class Handler(BaseHTTPRequestHandler):
    server_version = "tillflow-webhook"
    sys_version = ""
    timeout = 30  # seconds a client may take to send its request: a stalled one does not hold a thread
    settings: Settings
    runner: Runner

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.info("%s %s", self.address_string(), format % args)

    def _answer(self, status: int, body: dict) -> None:
        data = (json.dumps(body) + "\n").encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == "/healthz":
            self._answer(200, {"status": "ok"})
        else:
            self._answer(404, {"error": "not found: POST push events to any path"})

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or -1)
        except ValueError:
            length = -1
        if length < 0:
            self._answer(411, {"error": "Content-Length is required"})
            return
        if length > MAX_BODY_BYTES:
            self._answer(413, {"error": f"the body is larger than {MAX_BODY_BYTES} bytes"})
            return
        body = self.rfile.read(length)
        delivery = self.headers.get("X-GitHub-Delivery") or self.headers.get("X-Gitea-Delivery") or "-"
        if not signature_valid(self.settings.secret, body, self.headers):
            log.warning("delivery %s: missing or bad signature: refused", delivery)
            self._answer(401, {"error": "missing or bad signature"})
            return
        event = event_of(self.headers)
        if event == "ping":
            self._answer(200, {"status": "pong"})
            return
        if event != "push":
            self._answer(200, {"status": "ignored", "reason": f"event {event or 'unnamed'} is not a push"})
            return
        try:
            payload = json.loads(body)
            ref, deleted = payload.get("ref"), bool(payload.get("deleted"))
        except (ValueError, AttributeError):
            self._answer(400, {"error": "the body is not a JSON push event"})
            return
        wanted = f"refs/heads/{self.settings.branch}"
        if ref != wanted or deleted:
            self._answer(200, {"status": "ignored", "reason": f"{ref} is not {wanted}" if ref != wanted
                               else f"{ref} was deleted"})
            return
        status = self.runner.trigger()
        log.info("delivery %s: push to %s (%s): deploy %s", delivery, ref, str(payload.get("after"))[:12], status)
        self._answer(202, {"status": status})


def serve(settings: Settings) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"settings": settings, "runner": Runner(settings.command)})
    return ThreadingHTTPServer((settings.host, settings.port), handler)


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    try:
        settings = Settings.from_env(os.environ)
        server = serve(settings)
    except ConfigError as exc:
        print(f"webhook: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"webhook: cannot listen on {os.environ.get('WEBHOOK_HOST') or '127.0.0.1'}:"
              f"{os.environ.get('WEBHOOK_PORT') or 9000}: {exc.strerror}", file=sys.stderr)
        return 1

    def stop(signum, _frame) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    log.info("listening on %s:%d: pushes to refs/heads/%s run %s", host, port, settings.branch,
             shlex.join(settings.command))
    try:
        server.serve_forever()
    finally:
        server.server_close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
