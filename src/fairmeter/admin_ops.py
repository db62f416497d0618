"""What the admin API and the admin CLI share, so both read amounts and times, and make keys, the same way.

The changes themselves are SQL in :mod:`fairmeter.store.admin_sql`; this module turns what a person
typed (a dollar string, a time) into what that SQL takes, and does the one change that needs two
transactions: creating a key and giving it its owner.
"""

from __future__ import annotations

import contextlib
import math
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from fairmeter.errors import FairmeterError, InvalidRequest
from fairmeter.money import NANO_PER_USD, Nano, parse_usd, usd_str
from fairmeter.record import record
from fairmeter.store import Store, admin_sql
from fairmeter.store.sql import Tx

MAX_AMOUNT_USD = Decimal(1_000_000_000)  # one change never comes near the 64-bit nano-USD columns
LATEST_S = 253_402_300_799  # 9999-12-31T23:59:59Z
MAX_KEY_NAME = 200


def usd_amount(value: object, field: str) -> Nano:
    """A dollar amount written as a decimal string (never a float), exact to the nano-dollar."""
    usd = Decimal(-1)
    if isinstance(value, str):
        with contextlib.suppress(ValueError, ArithmeticError):
            usd = parse_usd(value.strip())
    if usd < 0:
        raise InvalidRequest(f'{field} must be a dollar amount as a string, e.g. "5.00" (got {value!r}).', field)
    if usd > MAX_AMOUNT_USD:
        raise InvalidRequest(f"{field} must be at most ${MAX_AMOUNT_USD:,} (got {value!r}).", field)
    nano = usd * NANO_PER_USD
    if nano != nano.to_integral_value():
        raise InvalidRequest(f"{field} has more than 9 decimal places; fairmeter keeps whole nano-dollars.", field)
    return int(nano)


def instant(value: object, field: str) -> float:  # float-ok: seconds
    """An ISO-8601 time (UTC when it names no zone) or epoch seconds, as epoch seconds."""
    seconds = math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _seconds_of_text(value.strip())
    if not (math.isfinite(seconds) and 0 <= seconds <= LATEST_S):
        raise InvalidRequest(
            f'{field} must be an ISO-8601 time such as "2026-12-31T00:00:00Z" or epoch seconds (got {value!r}).', field
        )
    return seconds


def _seconds_of_text(text: str) -> float:  # float-ok: seconds
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return math.nan
    return (when if when.tzinfo is not None else when.replace(tzinfo=UTC)).timestamp()


@record
class KeyRequest:
    """A key to make: its name, cap and role, and who it belongs to (``admin_sql.key_owner``)."""

    name: str
    max_spend: Nano | None
    admin: bool = False
    org: str | None = None
    user: str | None = None
    service: str | None = None


async def create_owned_key(store: Store, req: KeyRequest, actor: str, now: float) -> dict[str, Any]:
    """Create a key and assign it to its owner and payer; returns its record with the secret (shown once).

    The owner is checked before the key is made, so a request naming an unknown organisation or user
    leaves nothing behind (there is no way to delete an organisation, user or payer in between).
    """
    if not req.name.strip() or len(req.name) > MAX_KEY_NAME:
        raise InvalidRequest(f"A key needs a name of 1 to {MAX_KEY_NAME} characters.", "name")
    await store.run(lambda tx: admin_sql.key_owner(tx, req.org, req.user, req.service))
    key, secret = await store.create_key(req.name, req.max_spend, req.admin, now)
    cap = None if req.max_spend is None else usd_str(req.max_spend)

    async def assign(tx: Tx) -> dict[str, Any]:
        await admin_sql.log_change(tx, actor, "key.create", key.id, {"name": key.name, "admin": key.admin,
                                                                     "max_spend_usd": cap}, now)  # fmt: skip
        return await admin_sql.assign_key(tx, key.id, req.org, req.user, req.service, actor, now)

    try:
        owner = await store.run(assign)
    except FairmeterError:
        await store.revoke_key(key.id, now)
        raise
    return {"id": key.id, "key": secret, "name": key.name, "admin": key.admin, "max_spend_usd": cap, **owner}
