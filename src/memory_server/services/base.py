"""What every service shares: the caller's identity, input validation, and store access.

The services (memories, bulk writes, ...) all derive from ``ServiceBase`` so that one
rule (who the caller is, what text is acceptable, how a row becomes a result) lives in
one place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cachetools import TTLCache
from sqlalchemy import Row, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from memory_server.errors import (
    ConfigurationError,
    Forbidden,
    InvalidInput,
    MemoryServerError,
    PayloadTooLarge,
    Unavailable,
)
from memory_server.events import emit
from memory_server.identity import validate_client_name, validate_user_id
from memory_server.schemas import Event, MemoryOut
from memory_server.services.access import AccessRecorder, synchronous
from memory_server.services.statements import LIVE_BY_HASH, MOST_IDS, by_ids, chunks
from memory_server.storage.database import Database
from memory_server.storage.mem0_pool import MemoryPool, UserMemory
from memory_server.storage.models import (
    App,
    Memory,
    MemoryAccessLog,
    MemoryState,
    MemoryStatusHistory,
    MemoryType,
    User,
    new_id,
    utcnow,
)

log = logging.getLogger(__name__)

MAX_SEARCH_LIMIT = 100
MAX_LIST_LIMIT = 500
MAX_DELETE_IDS = 10_000
MAX_METADATA_BYTES = 16_384
MAX_SEARCH_FETCH = 1_000


@dataclass(frozen=True)
class Caller:
    """Who is calling: the user and the MCP client (app) acting for them."""

    user_id: str
    client_name: str
    # MCP clients are refused while their app is paused; the user's own REST and CLI
    # calls, which name an app only to attribute new memories, are not.
    enforce_app_state: bool = True

    def __post_init__(self) -> None:
        validate_user_id(self.user_id)
        validate_client_name(self.client_name)


@dataclass(frozen=True)
class Actor:
    user_pk: str
    app_pk: str
    user_id: str
    app_name: str


class ActorCache:
    """(user id, app name) -> (user pk, app pk, app active), shared by a runtime's services.

    Users and apps are never deleted and their keys never change, so only ``is_active`` can
    go stale: an entry lives ``ttl`` seconds, and pausing or resuming an app through this
    process drops its entry at once (another replica notices within ``ttl``). This saves a
    query on every call.
    """

    def __init__(self, ttl: float = 2.0, size: int = 10_000) -> None:
        self.ttl = ttl
        self._items: TTLCache[tuple[str, str], tuple[str, str, bool]] = TTLCache(size, ttl)
        self._lock = threading.Lock()  # cachetools caches are not thread-safe

    def get(self, key: tuple[str, str]) -> tuple[str, str, bool] | None:
        with self._lock:
            return self._items.get(key)

    def put(self, key: tuple[str, str], value: tuple[str, str, bool]) -> tuple[str, str, bool]:
        with self._lock:
            self._items[key] = value
        return value

    def forget_user(self, user_id: str) -> None:
        with self._lock:
            for key in [k for k in self._items if k[0] == user_id]:
                self._items.pop(key, None)


@dataclass(frozen=True)
class Limits:
    """The knobs of the service, taken from settings."""

    max_memory_bytes: int = 32_768
    duplicate_threshold: float = 0.95
    search_min_score: float = 0.0
    short_term_ttl: timedelta = timedelta(days=7)


def content_hash(text: str) -> str:
    """The hash that identifies an exact duplicate."""
    return hashlib.sha256(text.encode()).hexdigest()


class ServiceBase:
    """Shared state and helpers of the services; each call is scoped to one user."""

    def __init__(
        self,
        db: Database,
        pool: MemoryPool,
        limits: Limits,
        clock: Callable[[], datetime] = utcnow,
        after_add: Callable[[list[str]], None] | None = None,
        access: AccessRecorder | None = None,
        actors: ActorCache | None = None,
    ) -> None:
        self.db = db
        # Shared by the services of one runtime (see runtime.py).
        self.access = access or synchronous(db)
        self.actors = actors or ActorCache()
        self.pool = pool
        self.limits = limits
        self.clock = clock
        # Called with the ids of new memories once they are committed (categorisation).
        self.after_add = after_add or (lambda _ids: None)

    @property
    def llm_enabled(self) -> bool:
        return self.pool.llm_enabled

    # ---------------------------------------------------------------- identity

    def _actor(self, caller: Caller) -> Actor:
        """Resolve (creating on first use) the caller's user and app; refuse a paused app."""
        key = (caller.user_id, caller.client_name)
        row = self.actors.get(key)
        if row is None:
            with self.db.session(readonly=True) as session:
                row = session.execute(
                    select(User.id, App.id, App.is_active)
                    .join(App, App.owner_id == User.id)
                    .where(User.user_id == caller.user_id, App.name == caller.client_name)
                ).first()
            if row is None:
                row = self._create_actor(caller)
            row = self.actors.put(key, (row[0], row[1], bool(row[2])))
        user_pk, app_pk, is_active = row
        if not is_active and caller.enforce_app_state:
            raise Forbidden(
                f"the app {caller.client_name!r} is paused for this user, so it cannot read or write "
                "memories; resume it to continue"
            )
        return Actor(user_pk, app_pk, caller.user_id, caller.client_name)

    def _create_actor(self, caller: Caller) -> Any:
        for _attempt in range(3):
            try:
                with self.db.session() as session:
                    user_pk = session.scalar(select(User.id).where(User.user_id == caller.user_id))
                    if user_pk is None:
                        user = User(user_id=caller.user_id)
                        session.add(user)
                        session.flush()
                        user_pk = user.id
                    app = session.scalar(
                        select(App).where(App.owner_id == user_pk, App.name == caller.client_name)
                    )
                    if app is None:
                        app = App(owner_id=user_pk, name=caller.client_name)
                        session.add(app)
                        session.flush()
                    return (user_pk, app.id, app.is_active)
            except IntegrityError:
                continue  # another request created it at the same moment; read it back
        raise Unavailable("could not register the user and app; try again")

    # ---------------------------------------------------------------- validation

    def _clean_text(self, text: Any, what: str = "text") -> str:
        if not isinstance(text, str):
            raise InvalidInput(f"{what} must be a string")
        if "\x00" in text:
            raise InvalidInput(f"{what} must not contain NUL characters")
        stripped = text.strip()
        if not stripped:
            raise InvalidInput(f"{what} is empty: give the text to remember")
        size = len(stripped.encode())
        if size > self.limits.max_memory_bytes:
            raise PayloadTooLarge(
                f"{what} is {size} bytes; the limit is {self.limits.max_memory_bytes} bytes. "
                "Split it into smaller memories."
            )
        return stripped

    @staticmethod
    def _clean_metadata(metadata: Any) -> dict[str, Any]:
        if metadata is None:
            return {}
        if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
            raise InvalidInput("metadata must be a JSON object with string keys")
        try:
            encoded = json.dumps(metadata, allow_nan=False)
        except (TypeError, ValueError):
            raise InvalidInput(
                "metadata must contain only JSON values (strings, numbers, booleans, null, lists, objects)"
            ) from None
        if "\\u0000" in encoded:
            raise InvalidInput("metadata must not contain NUL characters")
        if len(encoded.encode()) > MAX_METADATA_BYTES:
            raise PayloadTooLarge(f"metadata is over {MAX_METADATA_BYTES} bytes")
        return dict(json.loads(encoded))

    @staticmethod
    def _clean_type(value: Any) -> str:
        if value is None:
            return MemoryType.long_term.value
        try:
            return MemoryType(value).value
        except ValueError:
            names = ", ".join(t.value for t in MemoryType)
            raise InvalidInput(f"memory_type {str(value)[:40]!r} is not one of: {names}") from None

    @staticmethod
    def _clean_importance(value: Any) -> float:
        if value is None:
            return 0.5
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise InvalidInput(f"importance must be a number from 0 to 1, got {str(value)[:40]}")
        return float(value)

    def _expiry(self, memory_type: str, now: datetime) -> datetime | None:
        return now + self.limits.short_term_ttl if memory_type == MemoryType.short_term.value else None

    def _set_state(self, session: Session, actor: Actor, ids: list[str], new_state: MemoryState) -> list[str]:
        """Move the caller's memories (never deleted ones) to ``new_state``, with history rows.

        Returns the ids that changed; ids already in that state are left alone.
        """
        changed: list[str] = []
        now = self.clock()
        for chunk in chunks(ids, 500):
            old_states = dict(
                session.execute(
                    select(Memory.id, Memory.state).where(
                        Memory.id.in_(chunk),
                        Memory.user_id == actor.user_pk,
                        Memory.state != MemoryState.deleted.value,
                        Memory.state != new_state.value,
                    )
                ).all()
            )
            if not old_states:
                continue
            values: dict[str, Any] = {"state": new_state.value, "updated_at": now}
            if new_state is MemoryState.deleted:
                values["deleted_at"] = now
            elif new_state is MemoryState.archived:
                values["archived_at"] = now
            elif new_state is MemoryState.active:
                values["archived_at"] = None
            session.execute(update(Memory).where(Memory.id.in_(list(old_states))).values(**values))
            session.execute(
                insert(MemoryStatusHistory),
                [
                    {
                        "id": new_id(),
                        "memory_id": mid,
                        "changed_by": actor.app_pk,
                        "old_state": old,
                        "new_state": new_state.value,
                        "changed_at": now,
                    }
                    for mid, old in old_states.items()
                ],
            )
            changed.extend(old_states)
        if changed:
            kind = "delete" if new_state is MemoryState.deleted else "state"
            emit(session, kind, actor.user_id, changed, state=new_state.value)
        return changed

    @staticmethod
    def _check_limit(value: Any, name: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"{name} must be an integer")
        if not low <= value <= high:
            raise InvalidInput(f"{name} must be between {low} and {high}, got {value}")
        return value

    # ---------------------------------------------------------------- helpers

    def _memory(self, actor: Actor) -> UserMemory:
        try:
            return self.pool.get(actor.user_id)
        except MemoryServerError:
            raise
        except ConfigurationError as exc:
            raise Unavailable(str(exc)) from exc
        except Exception as exc:
            log.exception("vector store unavailable")
            raise Unavailable("the vector store is unavailable; try again shortly") from exc

    @staticmethod
    def _out(
        row: Memory | Row[Any],
        app_name: str,
        score: float | None = None,
        event: Event | None = None,
        categories: list[str] | None = None,
    ) -> MemoryOut:
        return MemoryOut(
            id=row.id,
            text=row.content,
            app=app_name,
            state=row.state,
            memory_type=row.memory_type,
            importance=row.importance,
            categories=categories or [],
            metadata=row.metadata_ or {},
            created_at=row.created_at,
            updated_at=row.updated_at,
            access_count=row.access_count,
            last_accessed_at=row.last_accessed_at,
            expires_at=row.expires_at,
            archived_at=row.archived_at,
            score=score,
            event=event,
        )

    @staticmethod
    def _categories_for(session: Session, ids: Iterable[str]) -> dict[str, list[str]]:
        """Category names of each memory, in one query."""
        found: dict[str, list[str]] = {}
        id_list = list(ids)
        for chunk in chunks(id_list, MOST_IDS):
            for memory_id, name in session.execute(*by_ids("categories", chunk)):
                found.setdefault(memory_id, []).append(name)
        return found

    def _outs(
        self,
        session: Session,
        rows: Sequence[tuple[Memory | Row[Any], str]],
        scores: dict[str, float] | None = None,
        event: Event | None = None,
    ) -> list[MemoryOut]:
        """Results for ``rows`` (memory, app name), with their categories."""
        categories = self._categories_for(session, [row.id for row, _ in rows])
        return [
            self._out(
                row, app, score=(scores or {}).get(row.id), categories=categories.get(row.id), event=event
            )
            for row, app in rows
        ]

    def _touch(self, session: Session, ids: Sequence[str]) -> None:
        """Count a use of each memory (search hits and gets), for promotion and archiving."""
        if ids:
            session.execute(
                update(Memory)
                .where(Memory.id.in_(list(ids)))
                .values(access_count=Memory.access_count + 1, last_accessed_at=self.clock())
            )

    def _rows_with_app(
        self, session: Session, actor: Actor, ids: Iterable[str], active_only: bool
    ) -> dict[str, tuple[Memory, str]]:
        # Look the ids up by primary key only, and check owner and state here: given
        # `user_id = ?` too, SQLite walks the user's index instead, which at 100k memories
        # of one user made this the slowest step of a search (70% of it, profiled).
        query = select(Memory, App.name).join(App, App.id == Memory.app_id).where(Memory.id.in_(list(ids)))
        found: dict[str, tuple[Memory, str]] = {}
        for row, name in session.execute(query).all():
            if _visible(row, actor, active_only):
                found[row.id] = (row, name)
        return found

    def _read_rows(
        self, session: Session, actor: Actor, ids: Iterable[str], active_only: bool
    ) -> dict[str, tuple[Row[Any], str]]:
        """``_rows_with_app`` for reading only: plain rows with the columns a result shows.

        Searches use this. ORM objects and the per-call expansion of ``IN (...)`` cost more
        than SQLite's own work here: 1.0-1.4 ms against 0.6 for the 20 candidates of a
        search (docs/benchmarks.md, fourth pass).
        """
        found: dict[str, tuple[Row[Any], str]] = {}
        for chunk in chunks(list(ids), MOST_IDS):
            for row in session.execute(*by_ids("memories", chunk)):
                if _visible(row, actor, active_only):
                    found[row.id] = (row, row.app_name)
        return found

    def _record_access(
        self, actor: Actor, memory_ids: Sequence[str], access_type: str, meta: dict[str, Any], touch: bool
    ) -> None:
        """Log reads (and with ``touch`` count a use of each) behind the request (access.py)."""
        self.access.record(actor.app_pk, memory_ids, access_type, meta, self.clock(), touch)

    def _log_access(
        self,
        session: Session,
        actor: Actor,
        memory_ids: Sequence[str],
        access_type: str,
        meta: dict[str, Any],
    ) -> None:
        if not memory_ids:
            return
        now = self.clock()
        session.execute(
            insert(MemoryAccessLog),
            [
                {
                    "id": new_id(),
                    "memory_id": mid,
                    "app_id": actor.app_pk,
                    "access_type": access_type,
                    "accessed_at": now,
                    "metadata_": meta,
                }
                for mid in memory_ids
            ],
        )

    def _existing_live(self, session: Session, actor: Actor, digest: str) -> tuple[Memory, str] | None:
        # Nearly every add is of a new text: a plain probe (Core, compiled once) answers
        # that in ~0.1 ms where the ORM query took ~0.9 ms; a hit loads its row by id.
        probe = {"user": actor.user_pk, "digest": digest}
        found = session.connection().execute(LIVE_BY_HASH, probe).scalar()
        if found is None:
            return None
        row = session.execute(
            select(Memory, App.name).join(App, App.id == Memory.app_id).where(Memory.id == found)
        ).first()
        return (row[0], row[1]) if row else None

    def _near_duplicate(
        self, memory: UserMemory, actor: Actor, text: str
    ) -> tuple[Row[Any], str, float] | None:
        vector = self.pool.embedder.embed(text)
        hits = memory.store.search(query=text, vectors=vector, top_k=5, filters={"user_id": actor.user_id})
        close = {
            str(h.id): float(h.score)
            for h in hits
            if h.score is not None and h.score >= self.limits.duplicate_threshold
        }
        if not close:
            return None
        with self.db.session(readonly=True) as session:
            rows = self._read_rows(session, actor, close, active_only=True)
        best = max(rows, key=lambda mid: close[mid], default=None)
        if best is None:
            return None
        row, app_name = rows[best]
        return row, app_name, close[best]

    def _drop_vectors(self, memory: UserMemory, ids: list[str]) -> None:
        if not ids:
            return
        try:
            memory.store.delete_many(ids)
        except Exception:
            # Harmless for readers (search only shows memories SQL knows as active);
            # `memory-server doctor --repair` removes such orphans.
            log.exception("could not remove %d orphan vector(s): %s", len(ids), ids)


def _visible(row: Memory | Row[Any], actor: Actor, active_only: bool) -> bool:
    """The caller's own, not deleted (and with ``active_only``, active) memory."""
    if row.user_id != actor.user_pk or row.state == MemoryState.deleted.value:
        return False
    return not active_only or row.state == MemoryState.active.value
