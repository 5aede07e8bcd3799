"""Turning a database URL into a configured, process-wide shared SQLAlchemy engine."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import StaticPool

from memori_core.errors import ConfigurationError

__all__ = [
    "DATABASE_URL_ENV",
    "create_store_engine",
    "default_database_url",
    "resolve_database_url",
]

DATABASE_URL_ENV = "MEMORI_DATABASE_URL"
BUSY_TIMEOUT_MS = 30_000
# `sqlite:///path?synchronous=full`: see _configure_sqlite.
SYNCHRONOUS_OPTION = "synchronous"
SYNCHRONOUS_LEVELS = ("normal", "full")


def default_database_url() -> str:
    """The embedded default: a SQLite file in the platform's user data directory."""
    import platformdirs  # deferred: only needed when no URL is configured

    data_dir = Path(platformdirs.user_data_dir("memori-core", appauthor=False))
    return f"sqlite:///{data_dir / 'memori.db'}"


def resolve_database_url(database_url: str | None) -> str:
    """The explicit URL, else `$MEMORI_DATABASE_URL`, else the embedded default."""
    url = database_url or os.environ.get(DATABASE_URL_ENV) or default_database_url()
    if not isinstance(url, str):
        raise ConfigurationError(f"database_url must be a str, got {type(url).__name__}")
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise ConfigurationError(
            f"database_url {url!r} is not a SQLAlchemy URL (e.g. 'sqlite:////abs/path/memori.db')"
        ) from e
    if parsed.get_backend_name() not in {"sqlite", "postgresql"}:
        raise ConfigurationError(
            f"unsupported database {parsed.get_backend_name()!r}: use sqlite or postgresql"
        )
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() != "psycopg":
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return url


def _configure_sqlite(engine: Engine, synchronous: str) -> None:
    # WAL with synchronous=NORMAL (the default here): a commit survives the process crashing
    # the moment after, and the database is never corrupted; only an OS crash or power loss
    # can take back the last commits, because the WAL is synced at checkpoints rather than at
    # every commit. That saves 1.5-2 ms of fsync on each recorded turn. `?synchronous=full`
    # syncs every commit, for those who need a turn to survive power loss too.
    level = synchronous.upper()

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Autocommit at the driver level, so that we issue BEGIN ourselves (see _on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute(f"PRAGMA synchronous = {level}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # A deferred BEGIN that later writes can fail with SQLITE_BUSY without waiting when
        # another process holds the write lock; writers take it up front with IMMEDIATE.
        mode = connection.get_execution_options().get("memori_begin", "DEFERRED")
        # Straight to the driver: through exec_driver_sql this cost ~17 us per transaction.
        connection.connection.dbapi_connection.execute(f"BEGIN {mode}")


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def create_store_engine(url: str) -> Engine:
    """A shared engine for `url`: one per URL per process, so a Memori per request is cheap."""
    with _engines_lock:
        engine = _engines.get(url)
        if engine is not None:
            return engine
        parsed = make_url(url)
        kwargs: dict[str, Any] = {}
        synchronous = "normal"
        if parsed.get_backend_name() == "sqlite":
            option = parsed.query.get(SYNCHRONOUS_OPTION, "normal")
            synchronous = str(option).lower()
            if synchronous not in SYNCHRONOUS_LEVELS:
                raise ConfigurationError(
                    f"{SYNCHRONOUS_OPTION}={option!r} in {url!r}: use one of "
                    f"{', '.join(SYNCHRONOUS_LEVELS)}"
                )
            parsed = parsed.difference_update_query([SYNCHRONOUS_OPTION])
            database = parsed.database or ""
            if database in {"", ":memory:"}:
                # One in-memory database shared by every connection of this process.
                kwargs["poolclass"] = StaticPool
                kwargs["connect_args"] = {"check_same_thread": False}
            else:
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
                kwargs["connect_args"] = {
                    "check_same_thread": False,
                    "timeout": BUSY_TIMEOUT_MS / 1000,
                }
                kwargs["pool_size"] = 8
                kwargs["max_overflow"] = 16
        else:
            kwargs["pool_pre_ping"] = True
        try:
            engine = create_engine(parsed, **kwargs)
        except (ArgumentError, ImportError) as e:
            raise ConfigurationError(f"cannot open database {url!r}: {e}") from e
        if parsed.get_backend_name() == "sqlite":
            _configure_sqlite(engine, synchronous)
        _engines[url] = engine
        return engine


def dispose_engines() -> None:
    """Close every shared engine (tests and interpreter shutdown)."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
