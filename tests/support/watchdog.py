"""What a killed test run leaves behind, removed the moment it dies.

``python -m support.watchdog PID STATE_DIR`` runs beside a pytest session, in a
session of its own (a Ctrl-C to pytest's process group does not reach it), and
waits for PID to end. Then, whatever way it ended:

* every undo command a test registered in STATE_DIR (``register``) runs: the
  native stack ``make local`` starts detached (it outlives its parent by
  design) is stopped, a compose stack is taken down;
* every container and network labelled with PID (``services.RUN_LABEL``) is
  removed.

After a clean session there is nothing left to do and it exits. The native test
servers need no help: they die with pytest (``attached``).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

RUN_LABEL = "org.tillflow.test-run"  # the label support.services puts on its containers


def start(state_dir: Path) -> subprocess.Popen:
    """Start the watchdog of this process."""
    state_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "support.watchdog", str(os.getpid()), str(state_dir)],
                            cwd=Path(__file__).resolve().parents[1], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def register(state_dir: Path, name: str, argv: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> Path:
    """What to run (in ``env``, default this process's environment) should this session die before
    it undoes something itself (a stack it started); delete the returned file once it is undone."""
    entry = state_dir / f"{name}.json"
    entry.write_text(json.dumps({"argv": argv, "cwd": str(cwd), "env": dict(os.environ if env is None else env)}),
                     encoding="utf-8")
    return entry


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def clean_up(pid: int, state_dir: Path) -> None:
    for entry in sorted(state_dir.glob("*.json")):
        undo = json.loads(entry.read_text(encoding="utf-8"))
        subprocess.run(undo["argv"], cwd=undo["cwd"], env=undo["env"], capture_output=True, timeout=600)
    if shutil.which("docker"):
        listed = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={RUN_LABEL}={pid}"],
                                capture_output=True, text=True, timeout=60)
        containers = listed.stdout.split()
        if containers:
            subprocess.run(["docker", "rm", "-f", "-v", *containers], capture_output=True, timeout=300)
        subprocess.run(["docker", "network", "prune", "-f", "--filter", f"label={RUN_LABEL}={pid}"],
                       capture_output=True, timeout=60)
    shutil.rmtree(state_dir, ignore_errors=True)


def main(argv: list[str]) -> int:
    pid, state_dir = int(argv[0]), Path(argv[1])
    while _alive(pid):
        time.sleep(1.0)
    clean_up(pid, state_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
