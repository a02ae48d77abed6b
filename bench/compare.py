"""A benchmark on two commits in one run (``make bench-compare BASE=<rev>``).

Refactors must not cost speed: this runs ``bench.ingest`` and ``bench.api``
(or those named with ``--bench``) on the commit ``--base`` and on the working
tree, one after the other, in the same minutes on the same machine, and
prints each figure that both runs have, as measured and as the working tree's
over the base's. The base is checked out with ``git worktree`` under
``build/bench-compare`` and runs with this checkout's virtualenv; each
benchmark measures its own ceiling, so the figures compared are the ratios
against it (and, for the API, the tail latencies and CPU per transaction).

Nothing else may run meanwhile: the two runs must see the same machine. The
results go to ``bench/results/compare.json``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "compare.json"
WORKTREES = REPO / "build" / "bench-compare"

# benchmark: (arguments, figures compared: (dotted path in its JSON, "higher" or "lower" is better))
BENCHES: dict[str, tuple[list[str], list[tuple[str, str]]]] = {
    "ingest": (
        ["--rows", "300000", "--cases", "copy_ceiling,consumer,end_to_end"],
        [("ratio_to_copy_ceiling.consumer", "higher"), ("ratio_to_copy_ceiling.end_to_end", "higher"),
         ("ratio_to_copy_ceiling.loader_only", "higher"), ("peak_rss_mb.loader", "lower"),
         ("peak_rss_mb.consumer", "lower")],
    ),
    "api": (
        ["--seconds", "10", "--ws-per-client", "20000"],
        [("vs_ceiling.http_max", "higher"), ("vs_ceiling.websocket_per_frame_1", "higher"),
         ("vs_ceiling.websocket_per_frame_100", "higher"), ("http.500.p99_ms", "lower"),
         ("http.max.server_cpu_us_per_tx", "lower"), ("websocket.per_frame_1.server_cpu_us_per_tx", "lower")],
    ),
}


def _git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def checkout(rev: str) -> tuple[str, Path]:
    """The commit ``rev`` checked out (detached) under build/bench-compare; its full hash and path."""
    sha = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    path = WORKTREES / sha[:12]
    if not (path / ".git").exists():
        WORKTREES.mkdir(parents=True, exist_ok=True)
        _git("worktree", "prune")
        _git("worktree", "add", "--detach", "--force", str(path), sha)
    return sha, path


def run(name: str, tree: Path, out: Path) -> dict:
    """``python -m bench.<name>`` of ``tree``'s code; its JSON results."""
    args, _ = BENCHES[name]
    before = tree / "bench" / "results" / f"{name}.json"
    supports_out = "--out" in (tree / "bench" / f"{name}.py").read_text()
    command = [sys.executable, "-m", f"bench.{name}", *args, *(["--out", str(out)] if supports_out else [])]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    print(f"\n== bench.{name} on {tree}", flush=True)
    subprocess.run(command, cwd=tree, env=env, check=True)
    result = out if supports_out else before
    data = json.loads(result.read_text())
    if not supports_out:  # an older bench.api writes into its own tree: leave that tree as it was
        subprocess.run(["git", "checkout", "--", str(before.relative_to(tree))], cwd=tree, check=False)
    return data


def figure(data: dict, path: str) -> float | None:
    value: object = data
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, (int, float)) else None


def compare(name: str, base: dict, head: dict) -> list[dict]:
    rows = []
    for path, better in BENCHES[name][1]:
        b, h = figure(base, path), figure(head, path)
        if b is None or h is None or b == 0:
            continue
        ratio = h / b
        rows.append({"figure": path, "better": better, "base": b, "head": h, "head_over_base": round(ratio, 3),
                     "worse_by": round((1 - ratio) if better == "higher" else (ratio - 1), 3)})
    return rows


def render(name: str, rows: list[dict]) -> str:
    lines = [f"bench.{name}: working tree vs base", f"  {'figure':45} {'base':>10} {'head':>10} {'head/base':>10}"]
    for row in rows:
        lines.append(f"  {row['figure']:45} {row['base']:>10.3f} {row['head']:>10.3f} {row['head_over_base']:>10.3f}"
                     f"  ({row['better']} is better)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the commit to compare with (a hash, tag or branch)")
    parser.add_argument("--bench", default=",".join(BENCHES), help=f"benchmarks to run (default {','.join(BENCHES)})")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS.relative_to(REPO)})")
    args = parser.parse_args(argv)
    names = [n for n in args.bench.split(",") if n]
    unknown = sorted(set(names) - set(BENCHES))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}: choose from {', '.join(BENCHES)}")
    sha, tree = checkout(args.base)
    head = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    scratch = WORKTREES / "results"
    scratch.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "compare", "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "base": sha, "head": head + ("+uncommitted changes" if dirty else ""), "results": {}}
    texts = []
    for name in names:
        # Base first, then the working tree: the same order every time.
        base = run(name, tree, scratch / f"{name}-base.json")
        mine = run(name, REPO, scratch / f"{name}-head.json")
        rows = compare(name, base, mine)
        report["results"][name] = rows
        texts.append(render(name, rows))
    report["load_average_at_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nbase {sha[:12]}, head {report['head'][:12]}{' (with uncommitted changes)' if dirty else ''}")
    print("\n\n".join(texts))
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
