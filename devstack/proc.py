"""Process plumbing shared by the native PostgreSQL and Kafka servers.

Two lifetimes exist:

* ``attached``: the server is a direct child that the kernel kills with SIGKILL
  when the Python thread that started it exits (``PR_SET_PDEATHSIG``). Tests use
  it, so no server outlives a test run, even one that is itself SIGKILLed.
* detached: a daemon in its own session, for ``make local``; its pid is written
  to a file and ``make local-down`` stops it.

PostgreSQL refuses to run as root; when we are root the child drops to the
``postgres`` user before exec.
"""
from __future__ import annotations

import ctypes
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


class ServiceError(RuntimeError):
    """A native service could not be installed, started or stopped; says which and why."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None, what: str = "service") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_in_use(port):
            return
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"{what} exited with status {proc.returncode} before listening on port {port}")
        time.sleep(0.1)
    raise ServiceError(f"{what} did not listen on port {port} within {timeout:.0f}s")


def service_user() -> pwd.struct_passwd | None:
    """The unprivileged account to run PostgreSQL as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceError("running as root, but there is no 'postgres' user to run PostgreSQL as") from None


def chown_tree(path: Path, user: pwd.struct_passwd | None) -> None:
    if user is None:
        return
    os.chown(path, user.pw_uid, user.pw_gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), user.pw_uid, user.pw_gid, follow_symlinks=False)


def _preexec(user: pwd.struct_passwd | None, attached: bool) -> Callable[[], None]:
    def setup() -> None:
        if user is not None:
            os.setgid(user.pw_gid)
            os.initgroups(user.pw_name, user.pw_gid)
            os.setuid(user.pw_uid)
        if attached:
            # Set after setuid: a credential change clears the parent-death signal.
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        else:
            os.setsid()

    return setup


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    attached: bool,
    user: pwd.struct_passwd | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen:
    """Start a server process with stdout and stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")
    if user is not None:
        os.chown(log_path, user.pw_uid, user.pw_gid)
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            preexec_fn=_preexec(user, attached),
            close_fds=True,
        )
    except FileNotFoundError as exc:
        raise ServiceError(f"cannot start {argv[0]}: not found") from exc
    finally:
        log.close()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still "exists"; reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def signal_and_wait(pid: int, sig: int, timeout: float) -> bool:
    """Send ``sig`` to ``pid`` and wait up to ``timeout`` for it to exit; True if it did."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False
