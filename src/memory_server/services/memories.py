"""The memory service: every memory operation, whichever adapter (MCP, REST, CLI) calls it.

SQL holds the truth about a memory (owner, app, state, content); the user's Qdrant
collection holds its vector. Writes keep the two consistent: a vector written for a
failed SQL transaction is removed again, and deletes commit SQL first so that a vector
left behind by a failure is never visible (search only returns memories SQL calls
active).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from memory_server.errors import InvalidInput, MemoryServerError, NotFound, Unavailable
from memory_server.identity import validate_memory_id
from memory_server.metrics import MEMORIES_ADDED
from memory_server.schemas import AddResult, DeleteResult, MemoryOut, MemoryPage, SearchResult
from memory_server.services.base import (
    MAX_DELETE_IDS,
    MAX_LIST_LIMIT,
    MAX_SEARCH_FETCH,
    MAX_SEARCH_LIMIT,
    Actor,
    Caller,
    Limits,
    ServiceBase,
    chunks,
    content_hash,
)
from memory_server.services.bulk import BulkItem, BulkResult, BulkWriter
from memory_server.storage.mem0_pool import UserMemory
from memory_server.storage.models import App, Memory, MemoryState, MemoryStatusHistory, new_id

__all__ = ["Caller", "Limits", "MemoryService", "MAX_DELETE_IDS", "MAX_LIST_LIMIT", "MAX_SEARCH_LIMIT"]

log = logging.getLogger(__name__)


class MemoryService(ServiceBase):
    """Add, search, list, get, update and delete memories, scoped to one user per call."""

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

    def _add_verbatim(self, actor: Actor, text: str, meta: dict[str, Any]) -> AddResult:
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

    def _add_inferred(self, actor: Actor, text: str, meta: dict[str, Any]) -> AddResult:
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
        self, actor: Actor, memory: UserMemory, items: list[tuple[str, str]], meta: dict[str, Any]
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

    def search(self, caller: Caller, query: Any, limit: Any = 10) -> SearchResult:
        """The caller's active memories closest in meaning to ``query``, best first."""
        actor = self._actor(caller)
        clean = self._clean_text(query, "query")
        limit = self._check_limit(limit, "limit", 1, MAX_SEARCH_LIMIT)
        memory = self._memory(actor)
        fetch = min(limit * 2, MAX_SEARCH_FETCH)
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
                if len(ranked) >= limit or len(hits) < fetch or fetch >= MAX_SEARCH_FETCH:
                    self._log_access(session, actor, ranked, "search", {"query": clean[:500]})
                    break
            fetch = min(fetch * 4, MAX_SEARCH_FETCH)  # inactive memories crowded the top: look further
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
            for chunk in chunks(ids, 500):
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
        for chunk in chunks(found, 1000):
            self._drop_vectors(memory, chunk)
        return DeleteResult(deleted=found)

    def _mark_deleted(self, session: Session, actor: Actor, ids: list[str]) -> None:
        if not ids:
            return
        now = self.clock()
        for chunk in chunks(ids, 500):
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

    def upsert_many(self, caller: Caller, items: Sequence[BulkItem]) -> BulkResult:
        """Write many memories with stable ids in batches (see ``services.bulk``)."""
        return BulkWriter(self.db, self.pool, self.limits, self.clock).upsert_many(caller, items)

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
