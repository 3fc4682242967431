"""The memory service: every memory operation, whichever adapter (MCP, REST, CLI) calls it.

SQL holds the truth about a memory (owner, app, state, content); the user's Qdrant
collection holds its vector. Writes keep the two consistent: a vector written for a
failed SQL transaction is removed again, and deletes commit SQL first so that a vector
left behind by a failure is never visible (search only returns memories SQL calls
active).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from memory_server.errors import (
    ConfigurationError,
    Forbidden,
    InvalidInput,
    MemoryServerError,
    NotFound,
    PayloadTooLarge,
    Unavailable,
)
from memory_server.identity import validate_client_name, validate_memory_id, validate_user_id
from memory_server.metrics import MEMORIES_ADDED
from memory_server.schemas import AddResult, DeleteResult, Event, MemoryOut, MemoryPage, SearchResult
from memory_server.storage.database import Database
from memory_server.storage.mem0_pool import MemoryPool, UserMemory
from memory_server.storage.models import (
    App,
    Memory,
    MemoryAccessLog,
    MemoryState,
    MemoryStatusHistory,
    User,
    new_id,
    utcnow,
)

log = logging.getLogger(__name__)

MAX_SEARCH_LIMIT = 100
MAX_LIST_LIMIT = 500
MAX_DELETE_IDS = 10_000
MAX_METADATA_BYTES = 16_384
_MAX_SEARCH_FETCH = 1_000


@dataclass(frozen=True)
class Caller:
    """Who is calling: the user and the MCP client (app) acting for them."""

    user_id: str
    client_name: str

    def __post_init__(self) -> None:
        validate_user_id(self.user_id)
        validate_client_name(self.client_name)


@dataclass(frozen=True)
class _Actor:
    user_pk: str
    app_pk: str
    user_id: str
    app_name: str


@dataclass(frozen=True)
class Limits:
    """The knobs of the service, taken from settings."""

    max_memory_bytes: int = 32_768
    duplicate_threshold: float = 0.95
    search_min_score: float = 0.0


def content_hash(text: str) -> str:
    """The hash that identifies an exact duplicate."""
    return hashlib.sha256(text.encode()).hexdigest()


class MemoryService:
    """Add, search, list, get, update and delete memories, scoped to one user per call."""

    def __init__(
        self, db: Database, pool: MemoryPool, limits: Limits, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.db = db
        self.pool = pool
        self.limits = limits
        self.clock = clock

    @property
    def llm_enabled(self) -> bool:
        return self.pool.llm_enabled

    # ---------------------------------------------------------------- identity

    def _actor(self, caller: Caller) -> _Actor:
        """Resolve (creating on first use) the caller's user and app; refuse a paused app."""
        with self.db.session() as session:
            row = session.execute(
                select(User.id, App.id, App.is_active)
                .join(App, App.owner_id == User.id)
                .where(User.user_id == caller.user_id, App.name == caller.client_name)
            ).first()
        if row is None:
            row = self._create_actor(caller)
        user_pk, app_pk, is_active = row
        if not is_active:
            raise Forbidden(
                f"the app {caller.client_name!r} is paused for this user, so it cannot read or write "
                "memories; resume it to continue"
            )
        return _Actor(user_pk, app_pk, caller.user_id, caller.client_name)

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
    def _check_limit(value: Any, name: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"{name} must be an integer")
        if not low <= value <= high:
            raise InvalidInput(f"{name} must be between {low} and {high}, got {value}")
        return value

    # ---------------------------------------------------------------- helpers

    def _memory(self, actor: _Actor) -> UserMemory:
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
    def _out(row: Memory, app_name: str, score: float | None = None, event: Event | None = None) -> MemoryOut:
        return MemoryOut(
            id=row.id,
            text=row.content,
            app=app_name,
            state=row.state,
            metadata=row.metadata_ or {},
            created_at=row.created_at,
            updated_at=row.updated_at,
            score=score,
            event=event,
        )

    def _rows_with_app(
        self, session: Session, actor: _Actor, ids: Iterable[str], active_only: bool
    ) -> dict[str, tuple[Memory, str]]:
        query = (
            select(Memory, App.name)
            .join(App, App.id == Memory.app_id)
            .where(Memory.user_id == actor.user_pk, Memory.id.in_(list(ids)))
        )
        if active_only:
            query = query.where(Memory.state == MemoryState.active.value)
        else:
            query = query.where(Memory.state != MemoryState.deleted.value)
        return {row.id: (row, name) for row, name in session.execute(query).all()}

    def _log_access(
        self,
        session: Session,
        actor: _Actor,
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

    def _existing_live(self, session: Session, actor: _Actor, digest: str) -> tuple[Memory, str] | None:
        row = session.execute(
            select(Memory, App.name)
            .join(App, App.id == Memory.app_id)
            .where(
                Memory.user_id == actor.user_pk,
                Memory.content_hash == digest,
                Memory.state != MemoryState.deleted.value,
            )
        ).first()
        return (row[0], row[1]) if row else None

    def _near_duplicate(
        self, memory: UserMemory, actor: _Actor, text: str
    ) -> tuple[Memory, str, float] | None:
        vector = self.pool.embedder.embed(text)
        hits = memory.store.search(query=text, vectors=vector, top_k=5, filters={"user_id": actor.user_id})
        close = {
            str(h.id): float(h.score)
            for h in hits
            if h.score is not None and h.score >= self.limits.duplicate_threshold
        }
        if not close:
            return None
        with self.db.session() as session:
            rows = self._rows_with_app(session, actor, close, active_only=True)
        best = max(rows, key=lambda mid: close[mid], default=None)
        if best is None:
            return None
        row, app_name = rows[best]
        return row, app_name, close[best]

    # ---------------------------------------------------------------- operations

    def add(self, caller: Caller, text: Any, infer: bool | None = None, metadata: Any = None) -> AddResult:
        """Store ``text`` for the caller (with LLM fact extraction when ``infer``)."""
        actor = self._actor(caller)
        clean = self._clean_text(text)
        meta = self._clean_metadata(metadata)
        if infer is None:
            infer = self.llm_enabled
        if infer and not self.llm_enabled:
            raise InvalidInput(
                "infer=true needs an LLM, and none is configured (set OPENAI_API_KEY or LLM_BASE_URL); "
                "call again without infer to store the text as given"
            )
        if infer:
            return self._add_inferred(actor, clean, meta)
        return self._add_verbatim(actor, clean, meta)

    def _add_verbatim(self, actor: _Actor, text: str, meta: dict[str, Any]) -> AddResult:
        digest = content_hash(text)
        with self.db.session() as session:
            existing = self._existing_live(session, actor, digest)
        if existing is not None:
            return AddResult(
                results=[self._out(*existing, event="NONE")], message="this memory was already stored"
            )
        memory = self._memory(actor)
        try:
            near = self._near_duplicate(memory, actor, text)
        except MemoryServerError:
            raise
        except Exception as exc:
            log.exception("near-duplicate search failed")
            raise Unavailable("the vector store is unavailable; try again shortly") from exc
        if near is not None:
            row, app_name, score = near
            return AddResult(
                results=[self._out(row, app_name, score=score, event="NONE")],
                message="a nearly identical memory was already stored",
            )
        try:
            added = memory.add(text, user_id=actor.user_id, metadata={"app_id": actor.app_pk}, infer=False)
        except Exception as exc:
            log.exception("vector write failed")
            raise Unavailable("the vector store is unavailable; the memory was not stored") from exc
        return self._persist(actor, memory, [(r["id"], r["memory"]) for r in added["results"]], meta)

    def _add_inferred(self, actor: _Actor, text: str, meta: dict[str, Any]) -> AddResult:
        memory = self._memory(actor)
        try:
            added = memory.add(text, user_id=actor.user_id, metadata={"app_id": actor.app_pk}, infer=True)
        except Exception as exc:
            log.warning("LLM extraction failed: %s", type(exc).__name__)
            raise Unavailable(
                "the LLM could not extract memories from this text; nothing was stored"
            ) from exc
        facts = [(r["id"], r["memory"]) for r in added["results"] if r.get("event") == "ADD"]
        if not facts:
            return AddResult(results=[], message="the LLM found nothing new worth remembering in this text")
        return self._persist(
            actor,
            memory,
            facts,
            {**meta, "source_text": text[:2000]} if meta else {"source_text": text[:2000]},
        )

    def _persist(
        self, actor: _Actor, memory: UserMemory, items: list[tuple[str, str]], meta: dict[str, Any]
    ) -> AddResult:
        """Write SQL rows for vectors just stored; undo the vectors if SQL fails."""
        results: list[MemoryOut] = []
        stale_vectors: list[str] = []
        try:
            for memory_id, text in items:
                digest = content_hash(text)
                now = self.clock()
                row = Memory(
                    id=memory_id,
                    user_id=actor.user_pk,
                    app_id=actor.app_pk,
                    content=text,
                    content_hash=digest,
                    state=MemoryState.active.value,
                    metadata_=meta,
                    created_at=now,
                    updated_at=now,
                )
                try:
                    with self.db.session() as session:
                        session.add(row)
                        session.add(
                            MemoryStatusHistory(
                                memory_id=memory_id,
                                changed_by=actor.app_pk,
                                old_state=None,
                                new_state=MemoryState.active.value,
                                changed_at=now,
                            )
                        )
                except IntegrityError as exc:
                    # The same text was stored concurrently (or the LLM repeated a stored fact).
                    stale_vectors.append(memory_id)
                    with self.db.session() as session:
                        existing = self._existing_live(session, actor, digest)
                    if existing is None:
                        log.error("memory insert rejected: %s", str(exc.orig)[:200])
                        raise Unavailable("the database rejected the memory; nothing was stored") from exc
                    results.append(self._out(*existing, event="NONE"))
                    continue
                MEMORIES_ADDED.inc()
                results.append(self._out(row, actor.app_name, event="ADD"))
        except BaseException:
            done = {r.id for r in results}
            stale_vectors.extend(mid for mid, _ in items if mid not in done)
            raise
        finally:
            self._drop_vectors(memory, stale_vectors)
        added = sum(1 for r in results if r.event == "ADD")
        return AddResult(results=results, message=None if added else "this memory was already stored")

    def _drop_vectors(self, memory: UserMemory, ids: list[str]) -> None:
        if not ids:
            return
        try:
            memory.store.delete_many(ids)
        except Exception:
            # Harmless for readers (search only shows memories SQL knows as active);
            # `memory-server doctor --repair` removes such orphans.
            log.exception("could not remove %d orphan vector(s): %s", len(ids), ids)

    def search(self, caller: Caller, query: Any, limit: Any = 10) -> SearchResult:
        """The caller's active memories closest in meaning to ``query``, best first."""
        actor = self._actor(caller)
        clean = self._clean_text(query, "query")
        limit = self._check_limit(limit, "limit", 1, MAX_SEARCH_LIMIT)
        memory = self._memory(actor)
        fetch = min(limit * 2, _MAX_SEARCH_FETCH)
        while True:
            try:
                hits = memory.search(
                    clean,
                    filters={"user_id": actor.user_id},
                    top_k=fetch,
                    threshold=self.limits.search_min_score,
                )["results"]
            except Exception as exc:
                log.exception("vector search failed")
                raise Unavailable("the vector store is unavailable; try again shortly") from exc
            scores = {h["id"]: float(h["score"]) for h in hits}
            with self.db.session() as session:
                rows = self._rows_with_app(session, actor, scores, active_only=True)
                ranked = sorted(rows, key=lambda mid: scores[mid], reverse=True)[:limit]
                if len(ranked) >= limit or len(hits) < fetch or fetch >= _MAX_SEARCH_FETCH:
                    self._log_access(session, actor, ranked, "search", {"query": clean[:500]})
                    break
            fetch = min(fetch * 4, _MAX_SEARCH_FETCH)  # inactive memories crowded the top: look further
        return SearchResult(results=[self._out(*rows[mid], score=scores[mid]) for mid in ranked])

    def list_memories(self, caller: Caller, limit: Any = 50, offset: Any = 0) -> MemoryPage:
        """The caller's active memories, newest first."""
        actor = self._actor(caller)
        limit = self._check_limit(limit, "limit", 1, MAX_LIST_LIMIT)
        offset = self._check_limit(offset, "offset", 0, 10**9)
        live = (Memory.user_id == actor.user_pk, Memory.state == MemoryState.active.value)
        with self.db.session() as session:
            total = session.scalar(select(func.count()).select_from(Memory).where(*live)) or 0
            rows = session.execute(
                select(Memory, App.name)
                .join(App, App.id == Memory.app_id)
                .where(*live)
                .order_by(Memory.created_at.desc(), Memory.id.desc())
                .limit(limit)
                .offset(offset)
            ).all()
            self._log_access(session, actor, [r.id for r, _ in rows], "list", {})
        return MemoryPage(
            results=[self._out(r, name) for r, name in rows], total=total, limit=limit, offset=offset
        )

    def get(self, caller: Caller, memory_id: Any) -> MemoryOut:
        """One of the caller's memories (any state but deleted)."""
        actor = self._actor(caller)
        mid = validate_memory_id(memory_id)
        with self.db.session() as session:
            rows = self._rows_with_app(session, actor, [mid], active_only=False)
            if mid not in rows:
                raise NotFound(f"no memory with id {mid} for this user")
            self._log_access(session, actor, [mid], "get", {})
        return self._out(*rows[mid])

    def update(self, caller: Caller, memory_id: Any, text: Any) -> MemoryOut:
        """Replace a memory's text; its vector is re-embedded so search follows the new text."""
        actor = self._actor(caller)
        mid = validate_memory_id(memory_id)
        clean = self._clean_text(text)
        digest = content_hash(clean)
        with self.db.session() as session:
            rows = self._rows_with_app(session, actor, [mid], active_only=False)
            if mid not in rows:
                raise NotFound(f"no memory with id {mid} for this user")
            row, app_name = rows[mid]
            if row.content_hash == digest:
                return self._out(row, app_name)
            clash = self._existing_live(session, actor, digest)
        if clash is not None:
            raise InvalidInput(
                f"another memory ({clash[0].id}) already has exactly this text; delete one of them instead"
            )
        old_text = row.content
        memory = self._memory(actor)
        try:
            memory.update(mid, text=clean)
        except ValueError as exc:
            log.error("vector of memory %s is missing: %s", mid, exc)
            raise Unavailable("this memory's vector is missing; run `memory-server doctor --repair`") from exc
        except Exception as exc:
            log.exception("vector update failed")
            raise Unavailable("the vector store is unavailable; the memory was not changed") from exc
        try:
            with self.db.session() as session:
                now = self.clock()
                result = session.execute(
                    update(Memory)
                    .where(
                        Memory.id == mid,
                        Memory.user_id == actor.user_pk,
                        Memory.state != MemoryState.deleted.value,
                    )
                    .values(content=clean, content_hash=digest, updated_at=now)
                )
                if result.rowcount != 1:  # type: ignore[attr-defined]
                    raise NotFound(f"no memory with id {mid} for this user")
        except BaseException:
            try:
                memory.update(mid, text=old_text)
            except Exception:
                log.exception("could not restore the vector of memory %s", mid)
            raise
        row.content, row.content_hash, row.updated_at = clean, digest, now
        return self._out(row, app_name)

    def delete(self, caller: Caller, memory_ids: Any) -> DeleteResult:
        """Delete some of the caller's memories; ids that are not theirs are reported as not found."""
        actor = self._actor(caller)
        if isinstance(memory_ids, str) or not isinstance(memory_ids, list | tuple):
            raise InvalidInput("memory_ids must be a list of memory ids")
        if not memory_ids:
            raise InvalidInput("memory_ids is empty: give at least one memory id")
        if len(memory_ids) > MAX_DELETE_IDS:
            raise InvalidInput(f"at most {MAX_DELETE_IDS} ids per call, got {len(memory_ids)}")
        ids = list(dict.fromkeys(validate_memory_id(m) for m in memory_ids))
        with self.db.session() as session:
            found: list[str] = []
            for chunk in _chunks(ids, 500):
                found.extend(
                    session.scalars(
                        select(Memory.id).where(
                            Memory.user_id == actor.user_pk,
                            Memory.id.in_(chunk),
                            Memory.state != MemoryState.deleted.value,
                        )
                    )
                )
            self._mark_deleted(session, actor, found)
        missing = [m for m in ids if m not in set(found)]
        if not found:
            raise NotFound(f"no memory with id {missing[0]} for this user")
        self._drop_vectors(self._memory(actor), found)
        return DeleteResult(deleted=[m for m in ids if m in set(found)], not_found=missing)

    def delete_all(self, caller: Caller) -> DeleteResult:
        """Delete every memory of the caller (all apps)."""
        actor = self._actor(caller)
        with self.db.session() as session:
            found = list(
                session.scalars(
                    select(Memory.id).where(
                        Memory.user_id == actor.user_pk, Memory.state != MemoryState.deleted.value
                    )
                )
            )
            self._mark_deleted(session, actor, found)
        memory = self._memory(actor)
        for chunk in _chunks(found, 1000):
            self._drop_vectors(memory, chunk)
        return DeleteResult(deleted=found)

    def _mark_deleted(self, session: Session, actor: _Actor, ids: list[str]) -> None:
        if not ids:
            return
        now = self.clock()
        for chunk in _chunks(ids, 500):
            old_states = dict(
                session.execute(select(Memory.id, Memory.state).where(Memory.id.in_(chunk))).all()
            )
            session.execute(
                update(Memory)
                .where(Memory.id.in_(chunk), Memory.user_id == actor.user_pk)
                .values(state=MemoryState.deleted.value, deleted_at=now, updated_at=now)
            )
            session.execute(
                insert(MemoryStatusHistory),
                [
                    {
                        "id": new_id(),
                        "memory_id": mid,
                        "changed_by": actor.app_pk,
                        "old_state": old_states.get(mid),
                        "new_state": MemoryState.deleted.value,
                        "changed_at": now,
                    }
                    for mid in chunk
                ],
            )

    def count_by_state(self) -> dict[str, int]:
        """Memories per state across all users (for metrics)."""
        try:
            with self.db.session() as session:
                return {
                    state: n
                    for state, n in session.execute(select(Memory.state, func.count()).group_by(Memory.state))
                }
        except (Unavailable, OperationalError):
            return {}


def _chunks(items: Sequence[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
