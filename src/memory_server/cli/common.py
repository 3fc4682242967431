"""What the CLI's command groups share: settings from the environment, and failing clearly."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, NoReturn

import typer

from memory_server.config import Settings, load_settings
from memory_server.errors import ConfigurationError, MemoryServerError

if TYPE_CHECKING:
    from memory_server.storage.database import Database


def settings_or_fail(**overrides: object) -> Settings:
    """Settings from the environment and .env, with the non-None ``overrides``; a bad value
    ends the command with the message naming it."""
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ConfigurationError as exc:
        fail(str(exc))


def fail(message: str) -> NoReturn:
    """Print ``message`` to stderr and exit 2 (a usage or configuration error)."""
    typer.echo(f"memory-server: {message}", err=True)
    raise typer.Exit(2)


@contextlib.contextmanager
def migrated_database() -> Iterator[tuple[Settings, Database]]:
    """The settings and a migrated database, without the vector store (a server may hold
    it); a configuration or database error ends the command with its message."""
    from memory_server.storage.database import Database, make_engine
    from memory_server.storage.database import migrate as run_migrations

    settings = settings_or_fail()
    db = Database(make_engine(settings.resolved_database_url))
    try:
        run_migrations(db.engine)
        yield settings, db
    except (ConfigurationError, MemoryServerError) as exc:
        fail(str(exc))
    finally:
        db.dispose()
