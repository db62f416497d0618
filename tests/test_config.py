"""Configuration: lookup order, overrides, upstreams, price tables, and refusals that name the problem."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fairmeter.catalog import Catalog
from fairmeter.config import DEFAULT_DATABASE_URL, Config, find_config_file, load_config, parse_config
from fairmeter.errors import ConfigError
from fairmeter.pricing.rates import LongContext


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def db_toml(name: str) -> str:
    return f'database_url = "sqlite:///{name}.db"\n'


# ---------------------------------------------------------------------------------------------- lookup order


@pytest.fixture
def three_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """An explicit file, a $FAIRMETER_CONFIG file and ./fairmeter.toml, each naming its own database."""
    cwd = tmp_path / "cwd"
    write(cwd / "fairmeter.toml", db_toml("local"))
    return write(tmp_path / "flag.toml", db_toml("flag")), write(tmp_path / "env.toml", db_toml("env")), cwd


def test_explicit_config_wins(three_files: tuple[Path, Path, Path]) -> None:
    flag, env_file, cwd = three_files
    config = load_config(str(flag), {"FAIRMETER_CONFIG": str(env_file)}, cwd)
    assert config.database_url == "sqlite:///flag.db" and config.source == str(flag)


def test_env_config_is_next(three_files: tuple[Path, Path, Path]) -> None:
    _, env_file, cwd = three_files
    config = load_config(None, {"FAIRMETER_CONFIG": str(env_file)}, cwd)
    assert config.database_url == "sqlite:///env.db" and config.source == str(env_file)


def test_local_file_is_next(three_files: tuple[Path, Path, Path]) -> None:
    _, _, cwd = three_files
    config = load_config(None, {}, cwd)
    assert config.database_url == "sqlite:///local.db"
    assert find_config_file(None, {"FAIRMETER_CONFIG": ""}, cwd) == cwd / "fairmeter.toml"


def test_defaults_without_any_file(tmp_path: Path) -> None:
    config = load_config(None, {}, tmp_path)
    assert DEFAULT_DATABASE_URL == "sqlite:///.fairmeter/fairmeter.db"
    assert config.database_url == DEFAULT_DATABASE_URL and config.source == "defaults"
    assert config == Config(upstreams=config.upstreams)  # every other setting is the documented default
    assert config.default_key_max_spend is None and config.max_request is None and config.prices == ()
    assert config.upstreams["openai"].base_url == "https://api.openai.com/v1"
    assert config.upstreams["anthropic"].base_url == "https://api.anthropic.com"


def test_database_url_flag_overrides_every_source(three_files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    flag, env_file, cwd = three_files
    env = {"FAIRMETER_CONFIG": str(env_file)}
    assert load_config(str(flag), env, cwd, "sqlite:///x.db").database_url == "sqlite:///x.db"
    assert load_config(None, env, cwd, "sqlite:///x.db").database_url == "sqlite:///x.db"
    assert load_config(None, {}, tmp_path, "sqlite:///x.db").database_url == "sqlite:///x.db"


def test_database_url_flag_keeps_the_rest_of_the_file(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", db_toml("file") + 'default_key_max_spend_usd = "4"\nport = 9999\n')
    config = load_config(str(cfg), {}, tmp_path, "sqlite:///other.db")
    assert config.database_url == "sqlite:///other.db"
    assert config.default_key_max_spend == 4_000_000_000 and config.port == 9999


def test_missing_explicit_or_env_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found") as info:
        load_config(str(tmp_path / "nope.toml"), {}, tmp_path)
    assert "nope.toml" in str(info.value)
    with pytest.raises(ConfigError, match=r"gone\.toml"):
        load_config(None, {"FAIRMETER_CONFIG": str(tmp_path / "gone.toml")}, tmp_path)


# ---------------------------------------------------------------------------------------------- upstreams


def test_upstream_base_url_and_key_env(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "c.toml",
        '[upstreams.openai]\nbase_url = "http://127.0.0.1:9/v1/"\napi_key_env = "MY_OPENAI"\n',
    )
    env = {"MY_OPENAI": "sk-from-env", "OPENAI_API_KEY": "sk-default", "ANTHROPIC_API_KEY": "sk-ant"}
    config = load_config(str(cfg), env, tmp_path)
    openai_up = config.upstreams["openai"]
    assert openai_up.base_url == "http://127.0.0.1:9/v1" and openai_up.api_key_env == "MY_OPENAI"
    assert openai_up.api_key == "sk-from-env"
    anthropic_up = config.upstreams["anthropic"]
    assert anthropic_up.api_key_env == "ANTHROPIC_API_KEY" and anthropic_up.api_key == "sk-ant"
    # The key is read from the mapping passed in, nothing else: a missing variable is simply no key.
    assert load_config(str(cfg), {}, tmp_path).upstreams["openai"].api_key is None


@pytest.mark.parametrize("url", ["ftp://example.com", "api.openai.com/v1", "https://", "https://x/v1?a=1"])
def test_an_upstream_base_url_that_is_not_http_is_an_error(url: str) -> None:
    with pytest.raises(ConfigError, match=r"\[upstreams\.openai\] base_url must be an http:// or https:// URL"):
        parse_config({"upstreams": {"openai": {"base_url": url}}}, {}, "t")


def test_whitespace_around_an_upstream_key_is_dropped() -> None:
    config = parse_config({}, {"OPENAI_API_KEY": "sk-abc\n", "ANTHROPIC_API_KEY": " sk-ant "}, "t")
    assert (config.upstreams["openai"].api_key, config.upstreams["anthropic"].api_key) == ("sk-abc", "sk-ant")


def test_unknown_upstream_is_an_error() -> None:
    with pytest.raises(ConfigError, match="mistral"):
        parse_config({"upstreams": {"mistral": {"base_url": "http://x"}}}, {}, "t")


# ---------------------------------------------------------------------------------------------- prices

FULL_PRICE_TOML = """
[prices."acme-large"]
provider = "openai"
input = "2.50"
output = "10"
cache_read = "1.25"
cache_write_5m = "3.125"
cache_write_1h = "5"
input_audio = "40"
output_audio = "80"
web_search_per_1k_requests = "25"
batch_multiplier = "0.5"
max_output_tokens = 16384

