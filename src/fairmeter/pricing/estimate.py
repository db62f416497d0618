"""The usage the ledger settles when the provider's report is missing or cut short.

Estimate method (docs/pricing.md, "Estimate method"):

* ``complete``: the provider's report, as is. ``error``: nothing (cost 0).
* ``unknown``: input = ceil(prompt text bytes / 4) uncached tokens, capped at the request's input
  bound; output = max(delivered chunks, ceil(delivered text bytes / 4)), capped at the output bound.
* ``partial``: the reported (cumulative, lower-bound) usage, with output raised to the same output
  estimate when that is larger (never above the bound, never below what was reported).

Every estimated token is priced at a rate the worst case W already took as a maximum, and no count
exceeds the bound W was computed from, so an estimate never costs more than the hold.
"""

from __future__ import annotations

from dataclasses import replace

from fairmeter.pricing.worst import RequestBound
from fairmeter.usage.model import Usage, UsageReport, UsageStatus

BYTES_PER_TOKEN = 4  # a conservative-low average for text (most BPE tokens are 3-5 bytes)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def delivered_output_estimate(report: UsageReport, bound: RequestBound) -> int:
    """Output tokens implied by what reached the client, capped at the request's output bound."""
    guess = max(report.delivered_chunks, _ceil_div(report.delivered_text_bytes, BYTES_PER_TOKEN))
    return max(0, min(guess, bound.max_output_tokens))


def billed_usage(report: UsageReport, bound: RequestBound) -> tuple[Usage, bool]:
    """The usage to settle for ``report`` and whether it is an estimate."""
    usage = report.usage
    if report.status is UsageStatus.ERROR:
        return Usage(), False
    if report.status is UsageStatus.COMPLETE and usage is not None:
        return usage, False
    output = delivered_output_estimate(report, bound)
    if report.status is UsageStatus.PARTIAL and usage is not None:
        if output > usage.output_tokens:
            usage = replace(usage, output_tokens=output)
        return usage, True
    prompt = _ceil_div(bound.prompt_text_bytes, BYTES_PER_TOKEN)
    return Usage(uncached_input_tokens=max(0, min(prompt, bound.max_input_tokens)), output_tokens=output), True
