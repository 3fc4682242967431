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
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from memory_server.errors import Conflict, InvalidInput, MemoryServerError, NotFound, Unavailable
from memory_server.events import emit
from memory_server.identity import validate_memory_id
from memory_server.metrics import MEMORIES_ADDED
from memory_server.schemas import AddResult, DeleteResult, MemoryOut, MemoryPage, SearchResult
from memory_server.services.backup import BackupService
from memory_server.services.base import (
    MAX_DELETE_IDS,
    MAX_LIST_LIMIT,
    MAX_SEARCH_FETCH,
    MAX_SEARCH_LIMIT,
    Actor,
    Caller,
    Limits,
    ServiceBase,
    content_hash,
)
from memory_server.services.bulk import BulkItem, BulkResult, BulkWriter, OnExisting
from memory_server.services.filters import MemoryFilter
from memory_server.services.filters import order_by as _order_by
from memory_server.services.statements import chunks, insert_new_memories
from memory_server.storage.mem0_pool import UserMemory
from memory_server.storage.models import App, Memory, MemoryState, MemoryVersion

__all__ = ["Caller", "Limits", "MemoryService", "MAX_DELETE_IDS", "MAX_LIST_LIMIT", "MAX_SEARCH_LIMIT"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _NewFields:
    metadata: dict[str, Any]
    memory_type: str
    importance: float


class MemoryService(ServiceBase):
    """Add, search, list, get, update and delete memories, scoped to one user per call."""

    def add(
        self,
        caller: Caller,
        text: Any = None,
        infer: bool | None = None,
        metadata: Any = None,
        memory_type: Any = None,
        importance: Any = None,
        messages: Any = None,
    ) -> AddResult:
        """Store ``text`` (or chat ``messages``) for the caller, with LLM fact extraction when ``infer``."""
        actor = self._actor(caller)
        fields = _NewFields(
            metadata=self._clean_metadata(metadata),
            memory_type=self._clean_type(memory_type),
            importance=self._clean_importance(importance),
        )
        if (text is None) == (messages is None):
            raise InvalidInput("give either text or messages")
        chat = self._clean_messages(messages) if messages is not None else None
        if infer is None:
            infer = self.llm_enabled
        if infer and not self.llm_enabled:
            raise InvalidInput(
                "infer=true needs an LLM, and none is configured (set OPENAI_API_KEY or LLM_BASE_URL); "
                "call again without infer to store the text as given"
            )
        if infer:
            source = chat if chat is not None else self._clean_text(text)
            return self._add_inferred(actor, source, fields)
        if chat is None:
            return self._add_verbatim(actor, self._clean_text(text), fields)
        results: list[MemoryOut] = []
        for message in chat:
            if message["role"] != "system":
                results.extend(self._add_verbatim(actor, message["content"], fields).results)
        return AddResult(results=results)

    def _clean_messages(self, messages: Any) -> list[dict[str, str]]:
        if not isinstance(messages, list) or not messages:
            raise InvalidInput("messages must be a non-empty list of {role, content} objects")
        clean: list[dict[str, str]] = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ("user", "assistant", "system"):
                raise InvalidInput(f"messages[{i}] needs a role of user, assistant or system")
            clean.append(
                {
                    "role": message["role"],
                    "content": self._clean_text(message.get("content"), f"messages[{i}].content"),
                }
            )
        return clean

    def _add_verbatim(self, actor: Actor, text: str, fields: _NewFields) -> AddResult:
        digest = content_hash(text)
        with self.db.session(readonly=True) as session:
            existing = self._existing_live(session, actor, digest)
            if existing is not None:
                return AddResult(
                    results=self._outs(session, [existing], event="NONE"),
                    message="this memory was already stored",
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
            out = self._out(row, app_name, score=score, event="NONE")
            return AddResult(results=[out], message="a nearly identical memory was already stored")
        try:
            added = memory.add(text, user_id=actor.user_id, metadata={"app_id": actor.app_pk}, infer=False)
        except Exception as exc:
            log.exception("vector write failed")
            raise Unavailable("the vector store is unavailable; the memory was not stored") from exc
        return self._persist(actor, memory, [(r["id"], r["memory"]) for r in added["results"]], fields)

    def _add_inferred(
        self, actor: Actor, source: str | list[dict[str, str]], fields: _NewFields
    ) -> AddResult:
        memory = self._memory(actor)
        try:
            added = memory.add(source, user_id=actor.user_id, metadata={"app_id": actor.app_pk}, infer=True)
        except Exception as exc:
            log.warning("LLM extraction failed: %s", type(exc).__name__)
            raise Unavailable(
                "the LLM could not extract memories from this text; nothing was stored"
            ) from exc
        facts = [(r["id"], r["memory"]) for r in added["results"] if r.get("event") == "ADD"]
        if not facts:
            return AddResult(results=[], message="the LLM found nothing new worth remembering in this text")
        quoted = (
            source if isinstance(source, str) else "\n".join(f"{m['role']}: {m['content']}" for m in source)
        )
        fields = _NewFields(
            {**fields.metadata, "source_text": quoted[:2000]}, fields.memory_type, fields.importance
        )
        return self._persist(actor, memory, facts, fields)

    def _persist(
        self, actor: Actor, memory: UserMemory, items: list[tuple[str, str]], fields: _NewFields
    ) -> AddResult:
        """Write SQL rows for vectors just stored; undo the vectors if SQL fails."""
        results: list[MemoryOut] = []
        stale_vectors: list[str] = []
        try:
            for memory_id, text in items:
                digest = content_hash(text)
                now = self.clock()
                values = {
                    "id": memory_id,
                    "user_id": actor.user_pk,
                    "app_id": actor.app_pk,
                    "content": text,
                    "content_hash": digest,
                    "state": MemoryState.active.value,
                    "metadata_": fields.metadata,
                    "created_at": now,
                    "updated_at": now,
                    "memory_type": fields.memory_type,
                    "importance": fields.importance,
                    "access_count": 0,
                    "expires_at": self._expiry(fields.memory_type, now),
                }
                row = Memory(**values)  # for the result only: the rows go in through Core
                try:
                    with self.db.session() as session:
                        insert_new_memories(session, actor, [values], now)
                except IntegrityError as exc:
                    # The same text was stored concurrently (or the LLM repeated a stored fact).
                    stale_vectors.append(memory_id)
                    with self.db.session() as session:
                        existing = self._existing_live(session, actor, digest)
                        if existing is None:
                            log.error("memory insert rejected: %s", str(exc.orig)[:200])
                            raise Unavailable("the database rejected the memory; nothing was stored") from exc
                        results.extend(self._outs(session, [existing], event="NONE"))
                    continue
                MEMORIES_ADDED.inc()
                results.append(self._out(row, actor.app_name, event="ADD"))
        except BaseException:
            done = {r.id for r in results}
            stale_vectors.extend(mid for mid, _ in items if mid not in done)
            raise
        finally:
            self._drop_vectors(memory, stale_vectors)
        added = [r.id for r in results if r.event == "ADD"]
        if added:
            self.after_add(added)
        return AddResult(results=results, message=None if added else "this memory was already stored")

    def search(self, caller: Caller, query: Any, limit: Any = 10) -> SearchResult:
        """The caller's active memories closest in meaning to ``query``, best first."""
        actor = self._actor(caller)
        clean = self._clean_text(query, "query")
        limit = self._check_limit(limit, "limit", 1, MAX_SEARCH_LIMIT)
        memory = self._memory(actor)
        try:
            vector = self.pool.embedder.embed(clean)
        except MemoryServerError:
            raise
        except Exception as exc:
            log.exception("query embedding failed")
            raise Unavailable("the embedder is unavailable; try again shortly") from exc
        fetch = min(limit * 2, MAX_SEARCH_FETCH)
        while True:
            try:
                hits = memory.store.rank(clean, vector, top_k=fetch, min_score=self.limits.search_min_score)
            except Exception as exc:
                log.exception("vector search failed")
                raise Unavailable("the vector store is unavailable; try again shortly") from exc
            # The store's order is the ranking (hybrid); the score shown is the cosine similarity.
            scores = {h.id: h.score for h in hits}
            with self.db.session(readonly=True) as session:
                rows = self._read_rows(session, actor, scores, active_only=True)
                ranked = [h.id for h in hits if h.id in rows][:limit]
                if len(ranked) >= limit or len(hits) < fetch or fetch >= MAX_SEARCH_FETCH:
                    results = self._outs(session, [rows[mid] for mid in ranked], scores)
                    break
            fetch = min(fetch * 4, MAX_SEARCH_FETCH)  # inactive memories crowded the top: look further
        self._record_access(actor, ranked, "search", {"query": clean[:500]}, touch=True)
        return SearchResult(results=results)

    def related(self, caller: Caller, memory_id: Any, limit: Any = 10) -> SearchResult:
        """Active memories nearest to one memory (by its stored vector), best first."""
        actor = self._actor(caller)
        mid = validate_memory_id(memory_id)
        limit = self._check_limit(limit, "limit", 1, MAX_SEARCH_LIMIT)
        with self.db.session(readonly=True) as session:
            if mid not in self._rows_with_app(session, actor, [mid], active_only=False):
                raise NotFound(f"no memory with id {mid} for this user")
        memory = self._memory(actor)
        try:
            [point] = memory.store.retrieve_many([mid], with_vectors=True) or [None]
            if point is None:
                raise Unavailable("this memory's vector is missing; run `memory-server doctor --repair`")
            vector = point.vector if isinstance(point.vector, list) else point.vector.get("")
            hits = memory.store.search(query="", vectors=vector, top_k=limit * 2 + 1)
        except MemoryServerError:
            raise
        except Exception as exc:
            log.exception("related search failed")
            raise Unavailable("the vector store is unavailable; try again shortly") from exc
        scores = {str(h.id): float(h.score) for h in hits if str(h.id) != mid}
        with self.db.session(readonly=True) as session:
            rows = self._read_rows(session, actor, scores, active_only=True)
            ranked = sorted(rows, key=lambda m: scores[m], reverse=True)[:limit]
            results = self._outs(session, [rows[m] for m in ranked], scores)
        return SearchResult(results=results)

    def list_memories(
        self,
        caller: Caller,
        limit: Any = 50,
        offset: Any = 0,
        filters: MemoryFilter | None = None,
        sort: str = "-created",
        log_access: bool = True,
    ) -> MemoryPage:
        """The caller's memories matching ``filters`` (default: active ones), newest first."""
        actor = self._actor(caller)
        limit = self._check_limit(limit, "limit", 1, MAX_LIST_LIMIT)
        offset = self._check_limit(offset, "offset", 0, 10**9)
        conditions = (filters or MemoryFilter()).conditions(actor.user_pk)
        order = _order_by(sort)
        with self.db.session(readonly=True) as session:
            base = select(Memory.id).join(App, App.id == Memory.app_id).where(*conditions)
            total = session.scalar(select(func.count()).select_from(base.subquery())) or 0
            rows = session.execute(
                select(Memory, App.name)
                .join(App, App.id == Memory.app_id)
                .where(*conditions)
                .order_by(*order)
                .limit(limit)
                .offset(offset)
            ).all()
            results = self._outs(session, [(r, name) for r, name in rows])
        if log_access:
            self._record_access(actor, [r.id for r, _ in rows], "list", {}, touch=False)
        return MemoryPage(results=results, total=total, limit=limit, offset=offset)

    def get(self, caller: Caller, memory_id: Any) -> MemoryOut:
        """One of the caller's memories (any state but deleted)."""
        actor = self._actor(caller)
        mid = validate_memory_id(memory_id)
        with self.db.session() as session:
            rows = self._rows_with_app(session, actor, [mid], active_only=False)
            if mid not in rows:
                raise NotFound(f"no memory with id {mid} for this user")
            self._log_access(session, actor, [mid], "get", {})
            self._touch(session, [mid])
            # the bulk UPDATE in _touch also refreshes the loaded row (synchronize_session)
            [out] = self._outs(session, [rows[mid]])
        return out

    def update(
        self,
        caller: Caller,
        memory_id: Any,
        text: Any = None,
        metadata: Any = None,
        memory_type: Any = None,
        importance: Any = None,
    ) -> MemoryOut:
        """Change a memory; a new text is re-embedded so search follows it at once."""
        actor = self._actor(caller)
        mid = validate_memory_id(memory_id)
        if text is None and metadata is None and memory_type is None and importance is None:
            raise InvalidInput("nothing to update: give text, metadata, memory_type or importance")
        clean = self._clean_text(text) if text is not None else None
        values: dict[str, Any] = {}
        if metadata is not None:
            values["metadata_"] = self._clean_metadata(metadata)
        if memory_type is not None:
            values["memory_type"] = self._clean_type(memory_type)
        if importance is not None:
            values["importance"] = self._clean_importance(importance)
        with self.db.session() as session:
            rows = self._rows_with_app(session, actor, [mid], active_only=False)
            if mid not in rows:
                raise NotFound(f"no memory with id {mid} for this user")
            row, _app_name = rows[mid]
            clash = None
            if clean is not None and row.content_hash != content_hash(clean):
                clash = self._existing_live(session, actor, content_hash(clean))
            else:
                clean = None  # same text: nothing to re-embed
        if clash is not None:
            raise Conflict(
                f"another memory ({clash[0].id}) already has exactly this text; delete one of them instead"
            )
        if "memory_type" in values and values["memory_type"] != row.memory_type:
            values["expires_at"] = self._expiry(values["memory_type"], self.clock())
        memory = self._memory(actor) if clean is not None else None
        if memory is not None:
            try:
                memory.update(mid, text=clean)
            except ValueError as exc:
                log.error("vector of memory %s is missing: %s", mid, exc)
                raise Unavailable(
                    "this memory's vector is missing; run `memory-server doctor --repair`"
                ) from exc
            except Exception as exc:
                log.exception("vector update failed")
                raise Unavailable("the vector store is unavailable; the memory was not changed") from exc
        old_text = row.content
        try:
            with self.db.session() as session:
                now = self.clock()
                if clean is not None:
                    values.update(content=clean, content_hash=content_hash(clean))
                    version = session.scalar(
                        select(func.coalesce(func.max(MemoryVersion.version), 0)).where(
                            MemoryVersion.memory_id == mid
                        )
                    )
                    session.add(
                        MemoryVersion(
                            memory_id=mid,
                            version=(version or 0) + 1,
                            content=clean,
                            changed_by=actor.app_pk,
                            created_at=now,
                        )
                    )
                result = session.execute(
                    update(Memory)
                    .where(
                        Memory.id == mid,
                        Memory.user_id == actor.user_pk,
                        Memory.state != MemoryState.deleted.value,
                    )
                    .values(updated_at=now, **values)
                )
                if result.rowcount != 1:  # type: ignore[attr-defined]
                    raise NotFound(f"no memory with id {mid} for this user")
                emit(session, "update", actor.user_id, [mid], fields=sorted(k.rstrip("_") for k in values))
                updated = self._rows_with_app(session, actor, [mid], active_only=False)[mid]
                [out] = self._outs(session, [updated])
        except BaseException:
            if memory is not None:
                try:
                    memory.update(mid, text=old_text)
                except Exception:
                    log.exception("could not restore the vector of memory %s", mid)
            raise
        return out

    def _ids(self, memory_ids: Any) -> list[str]:
        if isinstance(memory_ids, str) or not isinstance(memory_ids, list | tuple):
            raise InvalidInput("memory_ids must be a list of memory ids")
        if not memory_ids:
            raise InvalidInput("memory_ids is empty: give at least one memory id")
        if len(memory_ids) > MAX_DELETE_IDS:
            raise InvalidInput(f"at most {MAX_DELETE_IDS} ids per call, got {len(memory_ids)}")
        return list(dict.fromkeys(validate_memory_id(m) for m in memory_ids))

    def delete(self, caller: Caller, memory_ids: Any) -> DeleteResult:
        """Delete some of the caller's memories; ids that are not theirs are reported as not found."""
        actor = self._actor(caller)
        ids = self._ids(memory_ids)
        with self.db.session() as session:
            found = set(self._set_state(session, actor, ids, MemoryState.deleted))
        missing = [m for m in ids if m not in found]
        if not found:
            raise NotFound(f"no memory with id {missing[0]} for this user")
        self._drop_vectors(self._memory(actor), list(found))
        return DeleteResult(deleted=[m for m in ids if m in found], not_found=missing)

    def delete_all(self, caller: Caller) -> DeleteResult:
        """Delete every memory of the caller (all apps)."""
        actor = self._actor(caller)
        with self.db.session() as session:
            live = list(
                session.scalars(
                    select(Memory.id).where(
                        Memory.user_id == actor.user_pk, Memory.state != MemoryState.deleted.value
                    )
                )
            )
            found = self._set_state(session, actor, live, MemoryState.deleted)
        memory = self._memory(actor)
        for chunk in chunks(found, 1000):
            self._drop_vectors(memory, chunk)
        return DeleteResult(deleted=found)

    @property
    def backups(self) -> BackupService:
        """Export and import of a user's memories (see ``services.backup``)."""
        return BackupService(
            self.db, self.pool, self.limits, self.clock, access=self.access, actors=self.actors
        )

    def upsert_many(
        self, caller: Caller, items: Sequence[BulkItem], on_existing: OnExisting = "update"
    ) -> BulkResult:
        """Write many memories with stable ids in batches (see ``services.bulk``)."""
        writer = BulkWriter(self.db, self.pool, self.limits, self.clock)
        return writer.upsert_many(caller, items, on_existing=on_existing)

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
