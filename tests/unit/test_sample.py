"""``tillflow sample``: a file the quick start loads, read back by the real CSV source."""
from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import pytest

from etl.sources.csv import read_csv
from tillflow.record import Rejected, Transaction
from tillflow.sample import write_sample

DAY = datetime.date(2026, 11, 26)
TILLFLOW = str(Path(sys.executable).with_name("tillflow"))


def results(path: Path) -> list:
    return [result for chunk in read_csv(path) for result in chunk]


@pytest.mark.parametrize("invalid", [0, 1, 2, 3])
def test_the_sample_is_named_for_its_day_and_the_validator_takes_exactly_its_valid_rows(tmp_path, invalid):
    path = write_sample(tmp_path, DAY, rows_count=25, invalid=invalid)
    assert path.name == "retail_26_11_2026.csv"
    read = results(path)
    valid = [r for r in read if isinstance(r, Transaction)]
    rejected = [r for r in read if isinstance(r, Rejected)]
    assert len(valid) == 25 and len(rejected) == invalid
    assert {t.transaction_date for t in valid} == {DAY}
    assert len({t.id for t in valid} | {r.raw["id"] for r in rejected}) == 25 + invalid, "every id is its own"
    codes = [{reason.code for reason in r.reasons} for r in rejected]
    assert all(len(c) == 1 for c in codes), "each invalid row breaks one rule"


def test_the_command_prints_the_path_and_never_overwrites(tmp_path):
    done = subprocess.run([TILLFLOW, "sample", "--dir", str(tmp_path), "--date", "2026-11-26"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == f"{tmp_path / 'retail_26_11_2026.csv'}\n"
    again = subprocess.run([TILLFLOW, "sample", "--dir", str(tmp_path), "--date", "2026-11-26"],
                           capture_output=True, text=True)
    assert again.returncode == 1 and again.stderr.strip() == (
        f"tillflow sample: {tmp_path / 'retail_26_11_2026.csv'} exists already: move it away or give another --date")
