"""What receives alerts in the tests: an HTTP webhook receiver and an SMTP sink
that keep what Alertmanager sends them, and a native Alertmanager (Debian's
prometheus-alertmanager, installed by scripts/bootstrap) run as a child process.
"""
from __future__ import annotations

import email
import email.policy
import json
import shutil
import signal
import socketserver
import subprocess
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from devstack.proc import free_port


class _Served:
    """A socket server answering on a daemon thread while the ``with`` block runs."""

    server: socketserver.BaseServer

    def _serve(self, server: socketserver.BaseServer) -> None:
        self.server = server
        self.port = server.server_address[1]
        self.thread = threading.Thread(target=server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


class WebhookReceiver(_Served):
    """Keeps every JSON body POSTed to it, in arrival order, with the time it arrived."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        received = self.received = []
        lock = self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    received.append((time.monotonic(), json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._serve(ThreadingHTTPServer((host, port), Handler))

    def notifications(self) -> list[tuple[float, dict]]:
        with self.lock:
            return list(self.received)

@dataclass
class Mail:
    sender: str
    recipients: list[str]
    subject: str
    text: str


class SmtpSink(_Served):
    """A plain SMTP server (no TLS, no login) that keeps every message it is given."""

    def __init__(self) -> None:
        mails = self.mails = []
        lock = self.lock = threading.Lock()

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, line: str) -> None:
                self.wfile.write(f"{line}\r\n".encode())

            def handle(self) -> None:
                self.reply("220 sink ESMTP")
                sender, recipients = "", []
                while True:
                    line = self.rfile.readline().decode("utf-8", "replace").rstrip("\r\n")
                    if not line:
                        return
                    verb = line.split(" ", 1)[0].upper()
                    if verb == "EHLO":
                        self.reply("250-sink")
                        self.reply("250 8BITMIME")
                    elif verb == "HELO":
                        self.reply("250 sink")
                    elif verb == "MAIL":
                        sender, recipients = line.partition(":")[2].strip(), []
                        self.reply("250 OK")
                    elif verb == "RCPT":
                        recipients.append(line.partition(":")[2].strip())
                        self.reply("250 OK")
                    elif verb == "DATA":
                        self.reply("354 end with <CRLF>.<CRLF>")
                        data = bytearray()
                        while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                            data += chunk[1:] if chunk.startswith(b"..") else chunk
                        message = email.message_from_bytes(bytes(data), policy=email.policy.default)
                        body = message.get_body(preferencelist=("plain",))
                        with lock:
                            mails.append(Mail(sender, recipients, str(message["Subject"]),
                                              body.get_content() if body is not None else ""))
                        self.reply("250 OK queued")
                    elif verb == "QUIT":
                        self.reply("221 bye")
                        return
                    else:  # RSET, NOOP and the rest
                        self.reply("250 OK")

        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._serve(server)

    def received(self) -> list[Mail]:
        with self.lock:
            return list(self.mails)

def alertmanager_binary() -> str:
    found = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    assert found, "no Alertmanager: `make deps` installs Debian's prometheus-alertmanager"
    return found


class Alertmanager:
    """Alertmanager on a free loopback port with the given configuration file."""

    def __init__(self, config: Path, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "alertmanager.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Alertmanager:
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [alertmanager_binary(), f"--config.file={self.config}", f"--storage.path={self.workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=",
                 f"--web.external-url={self.url}"],
                stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"Alertmanager exited:\n{self.log()}"
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"Alertmanager not ready within 30 s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
