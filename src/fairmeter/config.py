"""Configuration: one typed object, loaded once from TOML and passed down.

Lookup order: ``--config FILE``, then ``$FAIRMETER_CONFIG``, then ``./fairmeter.toml``, then the
built-in defaults. The environment is read here and nowhere else (`load_config` takes it as an
argument), including the upstream API keys named by ``api_key_env``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fairmeter.errors import ConfigError
from fairmeter.money import Nano, hold_nano, parse_usd
from fairmeter.pricing.rates import Rates, rates_from_mapping
from fairmeter.record import record

DEFAULT_DATABASE_URL = "sqlite:///.fairmeter/fairmeter.db"


@record
class Upstream:
    """Where one provider's calls go, and the key fairmeter uses there (never shown to clients)."""

    name: str
    base_url: str
    api_key_env: str
    api_key: str | None


@record
class PriceOverride:
    """A `[prices."MODEL"]` table: rates for one model, optionally for one provider only."""

    model: str
    provider: str | None
    rates: Rates


@record
class Config:
    """Everything the gateway and the commands need, typed."""

    database_url: str = DEFAULT_DATABASE_URL
    host: str = "127.0.0.1"
    port: int = 8787
    workers: int = 1  # gateway processes (`fairmeter serve --workers`)
    upstreams: Mapping[str, Upstream] = field(default_factory=dict)
    default_key_max_spend: Nano | None = None
    max_request: Nano | None = None
    prices: tuple[PriceOverride, ...] = ()
    upstream_timeout_s: float = 600.0  # float-ok: seconds
    upstream_connect_timeout_s: float = 10.0  # float-ok: seconds
    lease_margin_s: float = 60.0  # float-ok: seconds; a lease outlives the upstream timeout by this
    expiry_interval_s: float = 30.0  # float-ok: seconds
    max_body_bytes: int = 32 * 1024 * 1024
    idempotency_ttl_s: int = 24 * 3600
    price_cache_dir: Path | None = None  # genai-prices results kept across restarts (None: memory only)
    source: str = "defaults"

    @property
    def lease_s(self) -> float:  # float-ok: seconds
        return self.upstream_timeout_s + self.lease_margin_s


def default_upstreams(env: Mapping[str, str]) -> dict[str, Upstream]:
    return {
        "openai": Upstream("openai", "https://api.openai.com/v1", "OPENAI_API_KEY", _key(env, "OPENAI_API_KEY")),
        "anthropic": Upstream(
            "anthropic", "https://api.anthropic.com", "ANTHROPIC_API_KEY", _key(env, "ANTHROPIC_API_KEY")
        ),
    }


def _key(env: Mapping[str, str], name: str) -> str | None:
    """An upstream key from the environment; a key pasted with a trailing newline would make every call
    fail, and surrounding whitespace is never part of one."""
    key = env.get(name)
    return None if key is None else key.strip()


def _usd(raw: Any, key: str) -> Nano | None:
    if raw is None:
        return None
    if isinstance(raw, float):
        raise ConfigError(f'{key} must be a decimal string such as "5.00" (floats are not used for money)')
    try:
        return hold_nano(parse_usd(raw))
    except (ValueError, ArithmeticError) as exc:
        raise ConfigError(f"{key}: {exc}") from exc


def _seconds(raw: Any, key: str, default: float) -> float:  # float-ok: seconds
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw <= 0:
        raise ConfigError(f"{key} must be a positive number of seconds")
    return float(raw)  # float-ok: seconds