[prices."acme-large".long_context]
threshold_input_tokens = 200000
input = "5"
output = "15"
cache_read = "2.5"
"""


def test_a_full_price_table(tmp_path: Path) -> None:
    config = load_config(str(write(tmp_path / "c.toml", FULL_PRICE_TOML)), {}, tmp_path)
    (override,) = config.prices
    assert override.model == "acme-large" and override.provider == "openai"
    rates = override.rates
    assert dict(rates.per_mtok) == {
        "input": Decimal("2.50"),
        "output": Decimal("10"),
        "cache_read": Decimal("1.25"),
        "cache_write_5m": Decimal("3.125"),
        "cache_write_1h": Decimal("5"),
        "input_audio": Decimal("40"),
        "output_audio": Decimal("80"),
    }
    assert rates.web_search_per_1k == Decimal("25") and rates.batch_multiplier == Decimal("0.5")
    assert rates.max_output_tokens == 16384
    assert rates.long_context == LongContext(
        200_000, {"input": Decimal("5"), "output": Decimal("15"), "cache_read": Decimal("2.5")}
    )
    assert rates.source == f"config:{tmp_path / 'c.toml'}"
    for value in [*rates.per_mtok.values(), *rates.long_context.per_mtok.values()]:
        assert isinstance(value, Decimal)


def test_price_provider_restricts_the_override(tmp_path: Path) -> None:
    config = load_config(str(write(tmp_path / "c.toml", FULL_PRICE_TOML)), {}, tmp_path)
    catalog = Catalog(config.prices, use_genai_prices=False)
    assert catalog.lookup("openai", "acme-large") is config.prices[0].rates
    assert catalog.lookup("anthropic", "acme-large") is None


def test_price_without_provider_applies_to_both() -> None:
    config = parse_config({"prices": {"m": {"input": "1", "output": "2"}}}, {}, "t")
    catalog = Catalog(config.prices, use_genai_prices=False)
    assert catalog.lookup("openai", "m") is not None and catalog.lookup("anthropic", "m") is not None
    assert config.prices[0].provider is None


def test_integer_prices_are_exact() -> None:
    config = parse_config({"prices": {"m": {"input": 3, "output": 15}}}, {}, "t")
    assert config.prices[0].rates.per_mtok == {"input": Decimal(3), "output": Decimal(15)}


# ---------------------------------------------------------------------------------------------- money

MONEY_KEYS = ("default_key_max_spend_usd", "max_request_usd")


@pytest.mark.parametrize("key", MONEY_KEYS)
def test_money_values_are_decimal_strings(key: str) -> None:
    config = parse_config({key: "2.50"}, {}, "t")
    value = config.default_key_max_spend if key == "default_key_max_spend_usd" else config.max_request
    assert value == 2_500_000_000


@pytest.mark.parametrize("key", MONEY_KEYS)
def test_a_float_money_value_is_refused(tmp_path: Path, key: str) -> None:
    cfg = write(tmp_path / "c.toml", f"{key} = 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(cfg), {}, tmp_path)
    assert key in str(info.value) and "float" in str(info.value)


@pytest.mark.parametrize("key", MONEY_KEYS)
@pytest.mark.parametrize("value", ['"-1"', '"abc"', '"NaN"', '"Infinity"', "true"])
def test_a_bad_money_value_is_refused(tmp_path: Path, key: str, value: str) -> None:
    cfg = write(tmp_path / "c.toml", f"{key} = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(cfg), {}, tmp_path)
    assert key in str(info.value)


@given(st.decimals(min_value=0, max_value=10**6, places=9, allow_nan=False, allow_infinity=False))
def test_money_strings_are_parsed_exactly(amount: Decimal) -> None:
    config = parse_config({"default_key_max_spend_usd": str(amount), "max_request_usd": str(amount)}, {}, "t")
    assert config.default_key_max_spend == int(amount * 10**9)
    assert config.max_request == int(amount * 10**9)


@given(st.decimals(min_value=0, max_value=1000, places=12, allow_nan=False, allow_infinity=False))
def test_sub_nano_money_rounds_up_never_down(amount: Decimal) -> None:
    nano = parse_config({"max_request_usd": str(amount)}, {}, "t").max_request
    assert nano is not None
    assert Decimal(nano) >= amount * 10**9 > Decimal(nano) - 1


def test_a_float_price_is_refused(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", '[prices."acme"]\ninput = 0.15\noutput = "0.6"\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(cfg), {}, tmp_path)
    assert "acme" in str(info.value) and "input" in str(info.value) and "float" in str(info.value)


# ---------------------------------------------------------------------------------------------- refusals


def test_an_unknown_setting_is_named(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", db_toml("x") + 'databse_url = "sqlite:///y.db"\nmax_spend = "1"\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(cfg), {}, tmp_path)
    assert "databse_url" in str(info.value) and "max_spend" in str(info.value) and str(cfg) in str(info.value)


def test_an_unknown_price_key_is_named(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", '[prices."acme"]\ninput = "1"\noutput = "2"\ninptu = "3"\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(cfg), {}, tmp_path)
    assert "inptu" in str(info.value) and "acme" in str(info.value)


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ('output = "2"', "input"),
        ('input = "1"\noutput = "-2"', "output"),
        ('input = "1"\noutput = "2"\nmax_output_tokens = 0', "max_output_tokens"),
        ('input = "1"\noutput = "2"\nmax_output_tokens = "100"', "max_output_tokens"),
        ('input = "1"\noutput = "2"\nprovider = "mistral"', "provider"),
        ('input = "1"\noutput = "2"\nlong_context = { input = "2" }', "threshold_input_tokens"),
        ('input = "1"\noutput = "2"\nlong_context = { threshold_input_tokens = -1 }', "threshold_input_tokens"),
        ('input = "1"\noutput = "2"\nlong_context = { threshold_input_tokens = 9, inptu = "5" }', "inptu"),
        ('input = "1"\noutput = "2"\nlong_context = { threshold_input_tokens = 9, output = 0.5 }', "output"),
        ('input = "1"\noutput = "2"\nbatch_multiplier = 0.5', "batch_multiplier"),
        ('input = "1"\noutput = "2"\nweb_search_per_1k_requests = "ten"', "web_search_per_1k_requests"),
    ],
    ids=[
        "no-input",
        "negative",
        "zero-max-output",
        "string-max-output",
        "bad-provider",
        "lc-no-threshold",
        "lc-neg",
        "lc-unknown-key",
        "lc-float",
        "float-multiplier",
        "bad-fee",
    ],
)
def test_a_bad_price_table_is_named(tmp_path: Path, table: str, needle: str) -> None:
    cfg = write(tmp_path / "c.toml", f'[prices."acme"]\n{table}\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(cfg), {}, tmp_path)
    assert needle in str(info.value) and "acme" in str(info.value)


@pytest.mark.parametrize("text", ["database_url = ", "[prices\n", 'port = "8787', "a = 1\na = 2\n"])
def test_bad_toml_is_a_config_error(tmp_path: Path, text: str) -> None:
    cfg = write(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError) as info:
        load_config(str(cfg), {}, tmp_path)
    assert "not valid TOML" in str(info.value) and str(cfg) in str(info.value)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"port": 70000}, "port"),
        ({"port": "8787"}, "port"),
        ({"max_body_bytes": 0}, "max_body_bytes"),
        ({"max_body_bytes": True}, "max_body_bytes"),
        ({"upstream_timeout_s": -1}, "upstream_timeout_s"),
        ({"upstreams": {"openai": "http://x"}}, "upstreams.openai"),
        ({"prices": {"m": "1"}}, "m"),
    ],
)
def test_bad_settings_are_named(data: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, {}, "t")
    assert needle in str(info.value)


def test_price_cache_dir_defaults_to_the_user_cache_and_can_be_turned_off() -> None:
    from pathlib import Path

    from fairmeter.config import parse_config

    assert parse_config({}, {"HOME": "/h"}, "t").price_cache_dir == Path("/h/.cache/fairmeter")
    assert parse_config({}, {"HOME": "/h", "XDG_CACHE_HOME": "/x"}, "t").price_cache_dir == Path("/x/fairmeter")
    assert parse_config({}, {}, "t").price_cache_dir is None
    assert parse_config({"price_cache_dir": ""}, {"HOME": "/h"}, "t").price_cache_dir is None
    assert parse_config({"price_cache_dir": "/p"}, {}, "t").price_cache_dir == Path("/p")


def test_workers_is_a_whole_number_of_processes() -> None:
    assert parse_config({}, {}, "t").workers == 1
    assert parse_config({"workers": 4}, {}, "t").workers == 4
    for bad in (0, -1, 1.5, True, "2", 1000):
        with pytest.raises(ConfigError, match=r"workers must be an integer 1\.\.256"):
            parse_config({"workers": bad}, {}, "t")
