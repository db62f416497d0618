"""`fairmeter.record`: frozen to the type checker, and equal and hashed as a frozen dataclass at run time."""

from __future__ import annotations

import dataclasses
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

import fairmeter
from fairmeter.record import record


@record
class Pair:
    a: int
    b: str = "x"


@dataclasses.dataclass(frozen=True, slots=True)
class FrozenPair:
    a: int
    b: str = "x"


@given(st.integers(), st.text(), st.integers(), st.text())
def test_equality_and_hash_are_those_of_a_frozen_dataclass(a: int, b: str, c: int, d: str) -> None:
    assert (Pair(a, b) == Pair(c, d)) == (FrozenPair(a, b) == FrozenPair(c, d))
    assert hash(Pair(a, b)) == hash(FrozenPair(a, b))
    assert {Pair(a, b), Pair(a, b)} == {Pair(a, b)}
    assert dataclasses.replace(Pair(a, b), b=d) == Pair(a, d)


def test_a_record_has_slots_and_no_instance_dict() -> None:
    assert Pair.__slots__ == ("a", "b")
    assert not hasattr(Pair(1), "__dict__")


def test_the_type_checker_refuses_an_assignment_to_a_field(tmp_path: Path) -> None:
    snippet = tmp_path / "snippet.py"
    snippet.write_text(
        "from fairmeter.record import record\n"
        "from fairmeter.usage.model import Usage\n\n"
        "@record\nclass P:\n    a: int\n\n"
        "P(1).a = 2\n"
        "Usage().output_tokens = 3\n"
        "ok = P(a=1)\n"
    )
    # In a process of its own: mypy raises the interpreter's recursion limit, which other tests rely on.
    args = ["--strict", "--no-incremental", "--follow-imports=silent", "--config-file", "/dev/null"]
    args += ["--cache-dir", str(tmp_path / "cache"), str(snippet)]
    env = {**os.environ, "MYPYPATH": str(Path(fairmeter.__file__).parents[1])}
    done = subprocess.run([sys.executable, "-m", "mypy", *args], capture_output=True, text=True, env=env, check=False)
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert [int(line.split(":")[1]) for line in errors] == [8, 9], out
    assert all("read-only" in line for line in errors), out


def test_every_dataclass_of_the_package_that_is_frozen_is_a_record() -> None:
    """Immutable records are declared one way (a frozen dataclass would cost five times as much to build)."""
    root = Path(fairmeter.__file__).parent
    found = []
    for info in pkgutil.walk_packages([str(root)], "fairmeter."):
        path = root.joinpath(*info.name.split(".")[1:])
        source = path.with_suffix(".py") if path.with_suffix(".py").exists() else path / "__init__.py"
        if info.name != "fairmeter.record" and re.search(r"@dataclass\([^)]*frozen=True", source.read_text()):
            found.append(info.name)
    assert found == []
