"""What the emulator has seen, for tests and benchmarks (`GET /_emulator/stats`)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class TagStats:
    """Counters for the requests that carried one `x-emulator-tag`.

    `chunks_sent` counts SSE events written to the socket; `completed` counts responses sent in full;
    `client_disconnected` counts responses the client abandoned (closed its connection) before the end.
    """

    requests: int = 0
    chunks_sent: int = 0
    completed: int = 0
    client_disconnected: int = 0
    last_body: Any = None
    last_headers: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return {
            "requests": self.requests,
            "chunks_sent": self.chunks_sent,
            "completed": self.completed,
            "client_disconnected": self.client_disconnected,
            "last_body": copy.deepcopy(self.last_body),
            "last_headers": dict(self.last_headers),
        }


class Stats:
    """Request counts by path and by tag. Lives on the event loop thread; read it through a snapshot."""

    def __init__(self) -> None:
        self.requests = 0
        self.by_path: dict[str, int] = {}
        self.tags: dict[str, TagStats] = {}

    def count(self, path: str) -> None:
        """One more request on `path`."""
        self.requests += 1
        self.by_path[path] = self.by_path.get(path, 0) + 1

    def tagged(self, tag: str, body: Any, headers: dict[str, str]) -> TagStats:
        """Record a tagged request and return its tag's counters, which the connection keeps updating."""
        tally = self.tags.get(tag)
        if tally is None:
            tally = self.tags[tag] = TagStats()
        tally.requests += 1
        tally.last_body = body
        tally.last_headers = headers
        return tally

    def snapshot(self) -> dict[str, Any]:
        """The JSON shape served by `GET /_emulator/stats`."""
        return {
            "requests": self.requests,
            "by_path": dict(self.by_path),
            "tags": {tag: tally.as_dict() for tag, tally in self.tags.items()},
        }

    def reset(self) -> None:
        """Forget everything."""
        self.requests = 0
        self.by_path.clear()
        self.tags.clear()
