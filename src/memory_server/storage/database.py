"""The SQL engine, sessions and migrations (SQLite by default, PostgreSQL in production)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from memory_server.config import REPO_ROOT
from memory_server.errors import ConfigurationError, Unavailable
from memory_server.events import EventBus, notify_in_transaction, take_pending
from memory_server.storage import schema

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # The driver must not open transactions itself: _begin_immediate does (see there).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


_READONLY = "memory_server_readonly"


def _begin_immediate(connection: Any) -> None:
    """Take SQLite's write lock when a transaction starts, not at its first write.

    Read-only sessions (``Database.session(readonly=True)``) begin deferred instead: in
    WAL mode they read a snapshot without waiting for, or blocking, any writer.

    A search reads, then writes its access log in the same transaction. With a deferred
    BEGIN, a transaction that read before another writer committed cannot upgrade to a
    writer: SQLite answers SQLITE_BUSY at once, without waiting (busy_timeout does not
    apply), and under 50 concurrent clients that surfaced as "database unavailable".
    BEGIN IMMEDIATE makes transactions queue on the lock instead (WAL readers are not
    blocked by it).
    """
    if connection.get_execution_options().get(_READONLY):
        connection.exec_driver_sql("BEGIN")
    else:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    """Build an engine with the settings each backend needs for concurrent use."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # As many pooled connections as request threads (anyio's 40): with the default 5
        # (+10 overflow), 50 clients kept opening and closing connections, each paying
        # for the connect and its pragmas (profiled).
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 10},
            pool_size=40,
            max_overflow=10,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _begin_immediate)
        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=20,
        pool_timeout=5,
        connect_args={"connect_timeout": 5},
    )


def alembic_config(url: str) -> Config:
    """The Alembic configuration of this repository, pointed at ``url``."""
    from alembic.config import Config

    ini = REPO_ROOT / "alembic.ini"
    if not ini.is_file():
        raise ConfigurationError(
            f"alembic.ini not found at {ini}: install memory-server from its source tree (pip install -e .)"
        )
    cfg = Config(str(ini))
    cfg.set_main_option("script_location", str(REPO_ROOT / "alembic"))
    cfg.attributes["url"] = url
    return cfg


# pg_advisory_xact_lock key held while migrating, so replicas starting together take turns.
MIGRATION_LOCK_KEY = 0x6D656D6F7279  # "memory"


def _is_current(engine: Engine, sqlite_lock: bool) -> bool:
    try:
        return schema.is_current(engine)
    except OperationalError as exc:
        # Another local process is migrating this SQLite file and holds its write lock
        # longer than the busy timeout: take our turn on the lock file, then upgrade
        # (which finds nothing left to do).
        if sqlite_lock and "locked" in str(exc.orig):
            return False
        raise


def migrate(engine: Engine) -> None:
    """Upgrade the database to the newest schema (``alembic upgrade head``).

    On PostgreSQL a transaction-scoped advisory lock serialises replicas that start at
    the same moment: the first migrates, the others wait and then find nothing to do.
    On SQLite a lock file beside the database does the same for local processes.
    A database already at the newest revision (most starts) is left alone without loading
    Alembic at all.
    """
    database = engine.url.database
    lock: AbstractContextManager[object] = nullcontext()
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        lock = FileLock(f"{Path(database).expanduser()}.migrate.lock", timeout=60)
    try:
        if _is_current(engine, sqlite_lock=not isinstance(lock, nullcontext)):
            return
        from alembic import command

        cfg = alembic_config(engine.url.render_as_string(hide_password=False))
        with lock, engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")
    except OperationalError as exc:
        raise Unavailable(f"cannot reach the database to migrate it: {_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    return str(getattr(exc, "orig", exc)).strip().splitlines()[0][:300]


class Database:
    """Engine plus session factory; one per process, passed to every service."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._readers = sessionmaker(engine.execution_options(**{_READONLY: True}), expire_on_commit=False)
        self.events = EventBus()

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def session(self, readonly: bool = False) -> Iterator[Session]:
        """A session in a transaction: committed on success, rolled back on error.

        ``readonly`` sessions must not write: on SQLite they do not take the write lock, so
        any number of them run beside a writer.

        Connection-level failures become ``Unavailable`` so callers answer 503 or a clear
        tool error instead of a traceback.
        """
        session = (self._readers if readonly else self._sessions)()
        try:
            yield session
            events = take_pending(session)
            if events and not self.is_sqlite:
                notify_in_transaction(session, events)  # delivered by every replica's listener
            session.commit()
            if events and self.is_sqlite:
                self.events.deliver(events)
        except OperationalError as exc:
            session.rollback()
            log.warning("database error: %s", _describe(exc))
            raise Unavailable("the database is unavailable; try again shortly") from exc
        except DBAPIError as exc:
            session.rollback()
            if isinstance(exc, IntegrityError):
                raise  # callers decide what a constraint violation means
            log.error("database rejected a statement: %s", _describe(exc))
            raise Unavailable("the database rejected the operation; nothing was changed") from exc
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def ping(self) -> None:
        """Raise if the database does not answer."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
