"""What every `fairmeter` command that opens the database shares: its options, its config, its store."""

from __future__ import annotations

import argparse
import getpass
import os
from pathlib import Path

from fairmeter.clock import SystemClock
from fairmeter.config import Config, load_config
from fairmeter.errors import ConfigError
from fairmeter.store import Store, open_store
from fairmeter.store.records import MAX_LIST_LIMIT
from fairmeter.store.sqlite import sqlite_path


def db_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config file (else $FAIRMETER_CONFIG, ./fairmeter.toml, defaults)")
    p.add_argument("--database-url", help="overrides database_url, e.g. sqlite:///.fairmeter/fairmeter.db")


def config_of(args: argparse.Namespace) -> Config:
    return load_config(args.config, os.environ, Path.cwd(), args.database_url)


def store_of(config: Config, create: bool = False, now: float | None = None) -> Store:  # float-ok: seconds
    """Open the database; commands that only read or change existing records refuse to create a SQLite file."""
    url = config.database_url
    if not create and url.startswith("sqlite:///"):
        path = sqlite_path(url)
        if path != ":memory:" and not Path(path).exists():
            raise ConfigError(f"no fairmeter database at {path} (check --database-url / database_url)")
    return open_store(url, SystemClock().now() if now is None else now)


def cli_actor() -> str:
    """Who the admin log records for a change made from the command line: ``cli:<login name>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name in the environment nor the password database
        return f"cli:uid{os.getuid()}"


def list_limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to {MAX_LIST_LIMIT}, got {text!r}") from None
    if not 1 <= value <= MAX_LIST_LIMIT:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_LIST_LIMIT}, got {value}")
    return value
