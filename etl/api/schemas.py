"""The OpenAPI document's models: what the API takes and answers.

The transaction routes read their bodies themselves (exact decimals, size
limits), so ``TransactionIn`` documents the body rather than parsing it; it is
as permissive as the API: any object is judged, and a broken rule makes the
item ``rejected`` with its reasons, not the request fail. Answers are built as
plain dicts on the hot path; the tests check them against these models.
"""
from __future__ import annotations

import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TRANSACTION_EXAMPLE = {
    "id": "3f2504e0-4f89-11d3-9a0c-0305e82c3301", "transaction_date": "2026-01-05", "category": "SELL",
    "name": "Milk", "quantity": 2, "amount_excl_tax": "2.50", "amount_inc_tax": "3.00",
}


class TransactionIn(BaseModel):
    """One transaction (docs/architecture.md, "The transaction record"). Amounts as strings such
    as "12.30" or as JSON numbers, read as exact decimals, never as binary floats."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"example": TRANSACTION_EXAMPLE})

    id: str = Field(description="UUID: the transaction's identity; resending it is safe")
    transaction_date: str = Field(description="calendar date, YYYY-MM-DD")
    category: str = Field(description="SELL or BUY (any case)")
    name: str = Field(description="product name, 1 to 200 characters")
    quantity: int = Field(description="whole number, at least 1")
    amount_excl_tax: str | float = Field(description="amount excluding tax, > 0, at most 2 decimals")
    amount_inc_tax: str | float = Field(description="amount_excl_tax x (1 + TAX_RATE), to the cent, +/- 0.01")
    store_id: str | None = Field(None, description="the token's store when absent; another store is refused (403)")


class Reason(BaseModel):
    field: str = Field(description="the record field, or 'row' for the item as a whole")
    code: str = Field(description="a stable machine code, e.g. tax_mismatch")
    message: str


class ItemResult(BaseModel):
    index: int = Field(description="0-based position of the item in the request")
    id: str | None = Field(description="canonical id of a valid item; the id as sent (or null) for a rejected one")
    status: Literal["accepted", "duplicate_in_request", "rejected"]
    reasons: list[Reason] | None = Field(None, description="every broken rule (rejected items only)")
    duplicate_of: int | None = Field(None, description="index of the earlier item with the same id")
    conflict: bool | None = Field(
        None, description="true when the duplicate's content differs: it is recorded in ingest.conflicts")


class TransactionsResult(BaseModel):
    """Kafka acknowledged every record of the request: accepted items and rejects (kept with their reasons)."""

    request_id: str
    accepted: int
    duplicates: int
    rejected: int
    results: list[ItemResult]


class UploadSummary(BaseModel):
    """What an upload did, as ``tillflow load`` prints it."""

    upload_id: str
    file: str
    sha256: str
    store_id: str
    transaction_date: datetime.date
    rows_read: int
    rows_accepted: int
    rows_rejected: int
    first_reasons: list[str] = Field(description="the first few rejected rows: line and reasons")
    reasons: dict[str, int] = Field(description="count of each reason code among the rejected rows")
    status: Literal["published"]


class UploadRecord(BaseModel):
    """An upload as ``ingest.uploads`` recorded it."""

    upload_id: str
    file: str
    sha256: str
    size_bytes: int
    source: str
    store_id: str
    rows_read: int | None
    rows_accepted: int | None
    rows_rejected: int | None
    status: Literal["started", "published", "failed"]
    created_at: datetime.datetime
    finished_at: datetime.datetime | None


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine code, e.g. payload_too_large")
    message: str = Field(description="what was wrong and what to do")


class ErrorBody(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    kafka: str = Field(description="'ok', or why Kafka cannot take writes now")


def error_responses(*statuses: int) -> dict[int | str, dict]:
    """The ``responses`` entry of a route for these error statuses."""
    described = {
        400: "The body is not UTF-8 JSON, or is malformed",
        401: "No bearer token, or one that is not valid",
        403: "An item names another store than the token's: nothing was published",
        404: "No such resource for this token's store",
        413: "The body, the batch or the file is beyond its limit",
        415: "The Content-Type is not one this route takes",
        422: "The request is not of the expected shape",
        503: "Kafka (or PostgreSQL) cannot answer now: nothing is confirmed, retry after Retry-After seconds",
    }
    out: dict[int | str, dict] = {}
    for status in statuses:
        entry: dict = {"model": ErrorBody, "description": described[status]}
        if status == 503:
            entry["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
        out[status] = entry
    return out
