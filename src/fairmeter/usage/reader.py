"""The interface each provider module implements, for streams and for whole bodies."""

from __future__ import annotations

from typing import Protocol

from fairmeter.usage.model import UsageReport


class StreamReader(Protocol):
    """Fed one SSE event's ``data`` payload at a time, in arrival order (bytes, without ``data:``).

    ``finish(ended=True)`` means the upstream closed the stream normally; ``ended=False`` means
    it was cut (connection dropped, client went away, timeout). Must never raise on any input:
    garbage events are ignored, and a prefix of a valid stream never over-counts.
    """

    # Whether the event fed last was the provider's usage report alone (an OpenAI chat chunk with ``choices: []``
    # and a usage that is not null): the gateway drops that event when it asked for usage the client did not.
    # Readers of other wire formats have no such event and leave it False.
    usage_only: bool

    def feed(self, data: bytes) -> None: ...

    def finish(self, *, ended: bool) -> UsageReport: ...


class BodyReader(Protocol):
    """Reads a whole non-streamed response (HTTP status and body bytes) into a report."""

    def __call__(self, status: int, body: bytes) -> UsageReport: ...
