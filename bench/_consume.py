"""Child process of the ingest benchmark: the real consumer, timed from inside.

Runs ``consumer.worker.Worker`` (exactly what ``tillflow consume`` runs) with its
default sink class, subclassed to count what each batch stored. Once ``--target`` records
are stored (inserted, duplicates, conflicts and rejects all count) it notes the
time and asks the worker to stop, which commits the batch's offsets and exits,
as SIGTERM would. Prints one JSON line on stdout::

    {"t_run": ..., "t_first_write": ..., "t_done": ..., "inserted": ..., ...}

Times are ``time.monotonic()`` (CLOCK_MONOTONIC: comparable with the parent's).
Usage: ``python -m bench._consume --target N [--profile FILE]``, configured by
the usual environment (DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS, topics, group).
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time

from bench._proc import proc_cpu_seconds
from consumer.sink import Batch, PostgresSink, WriteResult
from consumer.worker import Worker
from tillflow.config import Settings


def counting_sink_class(base: type[PostgresSink]) -> type[PostgresSink]:
    """``base`` (the sink class the Worker uses by default) counting what each batch stored."""

    class CountingSink(base):
        def __init__(self, url: str, tax_rate, target: int) -> None:
            super().__init__(url, tax_rate)
            self.target = target
            self.stored = 0
            self.batches = 0
            self.write_seconds = 0.0
            self.t_first_write: float | None = None
            self.t_done: float | None = None
            self.on_done = lambda: None
            self.backend_pid: int | None = None
            self.backend_cpu_start: float | None = None
            self.backend_cpu_seconds: float | None = None

        def write(self, batch: Batch) -> WriteResult:
            if self.backend_pid is None:
                self.backend_pid = self._connection().get_backend_pid()
                self.backend_cpu_start = proc_cpu_seconds(self.backend_pid)
            started = time.monotonic()
            result = super().write(batch)
            ended = time.monotonic()
            self.write_seconds += ended - started
            self.batches += 1
            if self.t_first_write is None:
                self.t_first_write = started
            self.stored += result.inserted + result.duplicates + result.conflicts + result.rejects
            if self.t_done is None and self.stored >= self.target:
                self.t_done = ended
                now = proc_cpu_seconds(self.backend_pid)
                if now is not None and self.backend_cpu_start is not None:
                    self.backend_cpu_seconds = now - self.backend_cpu_start
                self.on_done()
            return result

    return CountingSink


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", type=int, required=True)
    parser.add_argument("--idle", type=float, default=None, help="also stop after this long idle (safety)")
    parser.add_argument("--profile", help="write a cProfile of the run to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)

    t_start = time.monotonic()
    settings = Settings.from_env(need_kafka=True, need_database=True)
    default_sink = Worker(settings).sink  # whatever sink `tillflow consume` would use (not connected yet)
    default_sink.close()
    sink = counting_sink_class(type(default_sink))(settings.database_url, settings.tax_rate, args.target)
    worker = Worker(settings, sink=sink)
    sink.on_done = worker.stop
    t_run = time.monotonic()
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        totals = profiler.runcall(worker.run, until_idle=args.idle)
        profiler.dump_stats(args.profile)
    else:
        totals = worker.run(until_idle=args.idle)
    t_exit = time.monotonic()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "t_start": t_start, "t_run": t_run, "t_first_write": sink.t_first_write, "t_done": sink.t_done,
        "t_exit": t_exit, "inserted": totals.inserted, "duplicates": totals.duplicates,
        "conflicts": totals.conflicts, "rejects": totals.rejects, "batches": sink.batches,
        "write_seconds": sink.write_seconds, "backend_cpu_seconds": sink.backend_cpu_seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
    }), flush=True)
    return 0 if sink.t_done is not None else 3


if __name__ == "__main__":
    sys.exit(main())
