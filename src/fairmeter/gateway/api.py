"""fairmeter's own read API: ``/fairmeter/v1/calls``, ``/calls/{id}``, ``/calls/{id}/explain``, ``/limits``."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import orjson

from fairmeter.admin_ops import instant
from fairmeter.errors import FairmeterError, InvalidRequest, MethodNotAllowed, NotFound
from fairmeter.gateway.asgi import Scope, Send, send_whole
from fairmeter.gateway.errors import render
from fairmeter.gateway.state import GatewayState
from fairmeter.money import usd_str
from fairmeter.store.admin_sql import limits
from fairmeter.store.protocol import CallPage, call_page
from fairmeter.store.records import (
    CALL_STATUSES,
    MAX_LIST_LIMIT,
    KeyRecord,
    call_json,
    explain_json,
    read_cursor,
)


def _cursor(token: str) -> tuple[float, str]:
    try:
        return read_cursor(token)
    except ValueError:
        raise InvalidRequest("cursor is not a cursor returned by this API.", param="cursor") from None


_ONE_CALL = "/fairmeter/v1/calls/"  # + ID, or ID/explain


async def handle_api(state: GatewayState, scope: Scope, send: Send) -> None:
    call_id = state.new_call_id()
    try:
        key = await state.authenticate(scope["headers"])
        await state.settled()  # a call whose response was sent is read settled
        path: str = scope["path"]
        if path not in ("/fairmeter/v1/calls", "/fairmeter/v1/limits") and not path.startswith(_ONE_CALL):
            raise NotFound(f"{path} is not a fairmeter API route.")
        if scope["method"] != "GET":
            raise MethodNotAllowed(scope["method"], path, ["GET"])
        if path == "/fairmeter/v1/calls":
            body = await _list(state, key.id if not key.admin else None, scope)
        elif path == "/fairmeter/v1/limits":
            body = orjson.dumps(await _limits(state, key))
        else:
            rest = path[len(_ONE_CALL) :]
            explain = rest.endswith("/explain")
            row = await state.store.get_call(rest.removesuffix("/explain"))
            if row is None or (not key.admin and row["key_id"] != key.id):
                raise NotFound("No call with that id is visible to this key.")
            body = orjson.dumps(explain_json(row) if explain else call_json(row))
    except FairmeterError as exc:
        status, headers, err = render("openai", call_id, exc)
        await send_whole(send, status, headers, err)
        return
    await send_whole(send, 200, [(b"content-type", b"application/json")], body)


async def _limits(state: GatewayState, key: KeyRecord) -> dict[str, Any]:
    """The caller's payer: every window and bucket (used, limit, room, reset), and the key's own cap."""
    now = state.clock.now()
    out: dict[str, Any] = {"key": await _key_budget(state, key)}
    if key.payer_id is not None:
        payer_id = key.payer_id
        out.update(await state.store.run(lambda tx: limits(tx, payer_id, now)))
    return out


async def _key_budget(state: GatewayState, key: KeyRecord) -> dict[str, Any]:
    spent, held = await state.store.key_spend(key.id)
    cap = key.max_spend
    return {
        "id": key.id,
        "cap_usd": None if cap is None else usd_str(cap),
        "spent_usd": usd_str(spent),
        "held_usd": usd_str(held),
        "remaining_usd": None if cap is None else usd_str(max(0, cap - spent - held)),
    }


async def _list(state: GatewayState, key_id: str | None, scope: Scope) -> bytes:
    q = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()}
    try:
        limit = int(q.get("limit", "100"))
    except ValueError:
        raise InvalidRequest("limit must be an integer from 1 to 1000.", param="limit") from None
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidRequest(f"limit must be from 1 to {MAX_LIST_LIMIT}, got {limit}.", param="limit")
    status = q.get("status")
    if status is not None and status not in CALL_STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(CALL_STATUSES)}.", param="status")
    # One reading of a time for every API and command: ISO-8601 (UTC when it names no zone) or epoch seconds.
    since = instant(q["since"], "since") if "since" in q else None
    until = instant(q["until"], "until") if "until" in q else None
    cursor = _cursor(q["cursor"]) if "cursor" in q else None
    rows, nxt = await call_page(state.store, CallPage(key_id, limit, since, until, status, cursor))
    return orjson.dumps({"data": [call_json(r) for r in rows], "next": nxt})
