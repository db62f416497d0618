"""`record`: an immutable dataclass that costs no more to make than a mutable one.

A frozen dataclass sets each field through ``object.__setattr__`` in its ``__init__``, which makes it about
five times as dear to build as a plain one (for 16 fields, 2.1 µs against 0.33 µs on the benchmark
machine), and a call through the gateway builds some thirty records (usage, price, hold, allocation,
settlement …): about a tenth of a call's instructions went to building them (docs/performance.md, stop 10).

So a record is frozen for the type checker and plain at run time. ``mypy --strict`` runs on every module of
the package (``make test``), so no code of the package can assign to a record's field; at run time it is a
slotted dataclass with the same ``__eq__`` and the same ``__hash__`` as the frozen one (``unsafe_hash``:
generated from the fields, as a frozen dataclass's is). ``dataclasses.replace`` makes changed copies, as before.
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar, dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, dataclasses.Field))
def record(cls: type[T]) -> type[T]:
    """``@dataclass(frozen=True, slots=True)`` to the type checker; its construction at a plain dataclass's cost."""
    return dataclasses.dataclass(slots=True, unsafe_hash=True)(cls)
