"""The design lives in the repository: a clone has no shared folder beside it, so nothing may cite one."""
from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE = ("DESIGN" + ".md", ".." + "/shared")  # spelled apart, so that this file does not cite them


def test_nothing_cites_a_design_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    citing = []
    for name in tracked:
        path = ROOT / name
        if not path.is_file() or path.suffix in {".json", ".lock"}:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        citing += [f"{name}: {word}" for word in OUTSIDE if word in text]
    assert not citing, f"cite docs/architecture.md instead: {citing}"
    assert (ROOT / "docs" / "architecture.md").is_file()