def parse_config(data: Mapping[str, Any], env: Mapping[str, str], source: str) -> Config:
    """Build a `Config` from parsed TOML; raises `ConfigError` with the offending key."""
    known = {
        "database_url",
        "host",
        "port",
        "workers",
        "upstreams",
        "default_key_max_spend_usd",
        "max_request_usd",
        "prices",
        "upstream_timeout_s",
        "upstream_connect_timeout_s",
        "lease_margin_s",
        "expiry_interval_s",
        "max_body_bytes",
        "price_cache_dir",
    }
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}")
    upstreams = default_upstreams(env)
    for name, table in (data.get("upstreams") or {}).items():
        if name not in upstreams:
            raise ConfigError(f"{source}: unknown upstream {name!r} (known: openai, anthropic)")
        if not isinstance(table, Mapping):
            raise ConfigError(f"{source}: [upstreams.{name}] must be a table")
        base = upstreams[name]
        key_env = str(table.get("api_key_env", base.api_key_env))
        base_url = str(table.get("base_url", base.base_url)).rstrip("/")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ConfigError(
                f"{source}: [upstreams.{name}] base_url must be an http:// or https:// URL with a host and no query,"
                f" like https://api.openai.com/v1; got {base_url!r}"
            )
        upstreams[name] = Upstream(name, base_url, key_env, _key(env, key_env))
    prices: list[PriceOverride] = []
    for model, table in (data.get("prices") or {}).items():
        if not isinstance(table, Mapping):
            raise ConfigError(f'{source}: [prices."{model}"] must be a table')
        try:
            rates = rates_from_mapping(table, source=f"config:{source}")
        except ValueError as exc:
            raise ConfigError(f'{source}: [prices."{model}"]: {exc}') from exc
        provider = table.get("provider")
        if provider is not None and provider not in ("openai", "anthropic"):
            raise ConfigError(f'{source}: [prices."{model}"].provider must be "openai" or "anthropic"')
        prices.append(PriceOverride(model, provider, rates))
    port = data.get("port", 8787)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
        raise ConfigError(f"{source}: port must be an integer 0..65535")
    workers = data.get("workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 256:
        raise ConfigError(f"{source}: workers must be an integer 1..256 (gateway processes)")
    max_body = data.get("max_body_bytes", 32 * 1024 * 1024)
    if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body <= 0:
        raise ConfigError(f"{source}: max_body_bytes must be a positive integer")
    return Config(
        database_url=str(data.get("database_url", DEFAULT_DATABASE_URL)),
        host=str(data.get("host", "127.0.0.1")),
        port=port,
        workers=workers,
        upstreams=upstreams,
        default_key_max_spend=_usd(data.get("default_key_max_spend_usd"), "default_key_max_spend_usd"),
        max_request=_usd(data.get("max_request_usd"), "max_request_usd"),
        prices=tuple(prices),
        upstream_timeout_s=_seconds(data.get("upstream_timeout_s"), "upstream_timeout_s", 600.0),
        upstream_connect_timeout_s=_seconds(data.get("upstream_connect_timeout_s"), "upstream_connect_timeout_s", 10.0),
        lease_margin_s=_seconds(data.get("lease_margin_s"), "lease_margin_s", 60.0),
        expiry_interval_s=_seconds(data.get("expiry_interval_s"), "expiry_interval_s", 30.0),
        max_body_bytes=max_body,
        price_cache_dir=_price_cache_dir(data.get("price_cache_dir"), env),
        source=source,
    )


def _price_cache_dir(raw: Any, env: Mapping[str, str]) -> Path | None:
    """``price_cache_dir`` if set ("" turns the disk cache off), else the user's cache directory."""
    if raw is not None:
        if not isinstance(raw, str):
            raise ConfigError('price_cache_dir must be a path string ("" turns the disk cache off)')
        return Path(raw).expanduser() if raw else None
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]) / "fairmeter"
    if env.get("HOME"):
        return Path(env["HOME"]) / ".cache" / "fairmeter"
    return None


def find_config_file(explicit: str | None, env: Mapping[str, str], cwd: Path) -> Path | None:
    """The config file to use, by the documented lookup order (None: built-in defaults)."""
    if explicit:
        return Path(explicit)
    if env.get("FAIRMETER_CONFIG"):
        return Path(env["FAIRMETER_CONFIG"])
    local = cwd / "fairmeter.toml"
    return local if local.exists() else None


def load_config(explicit: str | None, env: Mapping[str, str], cwd: Path, database_url: str | None = None) -> Config:
    """Find, read and parse the configuration; ``database_url`` (from ``--database-url``) wins."""
    path = find_config_file(explicit, env, cwd)
    if path is None:
        config = parse_config({}, env, "defaults")
    else:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        config = parse_config(data, env, str(path))
    if database_url:
        config = replace(config, database_url=database_url)
    return config


def max_spend_from_cli(text: str | None) -> Nano | None:
    """Parse ``--max-spend-usd`` (a decimal string) into nano-USD."""
    if text is None:
        return None
    try:
        value = parse_usd(Decimal(text))
    except (ValueError, ArithmeticError) as exc:
        raise ConfigError(f"--max-spend-usd must be a non-negative decimal amount, got {text!r}") from exc
    return hold_nano(value)
