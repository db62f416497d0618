"""The async `Store` driven from synchronous test code (the test thread has no event loop of its own)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fairmeter.store import Store, open_store

T = TypeVar("T")


class SyncStore:
    """Each coroutine method of the wrapped store, called here, runs to completion in a new event loop.

    ``mark_forwarded`` is not a coroutine and needs a running loop: call it inside `run`.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    @classmethod
    def open(cls, database_url: str) -> SyncStore:
        return cls(open_store(database_url, time.time()))

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.store, name)
        return lambda *args, **kwargs: asyncio.run(method(*args, **kwargs))

    def run(self, work: Callable[[Store], Awaitable[T]]) -> T:
        """``work(store)`` in a new event loop (several operations, or one that needs a running loop)."""

        async def main() -> T:
            return await work(self.store)

        return asyncio.run(main())
