"""A real PostgreSQL server from Debian's packages, run as a native process.

``NativePostgres`` owns one data directory: ``start()`` runs ``initdb`` the
first time (superuser ``postgres`` with a password, scram-sha-256 on TCP), then
runs the postmaster on 127.0.0.1 at the given port. ``stop()``, ``kill()`` and
``start()`` again serve fault tests; the data directory survives them.
"""
from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
from pathlib import Path

from devstack.proc import ServiceError, chown_tree, pid_alive, service_user, signal_and_wait, spawn, wait_for_port


def find_bindir() -> Path:
    """The newest installed PostgreSQL server's bin directory."""
    override = os.environ.get("PG_BINDIR")
    candidates = [override] if override else sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
    )
    for candidate in reversed(candidates):
        if candidate and (Path(candidate) / "postgres").exists():
            return Path(candidate)
    raise ServiceError("PostgreSQL server not found: install Debian's 'postgresql' package (make deps does it)")


class NativePostgres:
    """One PostgreSQL cluster in ``base_dir`` listening on 127.0.0.1:``port``."""

    superuser = "postgres"

    def __init__(
        self,
        base_dir: Path,
        port: int,
        password: str,
        *,
        attached: bool = True,
        durable: bool = True,
        log_path: Path | None = None,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "run"
        self.port = port
        self.host = "127.0.0.1"
        self.password = password
        self.attached = attached
        self.durable = durable
        self.log_path = log_path or self.base_dir / "postgres.log"
        self.bindir = find_bindir()
        self.user = service_user()
        self._proc: subprocess.Popen | None = None

    # -- lifecycle -----------------------------------------------------------
    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._check_traversable()
        self.socket_dir.mkdir(exist_ok=True)
        pwfile = self.base_dir / ".pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        chown_tree(self.base_dir, self.user)
        proc = spawn(
            [
                str(self.bindir / "initdb"), "-D", str(self.data_dir), "-U", self.superuser,
                f"--pwfile={pwfile}", "--auth-local=scram-sha-256", "--auth-host=scram-sha-256",
                "--encoding=UTF8", "--locale=C.UTF-8",
            ],
            log_path=self.base_dir / "initdb.log", attached=True, user=self.user,
        )
        if proc.wait(timeout=120) != 0:
            raise ServiceError(f"initdb failed: see {self.base_dir / 'initdb.log'}")
        pwfile.unlink()

    def _check_traversable(self) -> None:
        if self.user is None:
            return
        for parent in self.base_dir.resolve().parents:
            if not parent.stat().st_mode & 0o001:
                raise ServiceError(
                    f"PostgreSQL runs as user {self.user.pw_name}, who cannot enter {parent}: "
                    f"put the data elsewhere or chmod o+x {parent}"
                )

    def start(self, timeout: float = 60) -> None:
        if not self.initialised():
            self.init()
        self.socket_dir.mkdir(exist_ok=True)
        chown_tree(self.socket_dir, self.user)
        pidfile = self.data_dir / "postmaster.pid"
        if pidfile.exists():
            pid = int(pidfile.read_text().split()[0])
            if pid_alive(pid):
                raise ServiceError(f"PostgreSQL in {self.data_dir} is already running (pid {pid})")
        options = [
            "-c", "listen_addresses=127.0.0.1", "-c", f"port={self.port}",
            "-c", f"unix_socket_directories={self.socket_dir}",
            "-c", "max_connections=200", "-c", "shared_buffers=256MB",
            "-c", "logging_collector=off",
        ]
        if not self.durable:
            # Throwaway test clusters: the OS never crashes under them, only the server.
            options += ["-c", "fsync=off", "-c", "full_page_writes=off"]
        self._proc = spawn(
            [str(self.bindir / "postgres"), "-D", str(self.data_dir), *options],
            log_path=self.log_path, attached=self.attached, user=self.user,
        )
        wait_for_port(self.port, timeout, self._proc, what=f"PostgreSQL on port {self.port}")
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        env = dict(os.environ, PGPASSWORD=self.password)
        while time.monotonic() < deadline:
            done = subprocess.run(
                [str(self.bindir / "pg_isready"), "-h", self.host, "-p", str(self.port), "-U", self.superuser],
                capture_output=True, env=env,
            )
            if done.returncode == 0:
                return
            time.sleep(0.1)
        raise ServiceError(f"PostgreSQL on port {self.port} did not accept connections within {timeout:.0f}s")

    def pid(self) -> int | None:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        pidfile = self.data_dir / "postmaster.pid"
        if pidfile.exists():
            pid = int(pidfile.read_text().split()[0])
            return pid if pid_alive(pid) else None
        return None

    def running(self) -> bool:
        return self.pid() is not None

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        """Shut down: ``smart`` (SIGTERM), ``fast`` (SIGINT) or ``immediate`` (SIGQUIT)."""
        sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode]
        pid = self.pid()
        if pid is None:
            return
        if not signal_and_wait(pid, sig, timeout):
            signal_and_wait(pid, signal.SIGKILL, 10)
        self._reap()

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would; its backends follow it."""
        pid = self.pid()
        if pid is not None:
            signal_and_wait(pid, signal.SIGKILL, 10)
        self._reap()
        # Orphaned backends notice the dead postmaster within a moment; wait for them
        # so a restart does not meet "shared memory block still in use".
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self._backends_alive():
            time.sleep(0.1)

    def _backends_alive(self) -> bool:
        # Every server process of this cluster runs with the data directory as cwd.
        data_dir = str(self.data_dir.resolve())
        for proc_dir in Path("/proc").iterdir():
            if not proc_dir.name.isdigit():
                continue
            try:
                if os.readlink(proc_dir / "cwd") == data_dir:
                    return True
            except OSError:
                continue
        return False

    def _reap(self) -> None:
        if self._proc is not None:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            self._proc = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    # -- addresses -------------------------------------------------------------
    def url(self, user: str = "postgres", password: str | None = None, dbname: str = "postgres") -> str:
        if user == self.superuser and password is None:
            password = self.password
        auth = urllib.parse.quote(user, safe="")
        if password:
            auth += ":" + urllib.parse.quote(password, safe="")
        return f"postgresql://{auth}@{self.host}:{self.port}/{dbname}"
