"""A stand-in for ``docker compose`` in the deploy tests: ``COMPOSE="python fake_compose.py"``.

Each call appends one JSON line to ``$FAKE_COMPOSE_LOG``: its arguments, the
commit checked out in the directory it runs in (the work tree), its pid and
parent pid (the redeploy that called it), and when it started and ended.

It answers as a healthy stack of ``$FAKE_COMPOSE_SERVICES`` (``name`` for a
service, ``name!`` for a one-shot) unless told otherwise. A release makes
itself fail by committing a file ``.fake-compose`` to the work tree, so that
going back to the previous commit mends it, as with a real bad release::

    {"fail": ["build", "smoke"], "unhealthy": ["api"], "exit": {"migrate": 1}}

``fail`` names subcommands (``config``, ``build``, ``up``, ``ps``; ``smoke``
is ``run ... smoke``) that exit 1; ``unhealthy`` services report unhealthy;
``exit`` one-shots exit with that code. ``$FAKE_COMPOSE_FAIL`` and
``$FAKE_COMPOSE_UNHEALTHY`` (comma-separated) do the same whatever the commit.
``$FAKE_COMPOSE_UP_SECONDS`` makes ``up`` take that long; ``$FAKE_COMPOSE_TAG``
is recorded with each call, to tell the callers of one test apart.

It also stands in for ``deploy/swarm.py`` (``SWARM="python fake_compose.py"``,
deploy/redeploy's swarm mode): ``config`` and ``build IMAGE`` succeed, ``deploy``
records ``$TILLFLOW_IMAGE`` as the image the stack runs (and fails, as "not
healthy", when a service is ``unhealthy``), ``image`` prints it (exit 1 before
the first deploy); each is failed on demand by its name in ``fail``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_SERVICES = "postgres kafka-1 kafka-2 kafka-3 kafka-init! migrate! consumer watcher api"


def flags() -> dict:
    found: dict = {"fail": [], "unhealthy": [], "exit": {}}
    path = Path(".fake-compose")
    if path.exists():
        found.update(json.loads(path.read_text(encoding="utf-8")))
    found["fail"] += [f for f in os.environ.get("FAKE_COMPOSE_FAIL", "").split(",") if f]
    found["unhealthy"] += [s for s in os.environ.get("FAKE_COMPOSE_UNHEALTHY", "").split(",") if s]
    return found


def services() -> dict[str, bool]:
    names = os.environ.get("FAKE_COMPOSE_SERVICES", DEFAULT_SERVICES).split()
    return {name.rstrip("!"): name.endswith("!") for name in names}


def subcommand(args: list[str]) -> str:
    positional = [a for a in args if not a.startswith("-")]
    if positional[:1] == ["run"] and "smoke" in positional:
        return "smoke"
    return positional[0] if positional else ""


def answer(command: str, args: list[str], found: dict) -> int:
    if command in found["fail"]:
        print(f"fake compose: {command} fails on demand", file=sys.stderr)
        return 1
    if command == "config" and "json" in args:
        print(json.dumps({"services": {name: {"restart": "no" if one_shot else "always"}
                                       for name, one_shot in services().items()}}))
    elif command == "ps":
        for name, one_shot in services().items():
            if one_shot:
                code = int(found["exit"].get(name, 0))
                row = {"Service": name, "Name": f"tillflow-{name}-1", "State": "exited", "Health": "",
                       "ExitCode": code}
            else:
                health = "unhealthy" if name in found["unhealthy"] else "healthy"
                row = {"Service": name, "Name": f"tillflow-{name}-1", "State": "running", "Health": health,
                       "ExitCode": 0}
            print(json.dumps(row))
    elif command == "up":
        time.sleep(float(os.environ.get("FAKE_COMPOSE_UP_SECONDS", "0")))
        print("fake compose: up")
    elif command == "smoke":
        print("smoke: every check passed")
    elif command == "image":
        if not running_image().exists():
            print("swarm: no stack", file=sys.stderr)
            return 1
        print(running_image().read_text(encoding="utf-8").strip())
    elif command == "deploy":
        if found["unhealthy"]:
            print(f"swarm: not healthy: {', '.join(found['unhealthy'])} update rollback_completed", file=sys.stderr)
            return 1
        running_image().write_text(os.environ.get("TILLFLOW_IMAGE", "") + "\n", encoding="utf-8")
    return 0


def running_image() -> Path:
    """The swarm stand-in's state: the image its stack runs."""
    return Path(os.environ["FAKE_COMPOSE_LOG"]).with_suffix(".image")


def head() -> str:
    """The work tree's commit: read from .git directly (quicker than a git process), else asked of git."""
    try:
        ref = Path(".git/HEAD").read_text().strip()
        return Path(".git", ref.removeprefix("ref: ")).read_text().strip() if ref.startswith("ref: ") else ref
    except OSError:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()


def main() -> int:
    args = sys.argv[1:]
    started = time.time()
    command = subcommand(args)
    code = answer(command, args, flags())
    entry = {"args": args, "command": command, "commit": head(), "pid": os.getpid(), "ppid": os.getppid(),
             "start": started, "end": time.time(), "exit": code, "tag": os.environ.get("FAKE_COMPOSE_TAG", ""),
             "image": os.environ.get("TILLFLOW_IMAGE", ""), "node_hosts": os.environ.get("SWARM_NODE_HOSTS", "")}
    with open(os.environ["FAKE_COMPOSE_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps(entry) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
