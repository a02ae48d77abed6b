"""bench.compare's reading of two runs (the runs themselves are benchmarks, not tests)."""
from __future__ import annotations

import subprocess

import pytest

from bench import compare


def test_figures_are_compared_by_the_direction_that_is_better():
    base = {"ratio_to_copy_ceiling": {"consumer": 0.5, "end_to_end": 0.4}, "peak_rss_mb": {"consumer": 100}}
    head = {"ratio_to_copy_ceiling": {"consumer": 0.45, "end_to_end": 0.44}, "peak_rss_mb": {"consumer": 110}}
    rows = {row["figure"]: row for row in compare.compare("ingest", base, head)}
    assert rows["ratio_to_copy_ceiling.consumer"]["head_over_base"] == 0.9
    assert rows["ratio_to_copy_ceiling.consumer"]["worse_by"] == pytest.approx(0.1)
    assert rows["ratio_to_copy_ceiling.end_to_end"]["worse_by"] == pytest.approx(-0.1)  # better
    assert rows["peak_rss_mb.consumer"]["worse_by"] == pytest.approx(0.1)  # more memory is worse
    # A figure only one side has (a case the base did not know) is left out, not guessed.
    assert "ratio_to_copy_ceiling.loader_only" not in rows
    assert compare.figure({"a": {"b": "text"}}, "a.b") is None


def test_the_base_is_a_detached_worktree_of_that_commit(tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "WORKTREES", tmp_path / "trees")
    sha, tree = compare.checkout("HEAD")
    try:
        assert sha == compare._git("rev-parse", "HEAD")
        assert compare._git("rev-parse", "HEAD", cwd=tree) == sha
        assert compare.checkout("HEAD") == (sha, tree)  # kept for the next run
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=compare.REPO, check=True)


def test_an_unknown_benchmark_is_refused_before_anything_runs(capsys):
    with pytest.raises(SystemExit) as exit_:
        compare.main(["--base", "HEAD", "--bench", "ingest,nope"])
    assert exit_.value.code == 2
    assert "unknown benchmark(s) nope" in capsys.readouterr().err
