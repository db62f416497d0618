"""Plain records the store reads and writes (no SQL here)."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from datetime import UTC, datetime
from typing import Any

from fairmeter.ledger.model import HoldRefused
from fairmeter.money import Nano, usd_str
from fairmeter.record import record

KEY_PREFIX = "fm-"


def hash_key(key: str) -> str:
    """Keys are stored only as SHA-256 hashes (they are random 192-bit secrets, so no salt is needed)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@record
class KeyRecord:
    """A fairmeter key (only its hash is stored)."""

    id: str
    name: str
    prefix: str
    admin: bool
    max_spend: Nano | None
    created_at: float  # float-ok: seconds
    revoked_at: float | None  # float-ok: seconds
    payer_id: str | None = None  # who pays for its calls (docs/funding.md); None only before migration m002

    @property
    def account(self) -> str:
        return key_account(self.id)


def new_key(name: str, max_spend: Nano | None, admin: bool, now: float) -> tuple[KeyRecord, str]:  # float-ok: seconds
    """A fresh key's record and its secret (shown once; a backend stores only ``hash_key(secret)``)."""
    secret = KEY_PREFIX + secrets.token_urlsafe(24)
    record = KeyRecord("key_" + secrets.token_hex(6), name, secret[:7], admin, max_spend, now, None, DEFAULT_PAYER)
    return record, secret


DEFAULT_ORG = "org_default"  # created by migration m002, on the pay-as-you-go plan
DEFAULT_PAYER = "pay_default"


def key_account(key_id: str) -> str:
    """The ledger account a key's calls are held and posted against."""
    return f"key:{key_id}"


def provider_account(provider: str) -> str:
    """The ledger account credited with what a provider is owed."""
    return f"provider:{provider}"


@record
class CallStart:
    """What is known about a call when its hold is placed."""

    id: str
    key_id: str | None
    provider: str
    api: str
    model: str | None
    stream: bool
    reserved: Nano
    estimate: Nano  # settled at lease lapse for a forwarded call (prompt estimate)
    prices_json: str | None
    price_source: str | None
    idempotency_key: str | None
    started_at: float  # float-ok: seconds
    lease_owner: str
    lease_expires_at: float  # float-ok: seconds
    payer_id: str | None = None  # None: only the key's cap applies (a key from before migration m002)
    tokens: int = 0  # worst-case tokens of every class, for subscription windows counted in tokens


@record
class CallEnd:
    """How a call ended, written when it is settled or voided."""

    status: str  # ok | upstream_error | client_disconnected | upstream_cut
    upstream_status: int | None
    usage_status: str
    usage_json: str | None
    cost_usd: str | None  # exact, unrounded decimal string; None when nothing was reported
    billed: Nano
    estimated: bool
    breakdown_json: str | None
    ended_at: float  # float-ok: seconds
    message: str | None = None
    stored_response: StoredResponse | None = None
    prices_json: str | None = None  # replaces the held call's unit prices when it was served in another tier
    price_source: str | None = None
    tokens: int = 0  # tokens of every class the provider reported, for windows counted in tokens


