"""Plans: which funding buckets a payer has, their sizes, the burn order and the default switches.

A plan is written as a mapping (JSON in the admin API, TOML-like in the CLI)::

    {"name": "pro",
     "windows": [{"name": "5h", "kind": "block", "hours": 5, "limit_usd": "5.00"},
                 {"name": "weekly", "kind": "weekly", "anchor": "monday 09:00", "limit_usd": "50"}],
     "order": ["subscription", "grants", "credits", "overage"],
     "spill_to_credits": false, "spill_cap_usd": "20", "spill_period": "month",
     "overage_enabled": false, "overage_cap_usd": "100", "overage_period": "month",
     "grant_days": 90}

A window's limit is ``limit_usd`` (list-price dollars) or ``limit_tokens``. Every mistake is a
``ValueError`` whose message names the field and says what is accepted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from fairmeter.ledger.funding import DEFAULT_ORDER, SPILL_BUCKETS, BucketKind, check_order
from fairmeter.ledger.windows import WEEKDAYS, Period, Unit, WindowKind, WindowSpec
from fairmeter.money import Nano, hold_nano, parse_usd, usd_str
from fairmeter.record import record

NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
PLAN_KEYS = {
    "name",
    "windows",
    "order",
    "spill_to_credits",
    "spill_cap_usd",
    "spill_period",
    "overage_enabled",
    "overage_cap_usd",
    "overage_period",
    "grant_days",
}
WINDOW_KEYS = {"name", "kind", "hours", "anchor", "limit_usd", "limit_tokens"}


@record
class Switches:
    """Whether a call may move past the subscription, and the caps on doing so."""

    spill_to_credits: bool = False
    spill_cap: Nano | None = None
    spill_period: Period = Period.MONTH
    overage_enabled: bool = False
    overage_cap: Nano | None = None
    overage_period: Period = Period.MONTH


@record
class Plan:
    name: str
    windows: tuple[WindowSpec, ...] = ()
    order: tuple[BucketKind, ...] = DEFAULT_ORDER
    switches: Switches = Switches()
    grant_days: int = 90


def overage_only(plan: Plan, switches: Switches) -> bool:
    """Whether `allocate` places a hold of any positive size whole on overage, having read nothing: no
    subscription window, overage on and uncapped, and no bucket before it that could take a share (a grant or
    credits bucket with ``spill_to_credits`` on). The pay-as-you-go plan every new key starts on is such a plan.
    A store may then place and settle the funding leg directly (tests/ledger/test_overage_only.py holds it to
    `allocate` and `draw`)."""
    if plan.windows or not switches.overage_enabled or switches.overage_cap is not None:
        return False
    for bucket in plan.order:
        if bucket is BucketKind.OVERAGE:
            return True
        if bucket in SPILL_BUCKETS and switches.spill_to_credits:
            return False
    return False


def check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not NAME.match(value):
        raise ValueError(
            f"{what} must be 1-64 characters of lowercase letters, digits, '.', '_' or '-' (got {value!r})"
        )
    return value


def _usd(value: object, field: str) -> Nano:
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise ValueError(f'{field} must be a dollar amount written as a string or an integer, e.g. "5.00"')
    try:
        return hold_nano(parse_usd(value))
    except (ValueError, InvalidOperation):
        raise ValueError(f'{field} must be a non-negative dollar amount, e.g. "5.00" (got {value!r})') from None


def _opt_usd(value: object, field: str) -> Nano | None:
    return None if value is None else _usd(value, field)


def _bool(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{field} must be true or false (got {value!r})")
    return value


def _period(value: object, field: str) -> Period:
    try:
        return Period(str(value))
    except ValueError:
        raise ValueError(f"{field} must be one of {', '.join(p.value for p in Period)} (got {value!r})") from None


def _int(value: object, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{field} must be a whole number from {low} to {high} (got {value!r})")
    return value


def parse_anchor(text: object, field: str) -> tuple[int, int]:
    """``"monday 09:00"`` → (0, 32400): a weekday and a UTC time of day."""
    m = re.fullmatch(r"\s*([a-zA-Z]+)\s+(\d{1,2}):(\d{2})\s*(?:UTC)?\s*", text if isinstance(text, str) else "")
    if not m or m.group(1).lower() not in WEEKDAYS or int(m.group(2)) > 23 or int(m.group(3)) > 59:
        raise ValueError(f'{field} must be a weekday and a UTC time, e.g. "monday 09:00" (got {text!r})')
    return WEEKDAYS.index(m.group(1).lower()), int(m.group(2)) * 3600 + int(m.group(3)) * 60


def parse_window(data: object, index: int) -> WindowSpec:
    where = f"windows[{index}]"
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be an object with name, kind and a limit")
    unknown = set(data) - WINDOW_KEYS
    if unknown:
        raise ValueError(f"{where} has unknown field(s) {sorted(unknown)}; accepted: {sorted(WINDOW_KEYS)}")
    name = check_name(data.get("name"), f"{where}.name")
    try:
        kind = WindowKind(str(data.get("kind")))
    except ValueError:
        raise ValueError(f'{where}.kind must be "block" or "weekly" (got {data.get("kind")!r})') from None
    if ("limit_usd" in data) == ("limit_tokens" in data):
        raise ValueError(f"{where} needs exactly one of limit_usd (dollars) or limit_tokens")
    if "limit_usd" in data:
        limit, unit = _usd(data["limit_usd"], f"{where}.limit_usd"), Unit.USD
    else:
        limit, unit = _int(data["limit_tokens"], f"{where}.limit_tokens", 0, 10**15), Unit.TOKENS
    if kind is WindowKind.BLOCK:
        if "anchor" in data:
            raise ValueError(f"{where}: a block window opens with the first call; it takes hours, not an anchor")
        hours = _int(data.get("hours", 5), f"{where}.hours", 1, 24 * 31)
        return WindowSpec(name, kind, limit, unit, length_s=hours * 3600)
    if "hours" in data:
        raise ValueError(f"{where}: a weekly window lasts 7 days; it takes an anchor, not hours")
    day, at = parse_anchor(data.get("anchor", "monday 00:00"), f"{where}.anchor")
    return WindowSpec(name, kind, limit, unit, anchor_weekday=day, anchor_s=at)


def parse_switches(data: Mapping[str, Any], base: Switches) -> Switches:
    """The switch fields present in ``data`` over ``base`` (a plan's defaults or a payer's current)."""
    return Switches(
        spill_to_credits=_bool(data.get("spill_to_credits", base.spill_to_credits), "spill_to_credits"),
        spill_cap=_opt_usd(data["spill_cap_usd"], "spill_cap_usd") if "spill_cap_usd" in data else base.spill_cap,
        spill_period=_period(data.get("spill_period", base.spill_period), "spill_period"),
        overage_enabled=_bool(data.get("overage_enabled", base.overage_enabled), "overage_enabled"),
        overage_cap=(
            _opt_usd(data["overage_cap_usd"], "overage_cap_usd") if "overage_cap_usd" in data else base.overage_cap
        ),
        overage_period=_period(data.get("overage_period", base.overage_period), "overage_period"),
    )


def plan_from_mapping(data: Mapping[str, Any]) -> Plan:
    unknown = set(data) - PLAN_KEYS
    if unknown:
        raise ValueError(f"unknown plan field(s) {sorted(unknown)}; accepted: {sorted(PLAN_KEYS)}")
    raw_windows = data.get("windows", [])
    if not isinstance(raw_windows, list):
        raise ValueError("windows must be a list of window objects")
    windows = tuple(parse_window(w, i) for i, w in enumerate(raw_windows))
    if len({w.name for w in windows}) != len(windows):
        raise ValueError("two windows of a plan have the same name")
    raw_order = data.get("order", [b.value for b in DEFAULT_ORDER])
    if not isinstance(raw_order, list) or not all(isinstance(x, str) for x in raw_order):
        raise ValueError("order must be a list of bucket names: subscription, grants, credits, overage")
    try:
        order = check_order(raw_order)
    except ValueError as exc:
        raise ValueError(f"order: {exc}; buckets are subscription, grants, credits, overage") from None
    return Plan(
        name=check_name(data.get("name"), "name"),
        windows=windows,
        order=order,
        switches=parse_switches(data, Switches()),
        grant_days=_int(data.get("grant_days", 90), "grant_days", 1, 3650),
    )


def switches_to_mapping(s: Switches) -> dict[str, Any]:
    return {
        "spill_to_credits": s.spill_to_credits,
        "spill_cap_usd": None if s.spill_cap is None else usd_str(s.spill_cap),
        "spill_period": s.spill_period.value,
        "overage_enabled": s.overage_enabled,
        "overage_cap_usd": None if s.overage_cap is None else usd_str(s.overage_cap),
        "overage_period": s.overage_period.value,
    }


def window_to_mapping(w: WindowSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"name": w.name, "kind": w.kind.value}
    if w.kind is WindowKind.BLOCK:
        out["hours"] = w.length_s // 3600
    else:
        out["anchor"] = f"{WEEKDAYS[w.anchor_weekday]} {w.anchor_s // 3600:02d}:{w.anchor_s % 3600 // 60:02d}"
    out["limit_usd" if w.unit is Unit.USD else "limit_tokens"] = usd_str(w.limit) if w.unit is Unit.USD else w.limit
    return out


def plan_to_mapping(plan: Plan) -> dict[str, Any]:
    """The inverse of :func:`plan_from_mapping` (``plan_from_mapping(plan_to_mapping(p)) == p``)."""
    return {
        "name": plan.name,
        "windows": [window_to_mapping(w) for w in plan.windows],
        "order": [b.value for b in plan.order],
        **switches_to_mapping(plan.switches),
        "grant_days": plan.grant_days,
    }
