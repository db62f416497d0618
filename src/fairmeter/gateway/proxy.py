"""One metered call: authenticate, parse, quote W, hold, forward, tap the usage, settle.

The response reaches the client unchanged and chunk by chunk; the tap copies what passes. The only
change is for OpenAI chat streams whose client did not ask for usage: the gateway asks upstream
for it (``stream_options.include_usage``) and removes the final usage chunk before the client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import orjson

from fairmeter.errors import AllowanceExhausted, BudgetExceeded, FairmeterError, IdempotencyKeyInUse, InvalidRequest
from fairmeter.gateway.asgi import ClientGone, Headers, Receive, Scope, Send, header, read_body, send_whole
from fairmeter.gateway.errors import error_body, error_headers, render
from fairmeter.gateway.http_client import Response, UpstreamError
from fairmeter.gateway.meter import Quote, budget_message
from fairmeter.gateway.state import GatewayState
from fairmeter.gateway.upstream import response_headers
from fairmeter.money import usd_str
from fairmeter.record import record
from fairmeter.store.records import CallEnd, CallStart, HoldOutcome, KeyRecord, StoredResponse
from fairmeter.usage.model import UsageReport, UsageStatus
from fairmeter.usage.reader import BodyReader, StreamReader
from fairmeter.usage.request import ParsedRequest
from fairmeter.usage.sse import SSESplitter

log = logging.getLogger("fairmeter.gateway")

MAX_IDEMPOTENCY_KEY = 255
_STATUS_OF_CODE = {
    "invalid_api_key": "refused",
    "budget_exceeded": "refused",
    "allowance_exhausted": "refused",
    "idempotency_key_in_use": "refused",
}


class UpstreamCut(Exception):
    """Raised after settling a call whose upstream broke mid-response: the server then drops the
    client connection without finishing the body, so the client sees the same cut."""


@record
class Route:
    """A metered provider endpoint."""

    provider: str
    api: str
    parse: Callable[[object], ParsedRequest]
    read_body: BodyReader
    stream_reader: Callable[[], StreamReader]


async def metered_call(state: GatewayState, route: Route, scope: Scope, receive: Receive, send: Send) -> None:
    """Handle one call end to end; always leaves exactly one call record."""
    call_id = state.new_call_id()
    started = state.clock.now()
    key: KeyRecord | None = None
    parsed: ParsedRequest | None = None
    quote: Quote | None = None
    idem: str | None = None
    try:
        key = await state.authenticate(scope["headers"])
        body = await read_body(scope, receive, state.config.max_body_bytes)
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None
        parsed = route.parse(obj)
        idem = _idempotency_key(scope)
        quote = state.meter.quote(route.provider, parsed)
    except FairmeterError as exc:
        start = _start(state, route, call_id, key, parsed, None, idem, started)
        await _refuse(state, route, start, exc, send)
        return
    except ClientGone as gone:  # nobody to answer; the record still says what happened
        start = _start(state, route, call_id, key, None, None, None, started)
        now, why = state.clock.now(), str(gone)
        await state.store.record_refusal(start, "client_disconnected", "client_disconnected", why, now)
        return
    start = _start(state, route, call_id, key, parsed, quote, idem, started)
    if idem is not None and (settling := state.settling_keys.get((start.key_id or "", idem))) is not None:
        await settling  # a repeat of a call whose response went out and whose settlement is under way: replay it
    outcome = await state.store.begin_call(start, state.config.idempotency_ttl_s)
    if outcome.kind == "refused":
        r = outcome.refused
        assert r is not None
        await _refuse(state, route, start, BudgetExceeded(budget_message(r.cap, r.spent, r.held, r.amount)), send)
        return
    if outcome.kind == "unfunded":
        assert parsed is not None and quote is not None and outcome.unfunded is not None
        await _refuse(state, route, start, _allowance_exhausted(state, quote, parsed, outcome), send)
        return
    if outcome.kind == "in_use":
        msg = (
            f"A call with this Idempotency-Key ({idem}) is still in flight (call {outcome.other_call_id}); "
            "retry in a second to get its result."
        )
        await _refuse(state, route, start, IdempotencyKeyInUse(msg), send)
        return
    if outcome.kind == "replay":
        await _replay(state, start, outcome.other_call_id or "", outcome.stored, send)
        return
    assert parsed is not None and quote is not None
    await _forward(state, route, scope, receive, send, start, parsed, quote, obj, body)


def _allowance_exhausted(
    state: GatewayState, quote: Quote, parsed: ParsedRequest, outcome: HoldOutcome
) -> AllowanceExhausted:
    """402 with the exact window, its use, limit and reset, the switch that is off, and a smaller max_tokens."""
    message = f"This call needs a hold of ${usd_str(quote.reserved)} (its worst-case cost) and it does not fit: "
    message += f"{outcome.unfunded}."
    fitting = state.meter.max_output_fitting(quote, parsed, outcome.fundable) if outcome.fundable else None
    if fitting is not None:
        message += f" A request with max_tokens of at most {fitting} would fit."
    return AllowanceExhausted(message, details={**(outcome.details or {}), "max_tokens_that_fit": fitting})


def _idempotency_key(scope: Scope) -> str | None:
    raw = header(scope, b"idempotency-key")
    if raw is None:
        return None
    value = raw.decode("latin-1").strip()
    if not value or len(value) > MAX_IDEMPOTENCY_KEY:
        raise InvalidRequest(
            f"The Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY} characters; got {len(value)}.",
            param="Idempotency-Key",
        )
    return value


def _start(
    state: GatewayState,
    route: Route,
    call_id: str,
    key: KeyRecord | None,
    parsed: ParsedRequest | None,
    quote: Quote | None,
    idem: str | None,
    started: float,
) -> CallStart:
    return CallStart(
        id=call_id,
        key_id=key.id if key else None,
        provider=route.provider,
        api=route.api,
        model=parsed.model if parsed else None,
        stream=parsed.stream if parsed else False,
        reserved=quote.reserved if quote else 0,
        estimate=quote.estimate if quote else 0,
        prices_json=quote.prices_json if quote else None,
        price_source=quote.rates.source if quote else None,
        idempotency_key=idem,
        started_at=started,
        lease_owner=state.owner,
        lease_expires_at=started + state.config.lease_s,
        payer_id=key.payer_id if key else None,
        tokens=quote.tokens if quote else 0,
    )


async def _refuse(state: GatewayState, route: Route, start: CallStart, exc: FairmeterError, send: Send) -> None:
    status = _STATUS_OF_CODE.get(exc.code, "bad_request")
    now = state.clock.now()
    await state.store.record_refusal(start, status, exc.code, exc.message, now)
    code, headers, body = render(route.provider, start.id, exc)
    await send_whole(send, code, headers, body)


async def _replay(
    state: GatewayState, start: CallStart, original: str, stored: StoredResponse | None, send: Send
) -> None:
    now = state.clock.now()
    await state.store.record_replay(start, original, now)
    if stored is None:  # resolved without an answer to give back: its gateway stopped mid-call
        msg = (
            f"Call {original} with this Idempotency-Key already ran and was settled without a response to "
            "replay (its gateway process stopped mid-call; see that call's record). "
            "Send a new Idempotency-Key to run the request again."
        )
        body = error_body(start.provider, 409, "idempotency_key_in_use", msg)
        await send_whole(send, 409, error_headers(start.id, False, len(body)), body)  # retrying cannot help
        return
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in stored.headers]
    headers = [h for h in headers if h[0] not in (b"fairmeter-call-id", b"date")]  # a new message: a new Date
    headers += [(b"fairmeter-call-id", start.id.encode()), (b"fairmeter-replay-of", original.encode())]
    await send_whole(send, stored.status, headers, stored.body)


async def _forward(
    state: GatewayState,
    route: Route,
    scope: Scope,
    receive: Receive,
    send: Send,
    start: CallStart,
    parsed: ParsedRequest,
    quote: Quote,
    obj: object,
    body: bytes,
) -> None:
    upstream = state.config.upstreams[route.provider]
    headers = state.upstream.forward_headers(scope["headers"], upstream)
    strip_usage = route.api == "chat" and parsed.stream and not parsed.include_usage
    if strip_usage:
        assert isinstance(obj, dict)
        options = obj.get("stream_options") or {}
        obj["stream_options"] = {**options, "include_usage": True}
        body = orjson.dumps(obj)  # the one change fairmeter makes to a request; otherwise its bytes go as sent
    headers["content-type"] = "application/json"
    # "Forwarded" is marked once the request is written (a connect that fails sends nothing), not waited for:
    # it commits while the provider works. If this process dies before that commit, the lapsed hold is taken
    # as never forwarded and voided.
    try:
        resp = await state.upstream.send(
            "POST", upstream, scope["path"], headers, body, lambda: state.store.mark_forwarded(start.id)
        )
    except (UpstreamError, TimeoutError, OSError) as exc:
        await _upstream_failed(state, route, start, quote, exc, send)
        return
    keep = start.idempotency_key is not None
    try:
        is_sse = resp.status < 300 and resp.content_type == "text/event-stream"
        if is_sse:
            await _relay_stream(state, route, receive, send, start, quote, resp, strip_usage, keep)
        else:
            await _relay_body(state, route, send, start, quote, resp, keep)
    finally:
        resp.release()


async def _upstream_failed(
    state: GatewayState, route: Route, start: CallStart, quote: Quote, exc: BaseException, send: Send
) -> None:
    if isinstance(exc, TimeoutError):
        # The request reached the provider, which may bill it: settle at the prompt estimate and flag.
        msg = f"The upstream did not answer within {state.config.upstream_timeout_s:g} s."
        status, code, report = 504, "upstream_timeout", UsageReport(UsageStatus.UNKNOWN)
    else:
        msg = f"The upstream could not be reached: {type(exc).__name__}: {exc}."
        status, code, report = 502, "upstream_unreachable", UsageReport(UsageStatus.ERROR)
    body = error_body(route.provider, status, code, msg)
    headers = error_headers(start.id, False, len(body))
    # A settled call's answer is kept for its idempotency key, so a retry gets the same answer, not a 409.
    stored = None
    if start.idempotency_key is not None and report.status is not UsageStatus.ERROR:
        stored = StoredResponse(status, [(k.decode(), v.decode()) for k, v in headers], body, False)
    reconcile = report.status is UsageStatus.UNKNOWN
    try:
        await send_whole(send, status, headers, body)
    finally:
        await _settle(state, start, quote, report, "upstream_error", None, msg, stored, reconcile=reconcile)


async def _relay_body(
    state: GatewayState,
    route: Route,
    send: Send,
    start: CallStart,
    quote: Quote,
    resp: Response,
    keep: bool,
) -> None:
    """Non-streamed: pass chunks through as they come; if the client leaves, finish and settle anyway.

    The last chunk is held back until the whole body has arrived (a body cut short is passed on as a cut,
    never as a whole response). The settlement follows the response: the client does not wait for it
    (docs/architecture.md, "Settled after the response").
    """
    headers = response_headers(resp, start.id, keep_length=True)
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    chunks: list[bytes] = []
    cut = False
    try:
        async for chunk in resp.chunks():
            if chunks:
                await send({"type": "http.response.body", "body": chunks[-1], "more_body": True})
            chunks.append(chunk)
    except (UpstreamError, TimeoutError, OSError):
        cut = True
    body = b"".join(chunks)
    report = route.read_body(resp.status, body)
    if cut and report.status is UsageStatus.COMPLETE:
        report = UsageReport(UsageStatus.UNKNOWN)
    status = "upstream_cut" if cut else ("ok" if resp.status < 400 else "upstream_error")
    message = None
    if status == "upstream_error":
        message = f"the upstream answered HTTP {resp.status}; a failed call costs nothing"
    stored = _stored(resp, headers, body, False) if keep else None
    try:
        if not cut:  # the client has its whole answer before the ledger work, which it need not wait for
            await send({"type": "http.response.body", "body": chunks[-1] if chunks else b"", "more_body": False})
    finally:
        await _settle(state, start, quote, report, status, resp.status, message, stored)
    if cut:
        if chunks:
            await send({"type": "http.response.body", "body": chunks[-1], "more_body": True})
        raise UpstreamCut(start.id)


async def _relay_stream(
    state: GatewayState,
    route: Route,
    receive: Receive,
    send: Send,
    start: CallStart,
    quote: Quote,
    resp: Response,
    strip_usage: bool,
    keep: bool,
) -> None:
    """Streamed: relay each upstream chunk at once, feed the tap, and stop upstream if the client leaves."""
    headers = response_headers(resp, start.id, keep_length=False)
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    splitter = SSESplitter()
    reader = route.stream_reader()
    sent: list[bytes] = []
    disconnected = asyncio.Event()
    watcher = asyncio.create_task(_watch_disconnect(receive, disconnected, resp))
    ended = False
    try:
        async for chunk in resp.chunks():
            if disconnected.is_set():
                break
            out = chunk
            events = splitter.feed(chunk)
            if strip_usage:  # relay the events as they were, minus the usage chunk fairmeter asked for
                kept = []
                for ev in events:
                    reader.feed(ev.data)
                    if not reader.usage_only:
                        kept.append(ev.raw)
                out = kept[0] if len(kept) == 1 else b"".join(kept)
            else:
                for ev in events:
                    reader.feed(ev.data)
            if out:
                if keep:
                    sent.append(out)
                await send({"type": "http.response.body", "body": out, "more_body": True})
        else:
            ended = True
            for ev in splitter.flush():
                reader.feed(ev.data)
                if not (strip_usage and reader.usage_only):
                    if keep:
                        sent.append(ev.raw)
                    await send({"type": "http.response.body", "body": ev.raw, "more_body": True})
    except (UpstreamError, TimeoutError, OSError):
        ended = False
    finally:
        watcher.cancel()
    client_gone = disconnected.is_set()
    report = reader.finish(ended=ended and not client_gone)
    if client_gone:
        status = "client_disconnected"
    elif report.status is UsageStatus.ERROR:
        status = "upstream_error"
    elif not ended or report.status in (UsageStatus.PARTIAL, UsageStatus.UNKNOWN):
        status = "upstream_cut"
    else:
        status = "ok"
    stored = _stored(resp, headers, b"".join(sent), True) if keep else None
    try:
        if ended and not client_gone:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        await _settle(state, start, quote, report, status, resp.status, None, stored)
    if not ended and not client_gone:
        raise UpstreamCut(start.id)  # pass the cut on: the client must not mistake it for a whole stream


async def _watch_disconnect(receive: Receive, flag: asyncio.Event, resp: Response) -> None:
    """When the client goes away, close the upstream at once, even while it is between chunks."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            flag.set()
            resp.close()  # generation stops now, not when the next chunk would have arrived
            return