@record
class StoredResponse:
    """A settled call's response, kept for idempotent replays."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    stream: bool


@record
class HoldOutcome:
    """Result code of a hold (TigerBeetle style: results, not exceptions)."""

    kind: str  # held | refused (the key's cap) | unfunded (the payer's buckets) | in_use | replay
    refused: HoldRefused | None = None
    other_call_id: str | None = None
    stored: StoredResponse | None = None
    unfunded: str | None = None  # why the payer's buckets cannot cover the hold (docs/funding.md)
    fundable: Nano = 0  # what they could cover: a smaller request up to this would fit
    details: dict[str, Any] | None = None  # the refusal's numbers (window, used, limit, resets_at …)


CALL_STATUSES = ("ok", "upstream_error", "refused", "bad_request", "client_disconnected", "upstream_cut", "pending")
MAX_LIST_LIMIT = 1000

USAGE_FIELDS = (
    "input_tokens",
    "uncached_input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "reasoning_tokens",
    "web_search_requests",
)


def next_cursor(rows: list[dict[str, Any]], limit: int) -> tuple[list[dict[str, Any]], str | None]:
    """A page of ``list_calls`` asked with ``limit + 1`` rows: its first ``limit`` rows, and the cursor of the page
    after (None: this is the last); see `fairmeter.store.protocol.call_page`."""
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], base64.urlsafe_b64encode(f"{last['started_at']!r}|{last['id']}".encode()).decode()


def read_cursor(token: str) -> tuple[float, str]:  # float-ok: seconds
    """The (started_at, id) a cursor of `next_cursor` stands for; ValueError if it is not one."""
    try:
        ts, call_id = base64.urlsafe_b64decode(token.encode()).decode().split("|", 1)
        return float(ts), call_id
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors too
        raise ValueError(f"{token!r} is not a cursor of a call listing") from None


def iso(ts: float | None) -> str | None:  # float-ok: seconds
    """ISO-8601 UTC with milliseconds, or None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def call_json(row: dict[str, Any]) -> dict[str, Any]:
    """The public shape of a call record (GET /fairmeter/v1/calls/{id}), from a `calls` row."""
    usage: dict[str, Any] = json.loads(row["usage_json"]) if row["usage_json"] else {}
    out: dict[str, Any] = {
        "id": row["id"],
        "key_id": row["key_id"],
        "provider": row["provider"],
        "api": row["api"],
        "model": row["model"],
        "stream": bool(row["stream"]),
        "status": row["status"],
        "upstream_status": row["upstream_status"],
        "usage_status": row["usage_status"],
    }
    for name in USAGE_FIELDS:
        out[name] = usage.get(name) if usage else (None if row["usage_status"] == "unknown" else 0)
    out.update(
        {
            "cost_usd": row["cost_usd"],
            "billed_usd": usd_str(row["billed_nano"]),
            "estimated": bool(row["estimated"]),
            "cost_breakdown_usd": json.loads(row["breakdown_json"]) if row["breakdown_json"] else {},
            "reserved_usd": usd_str(row["reserved_nano"]),
            "unit_prices": json.loads(row["prices_json"]) if row["prices_json"] else None,
            "price_source": row["price_source"],
            "idempotency_key": row["idempotency_key"],
            "replay_of": row["replay_of"],
            "needs_reconciliation": bool(row["needs_reconciliation"]),
            "overrun_usd": usd_str(row["overrun_nano"]) if row["overrun_nano"] else None,
            "error_code": row["error_code"],
            "message": row["message"],
            "started_at": iso(row["started_at"]),
            "ended_at": iso(row["ended_at"]),
        }
    )
    return out


def explain_json(row: dict[str, Any]) -> dict[str, Any]:
    """Why a call was charged what it was: which buckets paid how much, and one sentence.

    From a ``calls`` row: ``paid_json`` and ``explanation`` are written when the call is settled.
    """
    paid = json.loads(row["paid_json"]) if row.get("paid_json") else None
    sentence = row.get("explanation") or "Nothing was charged."
    if sentence == "Nothing was charged." and row["message"]:
        sentence = f"Nothing was charged: {row['message']}"
    return {
        "call_id": row["id"],
        "status": row["status"],
        "payer_id": row.get("payer_id"),
        "billed_usd": usd_str(row["billed_nano"]),
        "paid": [
            {"bucket": bucket, "source": source, "amount_usd": usd_str(amount)}
            for bucket, source, amount in (paid["portions"] if paid else [])
        ],
        "windows": [
            {"name": name, "period_start": iso(start), "charged": usd_str(amount) if unit == "usd" else amount,
             "unit": unit}
            for name, start, amount, unit in (paid["windows"] if paid else [])
        ],
        "overrun_usd": usd_str(paid["overrun"]) if paid and paid["overrun"] else None,
        "sentence": sentence,
    }  # fmt: skip
