"""Every cost case (sample.json + cases.json): reader → usage → exact price, and the estimate."""

from __future__ import annotations

import random
import re
from decimal import Decimal

import pytest
from tests.usage.cost_cases import (
    CASES,
    STREAM_CASES,
    Case,
    counts,
    payloads,
    read_case,
    read_events,
    split_feed,
    sse_bytes,
)

from fairmeter.pricing.estimate import billed_usage
from fairmeter.pricing.price import price_usage
from fairmeter.pricing.rates import rates_from_mapping
from fairmeter.pricing.worst import RequestBound, worst_case
from fairmeter.usage.model import Usage, UsageStatus

NOT_COMPARED = {"reason", "estimate_required", "usage_status", "cost_usd", "error_type"}
TTL_FIELD = re.compile(r"^cache_write_\w+_tokens$")
USAGE_FIELDS = (
    "uncached_input_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "input_audio_tokens",
    "output_tokens",
    "reasoning_tokens",
    "output_audio_tokens",
    "web_search_requests",
)


def ids(cases: list[Case]) -> list[str]:
    return [c["id"] for c in cases]


def test_enough_cases_and_unique_ids() -> None:
    assert len(CASES) >= 36
    assert len(set(ids(CASES))) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_case_usage_and_cost(case: Case) -> None:
    report = read_case(case)
    expected = case["expected"]
    rates = rates_from_mapping(case["prices_per_mtok"])
    assert report.status.value == expected["usage_status"]
    if "error_type" in expected:
        assert report.error_type == expected["error_type"]
    seen = counts(report)
    for key, want in expected.items():
        if key in NOT_COMPARED:
            continue
        if want is None:
            assert report.usage is None, key
            continue
        got = seen.get(key, 0) if TTL_FIELD.match(key) else seen[key]
        assert Decimal(got) == Decimal(want), key
    cost = expected["cost_usd"]
    if cost is None:
        assert report.status is UsageStatus.UNKNOWN and report.usage is None
        return
    usage = report.usage or Usage()
    assert price_usage(usage, rates).total == Decimal(cost)
    if report.status is UsageStatus.ERROR:
        assert report.usage is None
        billed, estimated = billed_usage(report, RequestBound(10**6, 10**6, 10, 10**6))
        assert billed == Usage() and not estimated


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_case_status_does_not_depend_on_ended(case: Case) -> None:
    """Readers judge completeness from the provider's own events; ``ended`` only adds a note."""
    a, b = read_case(case, ended=True), read_case(case, ended=False)
    assert (a.status, a.usage, a.delivered_text_bytes, a.delivered_chunks) == (
        b.status,
        b.usage,
        b.delivered_text_bytes,
        b.delivered_chunks,
    )


ESTIMATE_CASES = [c for c in CASES if "estimate" in c]


def test_estimate_cases_cover_partial_and_unknown() -> None:
    statuses = {c["expected"]["usage_status"] for c in ESTIMATE_CASES}
    assert statuses == {"partial", "unknown"}


@pytest.mark.parametrize("case", ESTIMATE_CASES, ids=ids(ESTIMATE_CASES))
def test_case_estimate(case: Case) -> None:
    spec = case["estimate"]
    bound = RequestBound(**spec["bound"])
    rates = rates_from_mapping(case["prices_per_mtok"])
    usage, estimated = billed_usage(read_case(case), bound)
    assert estimated
    for field in USAGE_FIELDS:
        assert getattr(usage, field) == spec["billed"].get(field, 0), field
    assert usage.cache_write_other == ()
    total = price_usage(usage, rates).total
    assert total == Decimal(spec["cost_usd"])
    assert total <= worst_case(bound, rates)


@pytest.mark.parametrize("case", STREAM_CASES, ids=ids(STREAM_CASES))
@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_case_through_splitter_random_chunks(case: Case, newline: bytes) -> None:
    raw = sse_bytes(case, newline)
    direct = read_case(case)
    rng = random.Random(f"{case['id']}/{newline!r}")
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(raw)), k=rng.randint(1, min(40, len(raw) - 1))))
        raws, datas = split_feed(raw, cuts)
        assert b"".join(raws) == raw
        assert [d for d in datas if d] == payloads(case)
        assert read_events(case, datas) == direct
    # one byte at a time
    raws, datas = split_feed(raw, list(range(1, len(raw))))
    assert read_events(case, datas) == direct
