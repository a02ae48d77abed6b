"""Reading another process's CPU time from /proc (e.g. a PostgreSQL backend on this machine)."""
from __future__ import annotations

import os
from pathlib import Path


def proc_cpu_seconds(pid: int) -> float | None:
    """user + system CPU seconds of process ``pid`` so far; None if it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
