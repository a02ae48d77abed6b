"""docker-compose.yml run as an admin runs it, for tests/stack.

``ComposeStack`` copies the checkout's tracked files into a directory of its
own (its own ``.env``, ``secrets/`` and ``inbox/``), then drives the real
``docker compose`` CLI and the real ``make`` targets there. Faults are made the
way the world makes them: ``kill -9`` of a container's main process from the
host (``docker kill`` would count as a manual stop, which ``restart: always``
honours by not restarting), and a restart of the Docker daemon itself.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "tillflow-e2e"
# Services that run once per `up` and must have exited 0.
ONE_SHOTS = ("migrate", "kafka-init", "alertmanager-config")


class ComposeError(AssertionError):
    pass


def tracked_files() -> list[str]:
    done = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [name for name in done.stdout.decode().split("\0") if name]


def image_present(name: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode == 0


class ComposeStack:
    def __init__(self, workdir: Path, settings: dict[str, str]) -> None:
        self.dir = workdir
        self.settings = settings
        self.env = {**os.environ, "COMPOSE_PROJECT_NAME": PROJECT}
        for key in ("DOCKER_BUILDKIT", "COMPOSE_FILE"):
            self.env.pop(key, None)

    # ------------------------------------------------------------ set-up
    def prepare(self) -> None:
        """A clone of the checkout's files (a git work tree whose origin is ``origin.git``
        beside it, as deploy/redeploy expects), with .env, secrets and the inbox as the
        README's quick start makes them. Without Grafana where its image is missing
        (``without_grafana``, ``grafana_image``)."""
        from support.services import compose_image

        self.grafana_image = compose_image("GRAFANA_IMAGE")
        self.without_grafana = not image_present(self.grafana_image)
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in tracked_files():
            source, target = ROOT / name, self.dir / name
            if source.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
        self.git("init", "-q", "-b", "main")
        self.git("add", "-A")
        self.git("commit", "-q", "-m", "the checkout under test")
        self.origin = self.dir.parent / "origin.git"
        self.sh(["git", "clone", "-q", "--bare", str(self.dir), str(self.origin)])
        self.git("remote", "add", "origin", str(self.origin))
        self.git("fetch", "-q", "origin")
        self.git("branch", "-q", "--set-upstream-to=origin/main", "main")
        settings = {"COMPOSE_PROJECT_NAME": PROJECT, **self.settings}
        if self.without_grafana:
            # Grafana under a profile nobody enables: up, make and deploy/redeploy leave it out.
            settings["COMPOSE_FILE"] = "docker-compose.yml:tests/stack/without-grafana.yml"
        (self.dir / ".env").write_text("".join(f"{k}={v}\n" for k, v in settings.items()), encoding="utf-8")
        self.sh(["bash", "scripts/make-secrets"])
        self.sh(["install", "-d", "-o", "10001", "-g", str(os.getgid()), "-m", "2775", "inbox"])

    def git(self, *args: str, cwd: Path | None = None) -> str:
        done = subprocess.run(["git", "-c", "user.name=e2e", "-c", "user.email=e2e@tillflow.invalid", *args],
                              cwd=cwd or self.dir, capture_output=True, text=True, check=True)
        return done.stdout.strip()

    def push_change(self, path: str, change, message: str) -> str:
        """A commit on origin's main that applies change(text) -> text to one file; its id."""
        pusher = self.dir.parent / "pusher"
        if not pusher.exists():
            self.sh(["git", "clone", "-q", str(self.origin), str(pusher)])
        self.git("pull", "-q", "--ff-only", cwd=pusher)
        target = pusher / path
        text = target.read_text(encoding="utf-8")
        changed = change(text)
        if changed == text:  # nothing to change: main stays where it is
            return self.git("rev-parse", "HEAD", cwd=pusher)
        target.write_text(changed, encoding="utf-8")
        self.git("commit", "-q", "-am", message, cwd=pusher)
        self.git("push", "-q", "origin", "main", cwd=pusher)
        return self.git("rev-parse", "HEAD", cwd=pusher)

    # ------------------------------------------------------------ commands
    def sh(self, argv: list[str], *, timeout: float = 600, check: bool = True,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        done = subprocess.run(argv, cwd=self.dir, env={**self.env, **(env or {})}, capture_output=True,
                              text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise ComposeError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
        return done

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        return self.sh(["docker", "compose", *args], timeout=timeout, check=check)

    def make(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        return self.sh(["make", "--no-print-directory", *args], timeout=timeout, check=check)

    def services(self) -> list[str]:
        """The services `up` starts: every one without a profile of its own."""
        return self.compose("config", "--services").stdout.split()

    def containers(self) -> list[dict]:
        out = self.compose("ps", "--all", "--format", "json").stdout.strip()
        if not out:
            return []
        if out.startswith("["):
            return json.loads(out)
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def container(self, service: str) -> dict:
        found = [c for c in self.containers() if c["Service"] == service]
        if len(found) != 1:
            raise ComposeError(f"{service}: {len(found)} containers")
        return found[0]

    def inspect(self, container_id: str) -> dict:
        return json.loads(subprocess.run(["docker", "inspect", container_id], capture_output=True, text=True,
                                         check=True).stdout)[0]

    def exec(self, service: str, *argv: str, timeout: float = 120, check: bool = True, user: str | None = None):
        args = ["exec", "-T"] + (["--user", user] if user else []) + [service, *argv]
        return self.compose(*args, timeout=timeout, check=check)

    def psql(self, sql: str) -> list[tuple[str, ...]]:
        """Rows of one query, as the bootstrap superuser over the server's socket."""
        done = self.exec("postgres", "psql", "-U", "postgres", "-d", "tillflow", "-v", "ON_ERROR_STOP=1",
                         "-AtF", "\t", "-c", sql)
        return [tuple(line.split("\t")) for line in done.stdout.splitlines() if line]

    # ------------------------------------------------------------ waiting
    def unhealthy(self, services: list[str]) -> dict[str, str]:
        """Service -> what is wrong, for every service not yet where it should be."""
        wrong: dict[str, str] = {}
        by_service: dict[str, list[dict]] = {}
        for c in self.containers():
            by_service.setdefault(c["Service"], []).append(c)
        for name in services:
            found = by_service.get(name)
            if not found:
                wrong[name] = "no container"
                continue
            for c in found:
                state, health = c.get("State"), c.get("Health") or ""
                if name in ONE_SHOTS:
                    if state != "exited" or c.get("ExitCode") != 0:
                        wrong[name] = f"{state} (exit {c.get('ExitCode')})"
                elif state != "running" or health not in ("healthy", ""):
                    # "" only for a container without a healthcheck; one with it is
                    # "starting" until its first verdict.
                    wrong[name] = f"{state} {health}".strip()
        return wrong

    def wait_healthy(self, services: list[str], timeout: float) -> float:
        started = time.monotonic()
        wrong: dict[str, str] = {}
        while time.monotonic() - started < timeout:
            wrong = self.unhealthy(services)
            if not wrong:
                return time.monotonic() - started
            time.sleep(3)
        logs = self.compose("logs", "--no-color", "--tail=30", *wrong, check=False).stdout
        raise ComposeError(f"not healthy after {timeout:.0f}s: {wrong}\n{logs[-6000:]}")

    # ------------------------------------------------------------ faults
    def kill9(self, service: str) -> None:
        """SIGKILL to the container's main process, from the host: a crash, not a stop."""
        pid = self.inspect(self.container(service)["ID"])["State"]["Pid"]
        if not pid:
            raise ComposeError(f"{service} is not running")
        os.kill(pid, signal.SIGKILL)

    def restart_count(self, service: str) -> int:
        return int(self.inspect(self.container(service)["ID"])["RestartCount"])

    DOWN = ("--profile", "tools", "down", "--volumes", "--remove-orphans", "--timeout", "30")

    def down(self) -> None:
        self.compose(*self.DOWN, check=False, timeout=900)

    def undo_on_kill(self, state_dir: Path) -> Path:
        """Have the session's watchdog take the stack down should pytest be killed."""
        from support import watchdog

        return watchdog.register(state_dir, "compose-stack", ["docker", "compose", *self.DOWN], cwd=self.dir,
                                 env=self.env)
