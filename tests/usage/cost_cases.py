"""Load the cost cases shipped in `fairmeter/testing/cases/` and run them through the readers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson

import fairmeter
from fairmeter.usage import anthropic_messages, openai_chat, openai_responses
from fairmeter.usage.model import Usage, UsageReport
from fairmeter.usage.sse import SSESplitter

CASES_DIR = Path(fairmeter.__file__).parent / "testing" / "cases"
CASE_FILES = ("sample.json", "cases.json")

Case = dict[str, Any]


def load_cases() -> list[Case]:
    """Every case of every case file, in file order."""
    out: list[Case] = []
    for name in CASE_FILES:
        data = json.loads((CASES_DIR / name).read_text("utf-8"))
        out.extend(data["cases"])
    return out


CASES = load_cases()
STREAM_CASES = [c for c in CASES if c["stream"] and 200 <= c["http_status"] < 300]


def module(case: Case) -> Any:
    """The provider module that reads this case's wire format."""
    return {
        ("openai", "chat"): openai_chat,
        ("openai", "responses"): openai_responses,
        ("anthropic", "messages"): anthropic_messages,
    }[(case["provider"], case["api"])]


def payloads(case: Case) -> list[bytes]:
    return [p.encode("utf-8") for p in case["response"]]


def sse_bytes(case: Case, newline: bytes = b"\n") -> bytes:
    """The stream as it looks on the wire (``event:`` lines for the typed-event APIs)."""
    parts: list[bytes] = []
    for data in payloads(case):
        block = b""
        if case["api"] != "chat":
            kind = orjson.loads(data)["type"].encode()
            block += b"event: " + kind + newline
        block += b"data: " + data + newline + newline
        parts.append(block)
    return b"".join(parts)


def read_events(case: Case, events: list[bytes], *, ended: bool = True) -> UsageReport:
    reader = module(case).StreamReader()
    for data in events:
        reader.feed(data)
    report: UsageReport = reader.finish(ended=ended)
    return report


def read_case(case: Case, *, ended: bool = True) -> UsageReport:
    """The report for a case: stream payloads fed one by one, or the body read whole."""
    if case["stream"] and 200 <= case["http_status"] < 300:
        return read_events(case, payloads(case), ended=ended)
    body = json.dumps(case["response"]).encode("utf-8")
    report: UsageReport = module(case).read_body(case["http_status"], body)
    return report


def split_feed(raw: bytes, cuts: list[int]) -> tuple[list[bytes], list[bytes]]:
    """Feed ``raw`` to an `SSESplitter` in pieces cut at ``cuts``; (event raws, event data)."""
    splitter = SSESplitter()
    events = []
    last = 0
    for cut in [*sorted(set(cuts)), len(raw)]:
        events.extend(splitter.feed(raw[last:cut]))
        last = cut
    events.extend(splitter.flush())
    return [e.raw for e in events], [e.data for e in events]


def counts(report: UsageReport) -> dict[str, int]:
    """Every count a report carries, by name (usage None counts as zeros)."""
    u = report.usage or Usage()
    out = {
        "input_tokens": u.input_tokens,
        "uncached_input_tokens": u.uncached_input_tokens,
        "cache_read_tokens": u.cache_read_tokens,
        "cache_write_tokens": u.cache_write_tokens,
        "cache_write_5m_tokens": u.cache_write_5m_tokens,
        "cache_write_1h_tokens": u.cache_write_1h_tokens,
        "input_audio_tokens": u.input_audio_tokens,
        "output_tokens": u.output_tokens,
        "reasoning_tokens": u.reasoning_tokens,
        "output_audio_tokens": u.output_audio_tokens,
        "web_search_requests": u.web_search_requests,
        "delivered_text_bytes": report.delivered_text_bytes,
        "delivered_chunks": report.delivered_chunks,
    }
    for ttl, n in u.cache_write_other:
        out[f"cache_write_{ttl}_tokens"] = out.get(f"cache_write_{ttl}_tokens", 0) + n
    return out
