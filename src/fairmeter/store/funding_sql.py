"""Funding buckets in the database, written once for SQLite and PostgreSQL (docs/funding.md).

The decisions are made by the pure domain (``fairmeter.ledger.funding``); this module reads a
payer's state inside the call's transaction, asks the domain, and writes what it answered: the
bucket accounts, the window and period counters, and one transfer per bucket.

Per payer, everything is serialized: on PostgreSQL the payer's row is locked (``FOR UPDATE``) first;
SQLite runs one writer at a time. So a hold computed from what was read is still exact when written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from itertools import chain

import orjson

from fairmeter.ledger.explain import WindowState, explain_payment, refusal_message, state_of
from fairmeter.ledger.funding import (
    SPILL_BUCKETS,
    Allocation,
    BucketKind,
    Draw,
    Funding,
    Grant,
    Portion,
    Refusal,
    Size,
    WindowCharge,
    WindowUse,
    allocate,
    draw,
)
from fairmeter.ledger.plans import Plan, Switches, parse_switches, plan_from_mapping
from fairmeter.ledger.windows import Unit, WindowSpec, period_bounds, window_start
from fairmeter.money import Nano, usd_str
from fairmeter.record import record
from fairmeter.store.records import DEFAULT_ORG, DEFAULT_PAYER, HoldOutcome, iso
from fairmeter.store.sql import Row, Tx, row_chunks, to_sqlite, values_list, values_sql

DEFAULT_PLAN = "payg"

# Tables shared by both backends; types that both SQLite and PostgreSQL read the same way.
M002_FUNDING = """
CREATE TABLE orgs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE teams (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    name TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    UNIQUE (org_id, name)
);
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    team_id TEXT REFERENCES teams(id),
    name TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    UNIQUE (org_id, name)
);
CREATE TABLE plans (
    name TEXT PRIMARY KEY,
    spec_json TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE payers (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    user_id TEXT REFERENCES users(id),
    plan TEXT NOT NULL REFERENCES plans(name),
    switches_json TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE UNIQUE INDEX payers_owner ON payers (org_id, user_id);
CREATE TABLE window_usage (
    payer_id TEXT NOT NULL,
    window_name TEXT NOT NULL,
    start DOUBLE PRECISION NOT NULL,
    used BIGINT NOT NULL DEFAULT 0,
    held BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (payer_id, window_name, start)
);
CREATE TABLE period_usage (
    payer_id TEXT NOT NULL,
    what TEXT NOT NULL,
    start DOUBLE PRECISION NOT NULL,
    used BIGINT NOT NULL DEFAULT 0,
    held BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (payer_id, what, start)
);
CREATE TABLE grants (
    id TEXT PRIMARY KEY,
    payer_id TEXT NOT NULL REFERENCES payers(id),
    amount BIGINT NOT NULL,
    priority INTEGER NOT NULL,
    starts_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    reason TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    created_by TEXT NOT NULL,
    lapsed_at DOUBLE PRECISION
);
CREATE INDEX grants_payer ON grants (payer_id, expires_at);
CREATE INDEX grants_to_lapse ON grants (expires_at) WHERE lapsed_at IS NULL;
CREATE TABLE admin_log (
    id TEXT PRIMARY KEY,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail_json TEXT NOT NULL,
    ts DOUBLE PRECISION NOT NULL
);
ALTER TABLE keys ADD COLUMN org_id TEXT;
ALTER TABLE keys ADD COLUMN user_id TEXT;
ALTER TABLE keys ADD COLUMN service TEXT;
ALTER TABLE keys ADD COLUMN payer_id TEXT;
ALTER TABLE calls ADD COLUMN payer_id TEXT;
ALTER TABLE calls ADD COLUMN funding_json TEXT;
ALTER TABLE calls ADD COLUMN paid_json TEXT;
ALTER TABLE calls ADD COLUMN explanation TEXT;
ALTER TABLE transfers ADD COLUMN bucket TEXT
"""

DEFAULT_PLAN_SPEC = {"name": DEFAULT_PLAN, "order": ["overage"], "overage_enabled": True}


async def seed_defaults(tx: Tx, now: float) -> None:
    """The default organisation, on a pay-as-you-go plan (overage only, no cap), and its payer.

    Keys made without an organisation belong to it, so every call has a payer; existing keys join it.
    """
    await tx.execute(
        "INSERT INTO plans (name, spec_json, created_at, updated_at) VALUES ($1, $2, $3, $3)",
        DEFAULT_PLAN,
        json.dumps(DEFAULT_PLAN_SPEC),
        now,
    )
    await tx.execute("INSERT INTO orgs (id, name, created_at) VALUES ($1, 'default', $2)", DEFAULT_ORG, now)
    await tx.execute(
        "INSERT INTO payers (id, org_id, user_id, plan, switches_json, created_at) VALUES ($1, $2, NULL, $3, $4, $5)",
        DEFAULT_PAYER,
        DEFAULT_ORG,
        DEFAULT_PLAN,
        "{}",
        now,
    )
    await tx.execute("UPDATE keys SET org_id = $1, payer_id = $2 WHERE payer_id IS NULL", DEFAULT_ORG, DEFAULT_PAYER)


# ---- accounts -------------------------------------------------------------------------------


OVERAGE_PREFIX = "overage:"  # a payer's overage account is this and the payer's id
_PAYER_BUCKET = {BucketKind.SUBSCRIPTION: "sub:", BucketKind.CREDITS: "credits:", BucketKind.OVERAGE: OVERAGE_PREFIX}
# Bucket accounts no funding decision reads (overage is capped by its period counter, a subscription by its
# window counters): a store may sum their changes and write them once per transaction.
UNREAD_ACCOUNTS = (_PAYER_BUCKET[BucketKind.OVERAGE], _PAYER_BUCKET[BucketKind.SUBSCRIPTION])


def bucket_account(payer_id: str, portion: Portion) -> str:
    if portion.bucket is BucketKind.GRANTS:
        return f"grant:{portion.source}"
    return _PAYER_BUCKET[portion.bucket] + payer_id


async def add_to_account(tx: Tx, account: str, **deltas: int) -> None:
    """Add to an account's balances, creating it when it does not exist yet (one statement)."""
    cols = tuple(c for c, v in deltas.items() if v)
    if cols:
        await tx.execute(_add_to_account_sql(cols), account, *[deltas[c] for c in cols])


@lru_cache(maxsize=64)
def _add_to_account_sql(cols: tuple[str, ...]) -> str:
    names = ", ".join(cols)
    marks = ", ".join(f"${i + 2}" for i in range(len(cols)))
    sets = ", ".join(f"{c} = accounts.{c} + excluded.{c}" for c in cols)
    return f"INSERT INTO accounts (id, {names}) VALUES ($1, {marks}) ON CONFLICT (id) DO UPDATE SET {sets}"


async def insert_transfer(
    tx: Tx,
    call_id: str,
    kind: str,
    debit: str,
    credit: str,
    amount: Nano,
    state: str,
    now: float,
    *,
    bucket: str | None = None,
    reason: str | None = None,
    pending_id: int | None = None,
) -> None:
    await tx.execute(
        "INSERT INTO transfers (call_id, kind, debit_account, credit_account, amount, pending_id, state, reason, ts,"
        " bucket) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        call_id, kind, debit, credit, amount, pending_id, state, reason, now, bucket,
    )  # fmt: skip


# ---- reading a payer's state -----------------------------------------------------------------

_plans: dict[str, Plan] = {}


def plan_of(spec_json: str) -> Plan:
    """Parsed plans, cached by their text (a plan changes only through the admin API)."""
    plan = _plans.get(spec_json)
    if plan is None:
        if len(_plans) > 1000:
            _plans.clear()
        plan = _plans[spec_json] = plan_from_mapping(json.loads(spec_json))
    return plan


@record
class Payer:
    id: str
    org_id: str
    user_id: str | None
    plan: Plan
    switches: Switches


PAYER_COLUMNS = "payers.id, payers.org_id, payers.user_id, payers.switches_json, plans.spec_json"


async def load_payer(tx: Tx, payer_id: str, lock: bool) -> Payer | None:
    """The payer, its plan and its switches (the plan's defaults under the payer's own settings)."""
    suffix = " FOR UPDATE OF payers" if lock and tx.dialect == "postgres" else ""
    row = await tx.fetchrow(
        f"SELECT {PAYER_COLUMNS} FROM payers JOIN plans ON plans.name = payers.plan WHERE payers.id = $1" + suffix,
        payer_id,
    )
    return None if row is None else payer_from_row(row)


def payer_from_row(row: Row) -> Payer:
    """A :class:`Payer` from a row of ``PAYER_COLUMNS``."""
    plan = plan_of(row["spec_json"])
    return Payer(row["id"], row["org_id"], row["user_id"], plan, _switches(row["switches_json"], plan))


_parsed_switches: dict[tuple[str, Plan], Switches] = {}


def _switches(text: str, plan: Plan) -> Switches:
    """A payer's switches over its plan's defaults, parsed once per distinct (text, plan)."""
    found = _parsed_switches.get((text, plan))
    if found is None:
        if len(_parsed_switches) > 10_000:
            _parsed_switches.clear()
        found = _parsed_switches[(text, plan)] = parse_switches(json.loads(text), plan.switches)
    return found


async def window_uses(tx: Tx, payer: Payer, now: float) -> tuple[WindowUse, ...]:
    """Each window's current period as a call at ``now`` sees it (one query for all windows)."""
    if not payer.plan.windows:
        return ()
    oldest = now - max(w.span_s for w in payer.plan.windows)
    rows = await tx.fetch(
        "SELECT window_name, start, used, held FROM window_usage WHERE payer_id = $1 AND start > $2",
        payer.id,
        oldest,
    )
    by_name: dict[str, list[Row]] = {}
    for r in rows:
        by_name.setdefault(r["window_name"], []).append(r)
    out = []
    for spec in payer.plan.windows:
        mine = by_name.get(spec.name, [])
        latest = max((r["start"] for r in mine), default=None)
        start, opens = window_start(spec, latest, now)
        row = next((r for r in mine if r["start"] == start), None)
        out.append(WindowUse(spec, start, opens, row["used"] if row else 0, row["held"] if row else 0))
    return tuple(out)


async def live_grants(tx: Tx, payer_id: str, now: float) -> tuple[Grant, ...]:
    rows = await tx.fetch(
        "SELECT g.id, g.amount, g.priority, g.starts_at, g.expires_at, g.created_at, g.reason,"
        " a.debits_posted, a.debits_pending FROM grants g JOIN accounts a ON a.id = 'grant:' || g.id"
        " WHERE g.payer_id = $1 AND g.expires_at > $2",
        payer_id,
        now,
    )
    return tuple(
        Grant(
            r["id"], r["amount"], r["debits_posted"], r["debits_pending"], r["priority"],
            r["starts_at"], r["expires_at"], r["created_at"], r["reason"],
        )
        for r in rows
    )  # fmt: skip


async def account_room(tx: Tx, account: str) -> Nano:
    """What a prepaid bucket can still pay: credits in, minus posted and pending debits."""
    row = await tx.fetchrow(
        "SELECT credits_posted - debits_posted - debits_pending AS room FROM accounts WHERE id = $1", account
    )
    return max(0, int(row["room"])) if row else 0


async def period_used(tx: Tx, payer_id: str, what: str, start: float) -> Nano:
    row = await tx.fetchrow(
        "SELECT used + held AS total FROM period_usage WHERE payer_id = $1 AND what = $2 AND start = $3",
        payer_id,
        what,
        start,
    )
    return int(row["total"]) if row else 0


async def load_funding(tx: Tx, payer: Payer, now: float) -> Funding:
    """Everything :func:`allocate` needs, read only for the buckets this payer's plan can use."""
    plan, sw = payer.plan, payer.switches
    spill = sw.spill_to_credits and any(b in SPILL_BUCKETS for b in plan.order)
    overage = sw.overage_enabled and BucketKind.OVERAGE in plan.order
    spill_room = overage_room = None
    if spill and sw.spill_cap is not None:
        start, _ = period_bounds(sw.spill_period, now)
        spill_room = max(0, sw.spill_cap - await period_used(tx, payer.id, "spill", start))
    if overage and sw.overage_cap is not None:
        start, _ = period_bounds(sw.overage_period, now)
        overage_room = max(0, sw.overage_cap - await period_used(tx, payer.id, "overage", start))
    return Funding(
        order=plan.order,
        windows=await window_uses(tx, payer, now),
        grants=await live_grants(tx, payer.id, now) if spill and BucketKind.GRANTS in plan.order else (),
        credits_room=(
            await account_room(tx, f"credits:{payer.id}") if spill and BucketKind.CREDITS in plan.order else 0
        ),
        spill_to_credits=sw.spill_to_credits,
        spill_room=spill_room,
        overage_enabled=sw.overage_enabled,
        overage_room=overage_room,
    )


# ---- writing holds and settlements ----------------------------------------------------------


def allocation_json(
    a: Allocation, spill_start: float | None, overage_start: float | None, overrun: Nano | None = None
) -> str:
    """What a settlement needs of its hold (the call's ``funding_json``): the portions, the window periods, the cap
    periods; with ``overrun``, what a payment was (``paid_json``)."""
    portions = [[p.bucket, p.source, p.amount] for p in a.portions]  # orjson writes an enum's value
    windows = [[w.name, w.start, w.amount, w.unit] for w in a.windows]
    return funding_text(portions, windows, spill_start, overage_start, overrun)


def funding_text(
    portions: list[list[object]],
    windows: list[list[object]],
    spill_start: float | None,
    overage_start: float | None,
    overrun: Nano | None = None,
) -> str:
    """`allocation_json` of rows already made: for a store that writes the funding leg without an `Allocation`."""
    doc: dict[str, object] = {"portions": portions, "windows": windows}
    if overrun is not None:
        doc["overrun"] = overrun
    doc["spill_start"] = spill_start
    doc["overage_start"] = overage_start
    return orjson.dumps(doc).decode()


def held_periods(sw: Switches, now: float) -> tuple[float, float]:  # float-ok: seconds
    """The starts of the spill and overage periods a hold placed at ``now`` counts in."""
    return period_bounds(sw.spill_period, now)[0], period_bounds(sw.overage_period, now)[0]


@record
class HeldFunding:
    allocation: Allocation
    spill_start: float | None  # float-ok: seconds
    overage_start: float | None  # float-ok: seconds

    @property
    def starts(self) -> tuple[float | None, float | None]:  # float-ok: seconds
        return self.spill_start, self.overage_start


def held_from_json(text: str | HeldFunding) -> HeldFunding:
    """A funding hold from its JSON (as the call's record keeps it), or as it is when already parsed."""
    if isinstance(text, HeldFunding):
        return text
    data = orjson.loads(text)
    return HeldFunding(
        Allocation(
            tuple(Portion(BucketKind(b), s, a) for b, s, a in data["portions"]),
            tuple(WindowCharge(n, st, a, Unit(u)) for n, st, a, u in data["windows"]),
        ),
        data["spill_start"],
        data["overage_start"],
    )


def _count_windows(
    w: Writes, payer_id: str, held: tuple[WindowCharge, ...], posted: tuple[WindowCharge, ...] | None = None
) -> None:
    """Windows hold ``held`` (a hold: ``posted`` None), or release ``held`` and are charged ``posted``."""
    if not held:
        return
    charged = {(c.name, c.start): c.amount for c in posted or ()}
    for c in held:
        used = charged.get((c.name, c.start), 0)
        w.count(w.windows, (payer_id, c.name, c.start), used, c.amount if posted is None else -c.amount)


def _period_amounts(a: Allocation) -> tuple[Nano, Nano]:
    """What the spill buckets (grants, credits) and overage hold or pay of an allocation."""
    spill = overage = 0
    for p in a.portions:
        if p.bucket is BucketKind.OVERAGE:
            overage += p.amount
        elif p.bucket in SPILL_BUCKETS:
            spill += p.amount
    return spill, overage


def _count_periods(w: Writes, payer_id: str, held: HeldFunding, hold: Allocation, paid: Allocation | None) -> None:
    """Spill and overage periods hold ``hold`` (``paid`` None), or release it and count ``paid``."""
    holds = _period_amounts(hold)
    posts = _period_amounts(paid) if paid is not None else (0, 0)
    for i, (what, start) in enumerate((("spill", held.spill_start), ("overage", held.overage_start))):
        if start is not None:
            w.count(w.periods, (payer_id, what, start), posts[i], -holds[i] if paid is not None else holds[i])


_PARTS = (
    # (name, table and columns, parameter types, conflict clause)
    (
        "acc",
        "accounts (id, debits_pending, debits_posted, credits_pending, credits_posted)",
        ("text", "bigint", "bigint", "bigint", "bigint"),
        "ON CONFLICT (id) DO UPDATE SET debits_pending = accounts.debits_pending + excluded.debits_pending,"
        " debits_posted = accounts.debits_posted + excluded.debits_posted,"
        " credits_pending = accounts.credits_pending + excluded.credits_pending,"
        " credits_posted = accounts.credits_posted + excluded.credits_posted",
    ),
    (
        "moved",
        "transfers (call_id, kind, debit_account, credit_account, amount, state, reason, ts, bucket)",
        ("text", "text", "text", "text", "bigint", "text", "text", "float8", "text"),
        "",
    ),
    (
        "win",
        "window_usage (payer_id, window_name, start, used, held)",
        ("text", "text", "float8", "bigint", "bigint"),
        "ON CONFLICT (payer_id, window_name, start) DO UPDATE"
        " SET used = window_usage.used + excluded.used, held = window_usage.held + excluded.held",
    ),
    (
        "per",
        "period_usage (payer_id, what, start, used, held)",
        ("text", "text", "float8", "bigint", "bigint"),
        "ON CONFLICT (payer_id, what, start) DO UPDATE"
        " SET used = period_usage.used + excluded.used, held = period_usage.held + excluded.held",
    ),
)

Shape = tuple[int, int, int, int, int]  # rows of each of _PARTS, then funding holds resolved (resolve_sql)

# Each part as rows of a multi-row insert (SQLite): the statement's head, its row width, its conflict clause.
_INSERTS = tuple((f"INSERT INTO {target}", len(types), conflict) for _, target, types, conflict in _PARTS)
_PART_INDEX = {name: i for i, (name, *_) in enumerate(_PARTS)}


@lru_cache(maxsize=64)
def sqlite_part_sql(part: str, rows: int) -> str:
    """The statement `Writes` runs on SQLite for ``rows`` rows of one part (``"acc"``, ``"per"`` …), with SQLite's
    placeholders: for a store that sums such rows itself and writes them as `Writes` would."""
    head, width, conflict = _INSERTS[_PART_INDEX[part]]
    return to_sqlite(values_sql(head, width, rows, conflict))


# A settlement resolves each funding hold by a transfer of its own that references it (``pending_id``): a ``post``
# of what that bucket paid, or a ``void`` when it paid nothing. Nothing is updated: the ledger is append-only.
# A row of (call id, the bucket's account, the key's account, amount paid, time) finds its hold by the call, the
# two accounts and the kind (a call holds at most once per bucket).
_RESOLVE_TYPES = ("text", "text", "text", "bigint", "float8")
_RESOLVE_HEAD = (
    "INSERT INTO transfers (call_id, kind, debit_account, credit_account, amount, pending_id, state, ts, bucket)"
    " SELECT h.call_id, CASE WHEN v.paid > 0 THEN 'post' ELSE 'void' END, h.debit_account, h.credit_account, v.paid,"
    " h.id, 'posted', v.ts, h.bucket"
    " FROM (SELECT column1 AS call_id, column2 AS account, column3 AS key_account, column4 AS paid, column5 AS ts"
    " FROM (VALUES "
)
_RESOLVE_TAIL = (
    ") AS x) AS v JOIN transfers h ON h.call_id = v.call_id AND h.kind = 'hold' AND h.debit_account = v.account"
    " AND h.credit_account = v.key_account"
)


def resolve_sql(first: int, rows: int, typed: bool, gate: str = "") -> str:
    """The funding holds' resolutions for ``rows`` rows of parameters from ``$first`` (``typed``: with PostgreSQL
    casts); ``gate`` is added to the join's condition (``AND EXISTS (…)``)."""
    types = _RESOLVE_TYPES if typed else (None,) * len(_RESOLVE_TYPES)
    return f"{_RESOLVE_HEAD}{values_list(first, types, rows)}{_RESOLVE_TAIL}{gate}"


@lru_cache(maxsize=256)
def funding_ctes(shape: Shape, first: int, gate: str = "") -> str:
    """The funding leg's writes as data-modifying CTEs, for ``shape`` rows (accounts, transfers, window and
    period counters), with their values as parameters ``$first`` onwards, in :meth:`Writes.params` order.

    Each shape has its own statement text (cached here; asyncpg prepares each once per connection): rows are
    scalar parameters in a VALUES list and a part with no rows is left out, which costs the client no array
    encoding and the server no empty INSERT. Returns text to append after a CTE (``, name AS (...)`` …), or
    "" when there is nothing to write. ``gate`` (e.g. ``WHERE EXISTS (SELECT FROM hold)``) makes the writes
    apply only when the statement's spend leg did: a hold is then one statement, spend and funding together.
    """
    out = []
    n = first
    for rows, (name, target, types, conflict) in zip(shape[:4], _PARTS, strict=True):
        if not rows:
            continue
        values = values_list(n, types, rows)
        n += len(types) * rows
        out.append(f",\n{name} AS (\n    INSERT INTO {target}\n    SELECT * FROM (VALUES {values}) AS v"
                   f" {gate}\n    {conflict}\n)")  # fmt: skip
    if shape[4]:  # the resolutions select from a join: the gate joins its condition
        gated = " AND " + gate.removeprefix("WHERE ") if gate else ""
        out.append(f",\nres AS (\n    {resolve_sql(n, shape[4], True, gated)}\n)")
    return "".join(out)


_CALL_PAID = (
    "UPDATE calls SET paid_json = $2, explanation = $3,"
    " needs_reconciliation = CASE WHEN $4 > needs_reconciliation THEN $4 ELSE needs_reconciliation END WHERE id = $1"
)


@lru_cache(maxsize=64)
def _flush_pg(shape: Shape) -> str:
    """A hold's or settlement's funding writes on PostgreSQL in one statement: the writes of ``shape`` and the
    call's paid_json and explanation (parameters: call id or NULL, paid_json, explanation, reconciliation flag,
    then :meth:`Writes.params`)."""
    return f"""
WITH paid AS (
    UPDATE calls SET paid_json = $2, explanation = $3,
        needs_reconciliation = GREATEST(needs_reconciliation, $4::int)
    WHERE $1::text IS NOT NULL AND id = $1
){funding_ctes(shape, 5)}
SELECT 1
"""


_ACCOUNT_COLUMNS = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")


@dataclass
class Writes:
    """What a hold or a settlement writes, collected and then written at once.

    On PostgreSQL ``flush`` is one statement (data-modifying CTEs, one text per shape), so the funding leg costs one
    round trip under the payer's lock; on SQLite it is a statement per row, as before. Deltas to one row
    are summed first (one statement may touch a row only once).
    """

    accounts: dict[str, list[int]] = field(default_factory=dict)
    transfers: list[tuple[str, str, str, str, int, str, str | None, float, str]] = field(default_factory=list)
    windows: dict[tuple[str, str, float], list[int]] = field(default_factory=dict)
    periods: dict[tuple[str, str, float], list[int]] = field(default_factory=dict)
    # Funding holds to resolve: (call id, bucket account, key account, amount paid, time); see `resolve_sql`.
    resolutions: list[tuple[str, str, str, int, float]] = field(default_factory=list)
    call: tuple[str, str, str, int] | None = None  # (call id, paid_json, explanation, flag for reconciliation)

    def account(self, account: str, **deltas: int) -> None:
        row = self.accounts.setdefault(account, [0, 0, 0, 0])
        for name, value in deltas.items():
            row[_ACCOUNT_COLUMNS.index(name)] += value

    def transfer(
        self, call_id: str, kind: str, debit: str, credit: str, amount: Nano, state: str, now: float,
        bucket: str, reason: str | None = None,
    ) -> None:  # fmt: skip
        self.transfers.append((call_id, kind, debit, credit, amount, state, reason, now, str(bucket)))  # enum → str

    def resolve(self, call_id: str, account: str, key_account: str, paid: Nano, now: float) -> None:
        """Resolve the call's funding hold on ``account``: post ``paid`` of it (void it when 0)."""
        self.resolutions.append((call_id, account, key_account, paid, now))

    def count(self, counters: dict[tuple[str, str, float], list[int]], key: tuple[str, str, float], used: int,
              held: int) -> None:  # fmt: skip
        if used or held:
            row = counters.setdefault(key, [0, 0])
            row[0] += used
            row[1] += held

    async def flush(self, tx: Tx) -> None:
        if tx.dialect == "postgres":
            await self._flush_one_statement(tx)
        else:
            await self._flush_each(tx)
        self.accounts, self.transfers, self.windows, self.periods, self.call = {}, [], {}, {}, None
        self.resolutions = []

    async def _flush_each(self, tx: Tx) -> None:
        if self.call is not None:
            await tx.execute(_CALL_PAID, *self.call)
        parts: tuple[Sequence[Sequence[object]], ...] = (
            [(account, *row) for account, row in self.accounts.items() if any(row)],
            self.transfers,
            [(*key, used, held) for key, (used, held) in self.windows.items() if used or held],
            [(*key, used, held) for key, (used, held) in self.periods.items() if used or held],
        )
        for (head, width, conflict), rows in zip(_INSERTS, parts, strict=True):
            for chunk in row_chunks(rows):  # a part's rows in one statement (keys are unique: summed first)
                await tx.execute(values_sql(head, width, len(chunk), conflict), *chain.from_iterable(chunk))
        for chunk in row_chunks(self.resolutions):
            await tx.execute(resolve_sql(1, len(chunk), False), *chain.from_iterable(chunk))

    @property
    def empty(self) -> bool:
        """Nothing to write."""
        return not (self.call or self.accounts or self.transfers or self.windows or self.periods or self.resolutions)

    async def _flush_one_statement(self, tx: Tx) -> None:
        if self.empty:
            return
        await tx.execute(_flush_pg(self.shape), *(self.call or (None, None, None, 0)), *self.params())

    @property
    def shape(self) -> Shape:
        """How many rows of each part :func:`funding_ctes` writes."""
        return len(self.accounts), len(self.transfers), len(self.windows), len(self.periods), len(self.resolutions)

    def params(self) -> list[object]:
        """The values of :func:`funding_ctes` for :attr:`shape`, row after row, in order."""
        out: list[object] = []
        for account, row in self.accounts.items():
            out.append(account)
            out += row
        for transfer in self.transfers:
            out += transfer
        for counters in (self.windows, self.periods):
            for key, (used, held) in counters.items():
                out += (*key, used, held)
        for resolution in self.resolutions:
            out += resolution
        return out


@record
class FundingHold:
    """A placed funding hold (``refusal`` None), or why it was refused."""

    held: HeldFunding | None
    refusal: Refusal | None = None
    funding: Funding | None = None
    writes: Writes | None = None  # what the hold wrote, or is to write (``flush=False``)

    @property
    def json(self) -> str:
        """The hold as the call's record keeps it (``funding_json``)."""
        assert self.held is not None
        return allocation_json(self.held.allocation, self.held.spill_start, self.held.overage_start)

    def refused(self) -> HoldOutcome:
        """The hold's outcome when the payer's buckets refused it."""
        assert self.refusal is not None
        return HoldOutcome("unfunded", unfunded=self.message, fundable=self.refusal.fundable, details=self.details)

    @property
    def details(self) -> dict[str, object]:
        """The refusal's numbers, for programs: the tightest window as it stands and what blocked the rest."""
        assert self.refusal is not None
        r = self.refusal
        out: dict[str, object] = {"hold_usd": usd_str(r.needed), "fundable_usd": usd_str(r.fundable), "window": None}
        if r.tightest is not None:
            st = state_of(r.tightest)
            amount = usd_str if st.unit is Unit.USD else str
            out["window"] = {
                "name": st.name, "label": st.label, "unit": st.unit.value, "used": amount(st.used),
                "held": amount(st.held), "limit": amount(st.limit), "remaining": amount(st.room),
                "resets_at": iso(st.resets_at),
            }  # fmt: skip
        out["blocked"] = list(r.blocked)
        return out

    @property
    def message(self) -> str:
        """The refusal's sentence: the exact window, used, limit, reset, and the switch that is off."""
        assert self.refusal is not None
        tight = self.refusal.tightest
        return refusal_message(self.refusal, state_of(tight) if tight else None)


async def hold_funding(
    tx: Tx,
    call_id: str,
    payer_id: str,
    key_account: str,
    size: Size,
    now: float,
    *,
    credit_key: bool = True,
    flush: bool = True,
    payer: Payer | None = None,
) -> FundingHold:
    """Place a call's worst case on the payer's buckets in burn order (or refuse), atomically with the call."""
    if payer is None:  # else the caller read (and locked) it already
        payer = await load_payer(tx, payer_id, lock=True)
    if payer is None:
        raise LookupError(f"no payer {payer_id}")
    funding = await load_funding(tx, payer, now)
    result = allocate(funding, size, now)
    if isinstance(result, Refusal):
        return FundingHold(None, result, funding)
    # Counted whether or not a cap is set, so a cap set later in the period knows what was spent.
    held = HeldFunding(result, *held_periods(payer.switches, now))
    w = Writes()
    for p in result.portions:
        account = bucket_account(payer_id, p)
        w.account(account, debits_pending=p.amount)
        w.transfer(call_id, "hold", account, key_account, p.amount, "pending", now, p.bucket)
    if credit_key:  # else the caller folds it into its own update of the key's account (it equals W)
        w.account(key_account, credits_pending=result.total)
    _count_windows(w, payer_id, result.windows)
    _count_periods(w, payer_id, held, result, None)
    if flush:  # else the caller writes them in its own statement (``writes``)
        await w.flush(tx)
    return FundingHold(held, writes=w)


@record
class FundingSettled:
    paid: Allocation  # every bucket that paid, in order (placed afterwards included)
    overrun: Nano  # posted to overage beyond every room, flagged
    explanation: str
    spill_start: float | None = None  # float-ok: seconds; the periods it counted in (a refund gives room back)
    overage_start: float | None = None  # float-ok: seconds


async def plan_settlement(
    tx: Tx,
    call_id: str,
    payer_id: str,
    key_account: str,
    held_text: str | HeldFunding,
    actual: Size,
    now: float,
    *,
    void: bool,
    credit_key: bool = True,
) -> tuple[Writes, FundingSettled | None, Draw, HeldFunding]:
    """A settlement's writes, not yet made: the cost drawn from the held buckets in order, the rest released.

    The ``FundingSettled`` (with the call's explanation, in ``writes.call``) is there unless part of the cost
    must be placed on current room first (``settle_funding`` does that); nothing is written here.
    """
    held = held_from_json(held_text)
    alloc = held.allocation
    w = Writes()
    dead = set()
    if not void and any(p.bucket is BucketKind.GRANTS for p in alloc.portions):
        rows = await tx.fetch("SELECT id FROM grants WHERE payer_id = $1 AND expires_at <= $2", payer_id, now)
        dead = {r["id"] for r in rows}
    d = draw(alloc, Size(0) if void else actual, lambda gid: gid not in dead)
    paid_by = {(p.bucket, p.source): p.amount for p in d.paid.portions}
    for p in alloc.portions:
        account = bucket_account(payer_id, p)
        paid = paid_by.get((p.bucket, p.source), 0)
        w.account(account, debits_pending=-p.amount, debits_posted=paid)
        w.resolve(call_id, account, key_account, paid, now)
    if credit_key:
        w.account(key_account, credits_pending=-alloc.total, credits_posted=d.paid.total)
    _count_windows(w, payer_id, alloc.windows, d.paid.windows)
    _count_periods(w, payer_id, held, alloc, d.paid)
    if d.unplaced:
        return w, None, d, held
    done = FundingSettled(d.paid, 0, await explanation(tx, payer_id, d.paid, held, w), *held.starts)
    w.call = (call_id, paid_json(done), done.explanation, 0)
    return w, done, d, held


async def settle_funding(
    tx: Tx,
    call_id: str,
    payer_id: str,
    key_account: str,
    held_text: str | HeldFunding,
    actual: Size,
    now: float,
    *,
    void: bool,
    credit_key: bool = True,
) -> FundingSettled:
    """Draw the real cost from the held buckets in order, release the rest; place what is left over.

    Every cent of the cost is placed (overruns included), so the key's account is credited exactly what its
    spend leg posts: ``credit_key=False`` leaves that update to the caller, who folds it into its own.
    """
    w, done, d, held = await plan_settlement(
        tx, call_id, payer_id, key_account, held_text, actual, now, void=void, credit_key=credit_key
    )
    await w.flush(tx)  # one statement on PostgreSQL
    if done is not None:
        return done
    extra, overrun = await _place_unplaced(tx, call_id, payer_id, key_account, d, now, credit_key)
    paid_all = Allocation(d.paid.portions + extra.portions, d.paid.windows)
    done = FundingSettled(paid_all, overrun, await explanation(tx, payer_id, paid_all, held), *held.starts)
    await tx.execute(_CALL_PAID, call_id, paid_json(done), done.explanation, int(overrun > 0))
    return done


async def _place_unplaced(
    tx: Tx, call_id: str, payer_id: str, key_account: str, d: Draw, now: float, credit_key: bool
) -> tuple[Allocation, Nano]:
    """Cost no held portion could take: on current room in burn order, else overage as a flagged overrun."""
    if d.unplaced == 0:
        return Allocation(()), 0
    payer = await load_payer(tx, payer_id, lock=True)
    assert payer is not None
    funding = await load_funding(tx, payer, now)
    placed = allocate(funding, Size(d.unplaced), now)
    overrun = 0
    if isinstance(placed, Refusal):
        overrun = d.unplaced
        placed = Allocation((Portion(BucketKind.OVERAGE, BucketKind.OVERAGE.value, overrun),))
    sw = payer.switches
    as_held = HeldFunding(
        placed,
        period_bounds(sw.spill_period, now)[0],
        None if overrun else period_bounds(sw.overage_period, now)[0],  # an overrun is flagged, not counted
    )
    w = Writes()
    kind, reason = ("overrun", "cost beyond every bucket's room") if overrun else ("post", "placed at settlement")
    for p in placed.portions:
        account = bucket_account(payer_id, p)
        w.account(account, debits_posted=p.amount)
        w.transfer(call_id, kind, account, key_account, p.amount, "posted", now, p.bucket, reason)
    if credit_key:
        w.account(key_account, credits_posted=placed.total)
    _count_windows(w, payer_id, tuple(WindowCharge(c.name, c.start, 0, c.unit) for c in placed.windows),
                   placed.windows)  # fmt: skip
    _count_periods(w, payer_id, as_held, Allocation(()), placed)
    await w.flush(tx)
    return placed, overrun


async def window_states(
    tx: Tx, payer_id: str, specs: tuple[WindowSpec, ...], periods: dict[str, tuple[float, bool]]
) -> list[WindowState]:
    """The windows' periods as they stand (``periods``: name → (start, opened)); a block not opened has no reset."""
    out = []
    for spec in specs:
        start, opened = periods[spec.name]
        row = await tx.fetchrow(
            "SELECT used, held FROM window_usage WHERE payer_id = $1 AND window_name = $2 AND start = $3",
            payer_id,
            spec.name,
            start,
        )
        used, held = (row["used"], row["held"]) if row else (0, 0)
        resets = start + spec.span_s if opened else None
        out.append(WindowState(spec.name, spec.label, spec.unit, used, held, spec.limit, resets))
    return out


async def explanation(tx: Tx, payer_id: str, paid: Allocation, held: HeldFunding, pending: Writes | None = None) -> str:
    """The payment's sentence, with each window as it stands after it (``pending``: writes not yet made)."""
    states: list[WindowState] = []
    if held.allocation.windows:
        payer = await load_payer(tx, payer_id, lock=False)
        periods = {w.name: (w.start, True) for w in held.allocation.windows}
        specs = tuple(s for s in payer.plan.windows if s.name in periods) if payer else ()
        states = await window_states(tx, payer_id, specs, periods)
    if pending is not None and states:
        for i, st in enumerate(states):
            used, hold = pending.windows.get((payer_id, st.name, periods[st.name][0]), (0, 0))
            states[i] = replace(st, used=st.used + used, held=st.held + hold)
    reasons = {}
    grant_ids = [p.source for p in paid.portions if p.bucket is BucketKind.GRANTS]
    for gid in grant_ids:
        row = await tx.fetchrow("SELECT reason FROM grants WHERE id = $1", gid)
        if row:
            reasons[gid] = row["reason"]
    return explain_payment(paid, states, reasons)


def paid_json(s: FundingSettled) -> str:
    return allocation_json(s.paid, s.spill_start, s.overage_start, s.overrun)
