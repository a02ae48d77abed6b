"""Rendering a report: the same answers in table, CSV and JSON, amounts exact."""
from __future__ import annotations

import csv
import io
import json
from datetime import date
from decimal import Decimal

import pytest

from tillflow.report import FORMATS, render

D = Decimal

REPORT = {
    "product": None,
    "daily_transactions": [
        {"transaction_date": date(2024, 3, 1), "transactions": 3,
         "sell_amount_inc_tax": D("1234.50"), "buy_amount_inc_tax": D("12.00")},
        {"transaction_date": date(2024, 3, 4), "transactions": 1,
         "sell_amount_inc_tax": D("0.00"), "buy_amount_inc_tax": D("99999.99")},
    ],
    "category_totals": [
        {"category": "SELL", "transactions": 2, "amount_excl_tax": D("1028.75"), "amount_inc_tax": D("1234.50")},
        {"category": "BUY", "transactions": 2, "amount_excl_tax": D("83343.33"), "amount_inc_tax": D("100011.99")},
    ],
    "product_daily_balance": [
        {"name": "Apple", "transaction_date": date(2024, 3, 1), "sell_amount_inc_tax": D("1234.50"),
         "buy_amount_inc_tax": D("0.00"), "balance": D("1234.50"), "cumulative_balance": D("1234.50")},
        {"name": "Apple", "transaction_date": date(2024, 3, 4), "sell_amount_inc_tax": D("0.00"),
         "buy_amount_inc_tax": D("99999.99"), "balance": D("-99999.99"), "cumulative_balance": D("-98765.49")},
        {"name": "Tomato, cherry \"250g\"", "transaction_date": date(2024, 3, 1), "sell_amount_inc_tax": D("0.00"),
         "buy_amount_inc_tax": D("12.00"), "balance": D("-12.00"), "cumulative_balance": D("-12.00")},
    ],
}


def test_json_keeps_amounts_as_two_decimal_strings_and_dates_iso():
    parsed = json.loads(render(REPORT, "json"))
    assert parsed["product"] is None
    assert parsed["daily_transactions"][0] == {
        "transaction_date": "2024-03-01", "transactions": 3,
        "sell_amount_inc_tax": "1234.50", "buy_amount_inc_tax": "12.00",
    }
    assert parsed["category_totals"][1]["amount_inc_tax"] == "100011.99"
    assert [row["cumulative_balance"] for row in parsed["product_daily_balance"]] == ["1234.50", "-98765.49", "-12.00"]
    for section in ("daily_transactions", "category_totals", "product_daily_balance"):
        for row in parsed[section]:
            for key, value in row.items():
                assert not isinstance(value, float), (section, key)


def test_csv_has_one_section_per_answer_with_its_header():
    text = render(REPORT, "csv")
    sections = [list(csv.reader(io.StringIO(chunk))) for chunk in text.strip("\n").split("\n\n")]
    assert [s[0] for s in sections] == [
        ["section", "transaction_date", "transactions", "sell_amount_inc_tax", "buy_amount_inc_tax"],
        ["section", "category", "transactions", "amount_excl_tax", "amount_inc_tax"],
        ["section", "name", "transaction_date", "sell_amount_inc_tax", "buy_amount_inc_tax", "balance",
         "cumulative_balance"],
    ]
    assert sections[0][1] == ["daily_transactions", "2024-03-01", "3", "1234.50", "12.00"]
    assert sections[1][1:] == [
        ["category_totals", "SELL", "2", "1028.75", "1234.50"],
        ["category_totals", "BUY", "2", "83343.33", "100011.99"],
    ]
    # A name with a comma and quotes survives the round trip.
    assert sections[2][3] == ["product_daily_balance", 'Tomato, cherry "250g"', "2024-03-01", "0.00", "12.00",
                              "-12.00", "-12.00"]
    assert all(len(row) == len(section[0]) for section in sections for row in section)


def test_table_shows_every_number_aligned_and_the_sell_total():
    text = render(REPORT, "table")
    for number in ("1234.50", "99999.99", "-98765.49", "83343.33", "100011.99", "2024-03-04"):
        assert number in text
    assert "Total amount incl. tax of all SELL transactions: 1234.50" in text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("date") and "SELL incl. tax" in line)
    # Right-aligned amounts end in the same column as their header.
    assert lines[header + 2].endswith("12.00") and lines[header + 3].endswith("99999.99")
    assert len(lines[header + 2]) == len(lines[header + 3]) == len(lines[header])


def test_an_unknown_product_reads_as_no_rows_not_an_error():
    report = {**REPORT, "product": "Durian", "product_daily_balance": []}
    assert "(no transactions for product 'Durian')" in render(report, "table")
    assert json.loads(render(report, "json"))["product_daily_balance"] == []
    assert render(report, "csv").rstrip("\n").endswith(
        "section,name,transaction_date,sell_amount_inc_tax,buy_amount_inc_tax,balance,cumulative_balance"
    )


def test_an_unknown_format_is_refused():
    assert FORMATS == ("table", "csv", "json")
    with pytest.raises(ValueError, match="unknown report format 'xml'"):
        render(REPORT, "xml")