def _stored(resp: Response, headers: Headers, body: bytes, stream: bool) -> StoredResponse:
    return StoredResponse(resp.status, [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers], body, stream)


async def _settle(
    state: GatewayState,
    start: CallStart,
    quote: Quote,
    report: UsageReport,
    status: str,
    upstream_status: int | None,
    message: str | None,
    stored: StoredResponse | None,
    reconcile: bool = False,
) -> None:
    bill = state.meter.bill(quote, report)
    now = state.clock.now()
    end = CallEnd(
        status=status,
        upstream_status=upstream_status,
        usage_status=report.status.value,
        usage_json=bill.usage_json,
        cost_usd=bill.cost_usd,
        billed=bill.billed,
        estimated=bill.estimated,
        breakdown_json=bill.breakdown_json,
        ended_at=now,
        message=message,
        stored_response=stored,
        prices_json=bill.prices_json,
        price_source=bill.price_source,
        tokens=bill.tokens,
    )
    void = report.status is UsageStatus.ERROR
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    state.settling[start.id] = done
    idem = (start.key_id, start.idempotency_key) if start.key_id and start.idempotency_key else None
    if idem is not None:
        state.settling_keys[idem] = done
    try:  # the client has its response already (or is gone): nobody waits for this commit but readers and repeats
        overrun = await state.store.finish_call(
            start.id, end, now, void=void, needs_reconciliation=reconcile, ride=True
        )
    finally:
        del state.settling[start.id]
        if idem is not None and state.settling_keys.get(idem) is done:
            del state.settling_keys[idem]
        done.set_result(None)
    if overrun:
        log.error("call %s cost %d nano-USD more than its hold; posted as an overrun", start.id, overrun)
