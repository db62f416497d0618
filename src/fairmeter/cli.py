"""The `fairmeter` command: serve, emulator, demo, keys, calls, verify, replay; the admin commands are in cli_admin."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fairmeter import cli_admin
from fairmeter.admin_ops import KeyRequest, create_owned_key, instant
from fairmeter.cli_common import cli_actor, config_of, db_args, list_limit, store_of
from fairmeter.clock import SystemClock
from fairmeter.config import Config, max_spend_from_cli
from fairmeter.errors import ConfigError, FairmeterError, InvalidRequest
from fairmeter.money import usd_str
from fairmeter.store import Store, run_with
from fairmeter.store.protocol import CallPage, call_page
from fairmeter.store.records import CALL_STATUSES, MAX_LIST_LIMIT, call_json, iso, read_cursor
from fairmeter.tables import print_calls


def cmd_serve(args: argparse.Namespace) -> int:
    from fairmeter.gateway.server import serve

    config = config_of(args)
    workers = args.workers if args.workers is not None else config.workers
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1; got {workers}")
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C after a graceful shutdown is not an error
        return serve(config, args.host or config.host, args.port if args.port is not None else config.port, workers)
    return 0


def cmd_emulator(args: argparse.Namespace) -> int:
    from fairmeter.testing import serve as serve_emulator

    serve_emulator(args.host, args.port)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from fairmeter.demo import run_demo

    return run_demo(Path(args.dir))


def cmd_replay(args: argparse.Namespace) -> int:
    from fairmeter.replay import run_replay

    return run_replay(Path(args.cases))


def cmd_keys(args: argparse.Namespace) -> int:
    config = config_of(args)
    store = store_of(config, create=args.keys_cmd == "create")
    if args.keys_cmd == "create":
        return run_with(store, lambda s: _create_key(args, config, s))
    if args.keys_cmd == "list":
        return run_with(store, lambda s: _list_keys(args, s))
    return run_with(store, lambda s: _revoke_key(args, s))


async def _create_key(args: argparse.Namespace, config: Config, store: Store) -> int:
    cap = max_spend_from_cli(args.max_spend_usd)
    if cap is None:
        cap = config.default_key_max_spend
    req = KeyRequest(args.name, cap, args.admin, args.org, args.user, args.service)
    made = await create_owned_key(store, req, cli_actor(), SystemClock().now())
    if args.json:
        print(json.dumps(made))
    else:
        cap_text = "none" if made["max_spend_usd"] is None else "$" + made["max_spend_usd"]
        owner = f"user {made['user_id']}" if made["user_id"] else f"service {made['service']}"
        print(f"created key {made['id']} ({made['name']}) for {owner} of {made['org_id']}, paid by {made['payer_id']};"
              f" spend cap: {cap_text}")  # fmt: skip
        print(f"  {made['key']}")
        print("This is the only time the key is shown; it is stored as a hash.")
    return 0


async def _list_keys(args: argparse.Namespace, store: Store) -> int:
    rows: list[dict[str, Any]] = []
    for k in await store.list_keys():
        spent, held = await store.key_spend(k.id)
        rows.append(
            {
                "id": k.id,
                "name": k.name,
                "prefix": k.prefix,
                "admin": k.admin,
                "max_spend_usd": None if k.max_spend is None else usd_str(k.max_spend),
                "spent_usd": usd_str(spent),
                "held_usd": usd_str(held),
                "created_at": iso(k.created_at),
                "revoked_at": iso(k.revoked_at),
            }
        )
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'id':<18} {'name':<20} {'cap USD':>12} {'spent USD':>14} {'held USD':>12}  state")
    for r in rows:
        cap_s = r["max_spend_usd"] or "none"
        state = "revoked" if r["revoked_at"] else ("admin" if r["admin"] else "active")
        print(f"{r['id']:<18} {r['name'][:20]:<20} {cap_s:>12} {r['spent_usd']:>14} {r['held_usd']:>12}  {state}")
    return 0


async def _revoke_key(args: argparse.Namespace, store: Store) -> int:
    if not await store.revoke_key(args.id, SystemClock().now()):
        print(f"no active key with id {args.id}", file=sys.stderr)
        return 1
    print(f"revoked {args.id}")
    return 0


def cmd_calls(args: argparse.Namespace) -> int:
    """The list of ``GET /fairmeter/v1/calls``, with the same filters and cursors (``--key``: as that key sees it)."""
    since = instant(args.since, "--since") if args.since is not None else None
    until = instant(args.until, "--until") if args.until is not None else None
    try:
        cursor = read_cursor(args.cursor) if args.cursor is not None else None
    except ValueError as exc:
        raise InvalidRequest(f"--cursor: {exc}; pass the next cursor a listing printed.") from None
    page = CallPage(args.key, args.limit, since, until, args.status, cursor)
    found, nxt = run_with(store_of(config_of(args)), lambda s: call_page(s, page))
    rows = [call_json(r) for r in found]
    if args.json:
        print(json.dumps({"data": rows, "next": nxt}))
        return 0
    print_calls(rows)
    if nxt is not None:
        print(f"more: the next page is this command with --cursor {nxt}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from fairmeter.verify import verify_store

    result = run_with(store_of(config_of(args)), verify_store)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"balanced: {result['balanced']}  caps_ok: {result['caps_ok']}  pending calls: {result['pending_calls']}")
        for p in result["problems"]:
            print(f"- {p['kind']}: {p['message']}")
    ok = result["balanced"] and result["caps_ok"] and not result["problems"]
    return 0 if ok else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fairmeter", description="An LLM gateway with exact, capped spend.")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="run the gateway")
    db_args(s)
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--workers", type=int, help="gateway processes on the one port (default: the config's workers, 1)")
    s.set_defaults(fn=cmd_serve)

    e = sub.add_parser("emulator", help="run the provider emulator (OpenAI + Anthropic wire formats)")
    e.add_argument("--host", default="127.0.0.1")
    e.add_argument("--port", type=int, default=8900)
    e.set_defaults(fn=cmd_emulator)

    d = sub.add_parser("demo", help="emulator + gateway on SQLite, real SDK traffic, a table of calls")
    d.add_argument("--dir", default=".fairmeter")
    d.set_defaults(fn=cmd_demo)

    r = sub.add_parser("replay", help="run cost cases through the real gateway; one JSON line per case")
    r.add_argument("cases")
    r.set_defaults(fn=cmd_replay)

    k = sub.add_parser("keys", help="create, list and revoke fairmeter keys")
    ksub = k.add_subparsers(dest="keys_cmd", required=True)
    kc = ksub.add_parser("create")
    db_args(kc)
    kc.add_argument("--name", required=True)
    kc.add_argument("--max-spend-usd")
    kc.add_argument("--admin", action="store_true")
    kc.add_argument("--org", help="the key's organisation, by name or id (default: the default organisation)")
    kc.add_argument("--user", help="the user the key belongs to (else it belongs to a service)")
    kc.add_argument("--service", help="the service the key belongs to (default: default)")
    kc.add_argument("--json", action="store_true")
    kl = ksub.add_parser("list")
    db_args(kl)
    kl.add_argument("--json", action="store_true")
    kr = ksub.add_parser("revoke")
    db_args(kr)
    kr.add_argument("id")
    k.set_defaults(fn=cmd_keys)

    c = sub.add_parser("calls", help="list call records")
    csub = c.add_subparsers(dest="calls_cmd", required=True)
    cl = csub.add_parser("list")
    db_args(cl)
    cl.add_argument("--limit", type=list_limit, default=50, help=f"1 to {MAX_LIST_LIMIT} (default 50)")
    cl.add_argument("--status", choices=CALL_STATUSES)
    cl.add_argument("--key", metavar="KEY_ID", help="only this key's calls (what the key itself sees in the API)")
    cl.add_argument("--since", help="started at or after: ISO-8601 (UTC when no zone is given) or epoch seconds")
    cl.add_argument("--until", help="started before: ISO-8601 (UTC when no zone is given) or epoch seconds")
    cl.add_argument("--cursor", help="the next page: the cursor the previous page printed")
    cl.add_argument("--json", action="store_true")
    c.set_defaults(fn=cmd_calls)

    v = sub.add_parser("verify", help="check the books; exit 1 on any problem")
    db_args(v)
    v.add_argument("--json", action="store_true")
    v.set_defaults(fn=cmd_verify)

    cli_admin.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.fn(args)
    except (ConfigError, FairmeterError) as exc:
        print(f"fairmeter: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
