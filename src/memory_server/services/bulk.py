"""The bulk write path: many memories with caller-chosen ids, embedded and stored in batches.

Used by imports and the Slack sync. Each batch is one embedder call, one vector upsert
and one SQL transaction, instead of one of each per memory. Ids are stable (an import
keeps its ids, the Slack sync derives them from message ids), so running the same batch
twice changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from memory_server.errors import InvalidInput, MemoryServerError, Unavailable
from memory_server.identity import validate_memory_id
from memory_server.metrics import MEMORIES_ADDED
from memory_server.services.base import Actor, Caller, ServiceBase, chunks, content_hash
from memory_server.storage.mem0_pool import UserMemory, mem0_payload
from memory_server.storage.models import Memory, MemoryState, MemoryStatusHistory, new_id

log = logging.getLogger(__name__)

BATCH_SIZE = 256


@dataclass(frozen=True)
class BulkItem:
    """One memory to write: a stable UUID, its text, and optional metadata and creation time."""

    memory_id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None


class BulkResult(BaseModel):
    """What happened to each id of a bulk write."""

    added: list[str] = Field(default_factory=list)
    updated: list[str] = Field(default_factory=list)
    unchanged: list[str] = Field(default_factory=list)
    skipped: dict[str, str] = Field(default_factory=dict, description="id -> why it was not written")

    def merge(self, other: BulkResult) -> None:
        self.added += other.added
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.skipped.update(other.skipped)


@dataclass
class _Plan:
    new: list[tuple[str, str, dict[str, Any], datetime]] = field(default_factory=list)
    changed: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)


class BulkWriter(ServiceBase):
    """Upserts batches of memories for one user."""

    def upsert_many(
        self, caller: Caller, items: Sequence[BulkItem], batch_size: int = BATCH_SIZE
    ) -> BulkResult:
        """Write ``items`` (new ids are added, changed texts updated, the rest left alone)."""
        actor = self._actor(caller)
        memory = self._memory(actor)
        result = BulkResult()
        for batch in chunks(list(items), batch_size):
            result.merge(self._upsert_batch(actor, memory, batch))
        return result

    def _upsert_batch(self, actor: Actor, memory: UserMemory, batch: list[BulkItem]) -> BulkResult:
        result = BulkResult()
        clean: dict[str, BulkItem] = {}
        for item in batch:
            try:
                memory_id = validate_memory_id(item.memory_id)
                text = self._clean_text(item.text)
                metadata = self._clean_metadata(item.metadata)
            except InvalidInput as exc:
                result.skipped[str(item.memory_id)] = exc.message
                continue
            clean[memory_id] = BulkItem(memory_id, text, metadata, item.created_at)  # last one of an id wins
        if not clean:
            return result

        plan = self._plan(actor, clean, result)
        if not plan.new and not plan.changed:
            return result
        try:
            self._write(actor, memory, plan)
        except IntegrityError as exc:
            if len(clean) == 1:
                # Another writer may have stored this text (or id) between our check and our
                # insert: look again. If nothing explains the rejection, it is a real failure.
                settled = BulkResult()
                replan = self._plan(actor, clean, settled)
                if replan.new or replan.changed:
                    log.error("bulk insert rejected: %s", str(exc.orig)[:200])
                    raise Unavailable("the database rejected the write; nothing was stored") from exc
                result.merge(settled)
                return result
            # Settle the race item by item; each one re-checks what is stored now.
            retry = BulkResult()
            for item in clean.values():
                retry.merge(self._upsert_batch(actor, memory, [item]))
            result.merge(retry)
            return result
        result.added += [memory_id for memory_id, *_ in plan.new]
        result.updated += [memory_id for memory_id, *_ in plan.changed]
        MEMORIES_ADDED.inc(len(plan.new))
        return result

    def _plan(self, actor: Actor, items: dict[str, BulkItem], result: BulkResult) -> _Plan:
        """Sort items into new, changed, unchanged and skipped, with two SQL reads."""
        plan = _Plan()
        digests = {memory_id: content_hash(item.text) for memory_id, item in items.items()}
        with self.db.session() as session:
            existing = {
                row.id: row
                for row in session.execute(
                    select(Memory.id, Memory.user_id, Memory.content_hash, Memory.state).where(
                        Memory.id.in_(list(items))
                    )
                ).all()
            }
            live_by_hash = {
                digest: memory_id
                for memory_id, digest in session.execute(
                    select(Memory.id, Memory.content_hash).where(
                        Memory.user_id == actor.user_pk,
                        Memory.content_hash.in_(set(digests.values())),
                        Memory.state != MemoryState.deleted.value,
                    )
                ).all()
            }
        now = self.clock()
        for memory_id, item in items.items():
            digest = digests[memory_id]
            row = existing.get(memory_id)
            if row is not None and row.user_id != actor.user_pk:
                result.skipped[memory_id] = "the id is already in use"
                continue
            if row is not None and row.state == MemoryState.deleted.value:
                result.skipped[memory_id] = "deleted"
                continue
            if row is not None and row.content_hash == digest:
                result.unchanged.append(memory_id)
                continue
            holder = live_by_hash.get(digest)
            if holder is not None and holder != memory_id:
                result.skipped[memory_id] = f"duplicate of {holder}"
                continue
            live_by_hash[digest] = memory_id  # a later item of this batch with the same text is a duplicate
            if row is None:
                plan.new.append((memory_id, item.text, item.metadata, item.created_at or now))
            else:
                plan.changed.append((memory_id, item.text, item.metadata))
        return plan

    def _write(self, actor: Actor, memory: UserMemory, plan: _Plan) -> None:
        """Embed once, upsert vectors once, then one SQL transaction; undo the vectors if SQL fails."""
        texts = [text for _, text, _, _ in plan.new] + [text for _, text, _ in plan.changed]
        try:
            vectors = self.pool.embedder.embed_batch(texts)
        except MemoryServerError:
            raise
        except Exception as exc:
            log.exception("batch embedding failed")
            raise Unavailable("the embedder is unavailable; nothing was stored") from exc
        now = self.clock()
        changed_ids = [memory_id for memory_id, _, _ in plan.changed]
        previous = memory.store.retrieve_many(changed_ids, with_vectors=True) if changed_ids else []
        payloads = [
            mem0_payload(actor.user_id, actor.app_pk, t, created, now) for _, t, _, created in plan.new
        ]
        old_created = {str(p.id): (p.payload or {}).get("created_at") for p in previous}
        for memory_id, text, _ in plan.changed:
            payload = mem0_payload(actor.user_id, actor.app_pk, text, now, now)
            payload["created_at"] = old_created.get(memory_id) or payload["created_at"]
            payloads.append(payload)
        ids = [memory_id for memory_id, *_ in plan.new] + changed_ids
        try:
            memory.store.insert(vectors=vectors, payloads=payloads, ids=ids)
        except Exception as exc:
            log.exception("batch vector write failed")
            raise Unavailable("the vector store is unavailable; nothing was stored") from exc
        try:
            with self.db.session() as session:
                if plan.new:
                    session.execute(
                        insert(Memory),
                        [
                            {
                                "id": memory_id,
                                "user_id": actor.user_pk,
                                "app_id": actor.app_pk,
                                "content": text,
                                "content_hash": content_hash(text),
                                "state": MemoryState.active.value,
                                "metadata_": metadata,
                                "created_at": created,
                                "updated_at": now,
                            }
                            for memory_id, text, metadata, created in plan.new
                        ],
                    )
                    session.execute(
                        insert(MemoryStatusHistory),
                        [
                            {
                                "id": new_id(),
                                "memory_id": memory_id,
                                "changed_by": actor.app_pk,
                                "old_state": None,
                                "new_state": MemoryState.active.value,
                                "changed_at": now,
                            }
                            for memory_id, *_ in plan.new
                        ],
                    )
                for memory_id, text, metadata in plan.changed:
                    session.execute(
                        update(Memory)
                        .where(Memory.id == memory_id, Memory.user_id == actor.user_pk)
                        .values(
                            content=text, content_hash=content_hash(text), metadata_=metadata, updated_at=now
                        )
                    )
        except BaseException:
            self._drop_vectors(memory, [memory_id for memory_id, *_ in plan.new])
            if previous:
                try:
                    memory.store.upsert_points(_as_points(previous))
                except Exception:
                    log.exception("could not restore %d updated vector(s)", len(previous))
            raise


def _as_points(records: list[Any]) -> list[Any]:
    from qdrant_client import models

    return [models.PointStruct(id=r.id, vector=r.vector, payload=r.payload) for r in records]
