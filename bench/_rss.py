"""Run a module as ``python -m`` would and record the process's peak RSS and CPU time at exit.

``python -m bench._rss OUT -m MODULE [ARGS...]`` writes ``{"vm_hwm_kb": ...,
"cpu_user": ..., "cpu_sys": ...}`` for this process (all its threads) to ``OUT``
at exit: the kernel's ``VmHWM`` and ``getrusage(RUSAGE_SELF)``. CPU seconds per
row are the figure least disturbed by other load on a shared 2-core machine. ``ru_maxrss`` from ``wait4`` cannot be used for
a child of the benchmark: Linux folds the pre-exec address space's high-water mark
(the forked copy of the parent) into it, so every child would look as large as
the parent. ``VmHWM`` belongs to the new address space only.
"""
from __future__ import annotations

import atexit
import json
import resource
import runpy
import sys


def _vm_hwm_kb() -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[2] != "-m":
        sys.exit("usage: python -m bench._rss OUT -m MODULE [ARGS...]")
    out, module = sys.argv[1], sys.argv[3]

    def record() -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        with open(out, "w") as handle:
            json.dump({"vm_hwm_kb": _vm_hwm_kb(), "cpu_user": usage.ru_utime, "cpu_sys": usage.ru_stime}, handle)

    atexit.register(record)
    sys.argv = [module, *sys.argv[4:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
