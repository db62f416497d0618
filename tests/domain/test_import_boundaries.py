"""The domain (usage, pricing, ledger, policy) imports no web framework, SQL driver, socket or genai-prices.

Each domain module is imported in a fresh interpreter and the whole set of modules it pulled in,
transitively, is checked.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import fairmeter

DOMAIN = ("fairmeter.usage", "fairmeter.pricing", "fairmeter.ledger", "fairmeter.policy")
FORBIDDEN = (
    "socket",
    "ssl",
    "asyncio",
    "sqlite3",
    "_sqlite3",
    "aiohttp",
    "httpx",
    "httpx2",
    "uvicorn",
    "httptools",
    "uvloop",
    "starlette",
    "fastapi",
    "psycopg",
    "asyncpg",
    "redis",
    "genai_prices",
    "http",
    "urllib.request",
    "fairmeter.store",
    "fairmeter.gateway",
    "fairmeter.catalog",
    "fairmeter.cli",
)


def domain_modules() -> list[str]:
    names = []
    for pkg in DOMAIN:
        try:
            mod = __import__(pkg, fromlist=["_"])
        except ModuleNotFoundError:
            continue
        names.append(pkg)
        names += [f"{pkg}.{m.name}" for m in pkgutil.iter_modules(mod.__path__)]
    return names


def test_domain_packages_exist() -> None:
    found = domain_modules()
    assert "fairmeter.pricing.price" in found and "fairmeter.ledger.model" in found
    assert fairmeter.__name__ == "fairmeter"


@pytest.mark.parametrize("module", domain_modules())
def test_domain_module_imports_no_io(module: str) -> None:
    code = (
        "import sys, json\n"
        f"before = set(sys.modules)\nimport {module}\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    pulled = json.loads(out)
    bad = sorted(m for m in pulled if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))
    assert not bad, f"{module} pulls in {bad}"


def test_the_check_catches_a_forbidden_import() -> None:
    code = "import sys, json\nbefore = set(sys.modules)\nimport sqlite3\nprint(json.dumps(sorted(set(sys.modules) - before)))"
    pulled = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)
    assert any(m == "sqlite3" for m in pulled)
