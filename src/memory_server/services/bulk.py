"""The bulk write path: many memories with caller-chosen ids, embedded and stored in batches.

Used by imports and the Slack sync. Each batch is one embedder call, one vector upsert
and one SQL transaction, instead of one of each per memory. Ids are stable (an import
keeps its ids, the Slack sync derives them from message ids), so running the same batch
twice changes nothing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, func, insert, select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from memory_server.errors import InvalidInput, MemoryServerError, Unavailable
from memory_server.events import emit
from memory_server.identity import validate_client_name, validate_memory_id
from memory_server.metrics import MEMORIES_ADDED
from memory_server.services.base import Actor, Caller, ServiceBase, content_hash
from memory_server.services.bulk_items import (
    BATCH_SIZE,
    WRITABLE_STATES,
    BulkItem,
    BulkResult,
    OnExisting,
    _Change,
    _clean_categories,
    _Item,
    _Plan,
    _utc,
    category_id,
)
from memory_server.services.statements import chunks, insert_new_memories
from memory_server.storage.mem0_pool import UserMemory, mem0_payload
from memory_server.storage.models import (
    App,
    Category,
    Memory,
    MemoryCategory,
    MemoryState,
    MemoryStatusHistory,
    MemoryType,
    MemoryVersion,
    new_id,
)

log = logging.getLogger(__name__)

# The item shapes live in bulk_items; re-exported here, where callers look for them.
__all__ = ["BATCH_SIZE", "BulkItem", "BulkResult", "BulkWriter", "OnExisting", "category_id", "point_vector"]


class BulkWriter(ServiceBase):
    """Upserts batches of memories for one user."""

    def upsert_many(
        self,
        caller: Caller,
        items: Sequence[BulkItem],
        batch_size: int = BATCH_SIZE,
        on_existing: OnExisting = "update",
    ) -> BulkResult:
        """Write ``items``: new ids are added; stored ids are treated as ``on_existing`` says."""
        if on_existing not in ("update", "skip", "overwrite"):
            raise InvalidInput(f"on_existing must be update, skip or overwrite, not {on_existing!r}")
        actor = self._actor(caller)
        memory = self._memory(actor)
        result = BulkResult()
        for batch in chunks(list(items), batch_size):
            result.merge(self._upsert_batch(actor, memory, batch, on_existing))
        return result

    def _upsert_batch(
        self, actor: Actor, memory: UserMemory, batch: list[BulkItem], on_existing: OnExisting
    ) -> BulkResult:
        result = BulkResult()
        clean: dict[str, _Item] = {}
        for bulk_item in batch:
            try:
                item = self._clean_item(bulk_item)
            except InvalidInput as exc:
                result.skipped[str(bulk_item.memory_id)] = exc.message
                continue
            clean[item.memory_id] = item  # the last one of an id wins
        if not clean:
            return result

        apps = self._app_ids(actor, {item.app for item in clean.values() if item.app is not None})
        plan = self._plan(actor, clean, apps, result, on_existing)
        if not plan.new and not plan.changed:
            return result
        try:
            self._write(actor, memory, plan)
        except IntegrityError as exc:
            if len(clean) == 1:
                # Another writer may have stored this text (or id) between our check and our
                # insert: look again. If nothing explains the rejection, it is a real failure.
                settled = BulkResult()
                replan = self._plan(actor, clean, apps, settled, on_existing)
                if replan.new or replan.changed:
                    log.error("bulk insert rejected: %s", str(exc.orig)[:200])
                    raise Unavailable("the database rejected the write; nothing was stored") from exc
                result.merge(settled)
                return result
            # Settle the race item by item; each one re-checks what is stored now.
            retry = BulkResult()
            for item in clean.values():
                retry.merge(self._upsert_batch(actor, memory, [item.source], on_existing))
            result.merge(retry)
            return result
        result.added += [item.memory_id for item, _ in plan.new]
        result.updated += [change.item.memory_id for change in plan.changed]
        MEMORIES_ADDED.inc(len(plan.new))
        return result

    # ---------------------------------------------------------------- validation

    def _clean_item(self, item: BulkItem) -> _Item:
        memory_id = validate_memory_id(item.memory_id)
        text = self._clean_text(item.text)
        if item.state is not None and item.state not in WRITABLE_STATES:
            raise InvalidInput(
                f"state {str(item.state)[:40]!r} cannot be written: use active, paused or archived"
            )
        count = item.access_count
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
            raise InvalidInput("access_count must be a whole number of at least 0")
        return _Item(
            memory_id=memory_id,
            text=text,
            digest=content_hash(text),
            source=item,
            metadata=self._clean_metadata(item.metadata),
            app=validate_client_name(item.app) if item.app is not None else None,
            state=item.state,
            memory_type=self._clean_type(item.memory_type) if item.memory_type is not None else None,
            importance=self._clean_importance(item.importance) if item.importance is not None else None,
            categories=_clean_categories(item.categories) if item.categories is not None else None,
            access_count=item.access_count,
            vector=self._clean_vector(item.vector) if item.vector is not None else None,
        )

    def _clean_vector(self, vector: Sequence[float]) -> list[float]:
        dims = self.pool.vectors.dims
        if isinstance(vector, str | bytes) or len(vector) != dims:
            size = len(vector) if not isinstance(vector, str | bytes) else "no"
            raise InvalidInput(
                f"the vector has {size} numbers but the embedder makes {dims}-dimension vectors"
            )
        values = [float(v) for v in vector if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(values) != dims or not all(math.isfinite(v) for v in values):
            raise InvalidInput("the vector must hold only finite numbers")
        return values

    # ---------------------------------------------------------------- apps and categories

    def _app_ids(self, actor: Actor, names: set[str]) -> dict[str, str]:
        """App name -> id for the caller's app and the user's apps in ``names`` (created if missing)."""

        def rows(now: datetime, wanted: list[str]) -> list[dict[str, Any]]:
            return [
                {
                    "id": new_id(),
                    "owner_id": actor.user_pk,
                    "name": n,
                    "is_active": True,
                    "created_at": now,
                    "updated_at": now,
                }
                for n in wanted
            ]

        found = self._named_ids(App, App.owner_id == actor.user_pk, names - {actor.app_name}, rows, "apps")
        return {actor.app_name: actor.app_pk, **found}

    def _category_ids(self, names: set[str]) -> dict[str, str]:
        """Category name -> id, creating unknown categories."""

        def rows(now: datetime, wanted: list[str]) -> list[dict[str, Any]]:
            return [{"id": category_id(n), "name": n, "created_at": now} for n in wanted]

        return self._named_ids(Category, true(), names, rows, "categories")

    def _named_ids(
        self,
        model: type[App] | type[Category],
        scope: ColumnElement[bool],
        names: set[str],
        new_rows: Callable[[datetime, list[str]], list[dict[str, Any]]],
        what: str,
    ) -> dict[str, str]:
        """Name -> id of rows of ``model`` within ``scope``, inserting the missing ones.

        Two writers may insert the same name at once: the loser reads the winner's row back.
        """
        found: dict[str, str] = {}
        wanted = set(names)
        for _attempt in range(3):
            if not wanted:
                return found
            with self.db.session() as session:
                existing = session.execute(
                    select(model.name, model.id).where(scope, model.name.in_(sorted(wanted)))
                ).all()
            found.update({name: row_id for name, row_id in existing})
            wanted -= found.keys()
            if not wanted:
                return found
            try:
                with self.db.session() as session:
                    session.execute(insert(model), new_rows(self.clock(), sorted(wanted)))
            except IntegrityError:
                continue  # created by someone else meanwhile: read them back
        if wanted:
            raise Unavailable(f"could not create the {what} of the imported memories; try again")
        return found

    # ---------------------------------------------------------------- planning

    def _plan(
        self,
        actor: Actor,
        items: dict[str, _Item],
        apps: dict[str, str],
        result: BulkResult,
        on_existing: OnExisting,
    ) -> _Plan:
        """Sort items into new, changed, unchanged and skipped, with two or three SQL reads."""
        plan = _Plan()
        with self.db.session() as session:
            existing = {
                row.id: row for row in session.scalars(select(Memory).where(Memory.id.in_(list(items))))
            }
            live_by_hash = {
                digest: memory_id
                for memory_id, digest in session.execute(
                    select(Memory.id, Memory.content_hash).where(
                        Memory.user_id == actor.user_pk,
                        Memory.content_hash.in_({item.digest for item in items.values()}),
                        Memory.state != MemoryState.deleted.value,
                    )
                ).all()
            }
            stored_categories = (
                self._categories_for(session, list(existing)) if on_existing == "overwrite" else {}
            )
        now = self.clock()
        for memory_id, item in items.items():
            row = existing.get(memory_id)
            app_pk = apps[item.app] if item.app is not None else actor.app_pk
            if row is not None and row.user_id != actor.user_pk:
                result.skipped[memory_id] = "the id is already in use"
                continue
            if row is not None and row.state == MemoryState.deleted.value:
                result.skipped[memory_id] = "deleted"
                continue
            if row is not None and on_existing == "skip":
                if row.content_hash == item.digest:
                    result.unchanged.append(memory_id)
                else:
                    result.skipped[memory_id] = "already stored with another text (skip mode)"
                continue
            if row is not None and on_existing == "update" and row.content_hash == item.digest:
                result.unchanged.append(memory_id)
                continue
            holder = live_by_hash.get(item.digest)
            if holder is not None and holder != memory_id:
                result.skipped[memory_id] = f"duplicate of {holder}"
                continue
            # A later item of this batch with the same text is a duplicate.
            live_by_hash[item.digest] = memory_id
            if row is None:
                plan.new.append((item, self._columns(item, app_pk, now, None)))
            elif on_existing == "update":
                values = {"content": item.text, "content_hash": item.digest, "metadata_": item.metadata}
                plan.changed.append(_Change(item, values, row.state, True, None))
            else:
                change = self._overwrite(item, app_pk, now, row, stored_categories.get(memory_id, []))
                if change is None:
                    result.unchanged.append(memory_id)
                else:
                    plan.changed.append(change)
        return plan

    def _columns(self, item: _Item, app_pk: str, now: datetime, row: Memory | None) -> dict[str, Any]:
        """The memory's columns as a new memory from ``item`` would have them.

        For an overwrite (``row`` given) the creation time, a short-term expiry, the
        archive time and the use counts are kept unless the item gives them.
        """
        source = item.source
        memory_type = item.memory_type or MemoryType.long_term.value
        state = item.state or MemoryState.active.value
        expires_at = _utc(source.expires_at)
        if expires_at is None and memory_type == MemoryType.short_term.value:
            kept = row.expires_at if row is not None and row.memory_type == memory_type else None
            expires_at = kept or self._expiry(memory_type, now)
        archived_at = _utc(source.archived_at)
        if archived_at is None and state == MemoryState.archived.value:
            archived_at = (row.archived_at if row is not None else None) or now
        created_at = _utc(source.created_at) or (row.created_at if row is not None else now)
        access_count, last_accessed_at = item.access_count, _utc(source.last_accessed_at)
        if row is not None and access_count is None:
            access_count, last_accessed_at = row.access_count, last_accessed_at or row.last_accessed_at
        return {
            "app_id": app_pk,
            "content": item.text,
            "content_hash": item.digest,
            "state": state,
            "metadata_": item.metadata,
            "memory_type": memory_type,
            "importance": 0.5 if item.importance is None else item.importance,
            "created_at": created_at,
            "updated_at": _utc(source.updated_at) or now,
            "archived_at": archived_at,
            "expires_at": expires_at,
            "access_count": access_count or 0,
            "last_accessed_at": last_accessed_at,
        }

    def _overwrite(
        self, item: _Item, app_pk: str, now: datetime, row: Memory, categories: list[str]
    ) -> _Change | None:
        """What to change so that ``row`` equals ``item``; None when it already does."""
        values = self._columns(item, app_pk, now, row)
        if item.source.updated_at is None:
            compared = {k: v for k, v in values.items() if k != "updated_at"}
        else:
            compared = values
        wanted_categories = item.categories or []
        same_categories = sorted(categories) == wanted_categories
        same = same_categories and all(getattr(row, k) == v for k, v in compared.items())
        if same:
            return None  # a vector the item brings for an unchanged memory is the one stored
        return _Change(
            item,
            values,
            row.state,
            row.content_hash != item.digest,
            None if same_categories else wanted_categories,
        )

    # ---------------------------------------------------------------- writing

    def _vectors(self, plan: _Plan, previous: dict[str, Any]) -> list[list[float]]:
        """A vector for every new and changed item: given, kept from the stored point, or embedded."""
        chosen: list[list[float] | None] = [item.vector for item, _ in plan.new]
        for change in plan.changed:
            vector = change.item.vector
            old = previous.get(change.item.memory_id)
            if vector is None and not change.text_changed and old is not None:
                vector = point_vector(old)
            chosen.append(vector)
        texts = [item.text for item, _ in plan.new] + [change.item.text for change in plan.changed]
        missing = [i for i, v in enumerate(chosen) if v is None]
        if missing:
            try:
                embedded = self.pool.embedder.embed_batch([texts[i] for i in missing])
            except MemoryServerError:
                raise
            except Exception as exc:
                log.exception("batch embedding failed")
                raise Unavailable("the embedder is unavailable; nothing was stored") from exc
            for i, vector in zip(missing, embedded, strict=True):
                chosen[i] = vector
        return [v for v in chosen if v is not None]

    def _write(self, actor: Actor, memory: UserMemory, plan: _Plan) -> None:
        """Embed once, upsert vectors once, then one SQL transaction; undo the vectors if SQL fails."""
        changed_ids = [change.item.memory_id for change in plan.changed]
        previous = memory.store.retrieve_many(changed_ids, with_vectors=True) if changed_ids else []
        by_id = {str(p.id): p for p in previous}
        vectors = self._vectors(plan, by_id)
        wanted_categories = {n for item, _ in plan.new for n in item.categories or []}
        wanted_categories |= {n for change in plan.changed for n in change.categories or []}
        category_ids = self._category_ids(wanted_categories)
        now = self.clock()
        payloads = [
            mem0_payload(actor.user_id, values["app_id"], item.text, values["created_at"], now)
            for item, values in plan.new
        ]
        for change in plan.changed:
            app_pk = change.values.get("app_id", actor.app_pk)
            payload = mem0_payload(actor.user_id, app_pk, change.item.text, now, now)
            old = by_id.get(change.item.memory_id)
            created = change.values.get("created_at")
            old_created = (old.payload or {}).get("created_at") if old is not None else None
            payload["created_at"] = created.isoformat() if created else old_created or payload["created_at"]
            payloads.append(payload)
        ids = [item.memory_id for item, _ in plan.new] + changed_ids
        try:
            memory.store.insert(vectors=vectors, payloads=payloads, ids=ids)
        except Exception as exc:
            log.exception("batch vector write failed")
            raise Unavailable("the vector store is unavailable; nothing was stored") from exc
        try:
            with self.db.session() as session:
                if plan.new:
                    self._insert_new(session, actor, plan, category_ids, now)
                if plan.changed:
                    self._apply_changes(session, actor, plan, category_ids, now)
        except BaseException:
            self._drop_vectors(memory, [item.memory_id for item, _ in plan.new])
            if previous:
                try:
                    memory.store.upsert_points(_as_points(previous))
                except Exception:
                    log.exception("could not restore %d updated vector(s)", len(previous))
            raise

    def _insert_new(
        self, session: Session, actor: Actor, plan: _Plan, category_ids: dict[str, str], now: datetime
    ) -> None:
        rows = [{"id": item.memory_id, "user_id": actor.user_pk, **values} for item, values in plan.new]
        insert_new_memories(session, actor, rows, now)
        links = [
            {"memory_id": item.memory_id, "category_id": category_ids[name]}
            for item, _ in plan.new
            for name in item.categories or []
        ]
        if links:
            session.execute(insert(MemoryCategory), links)

    def _apply_changes(
        self, session: Session, actor: Actor, plan: _Plan, category_ids: dict[str, str], now: datetime
    ) -> None:
        texts = [c for c in plan.changed if c.text_changed]
        versions: dict[str, int] = {}
        if texts:
            versions = dict(
                session.execute(
                    select(MemoryVersion.memory_id, func.max(MemoryVersion.version))
                    .where(MemoryVersion.memory_id.in_([c.item.memory_id for c in texts]))
                    .group_by(MemoryVersion.memory_id)
                ).all()
            )
        for change in plan.changed:
            memory_id = change.item.memory_id
            values = {"updated_at": now, **change.values}
            session.execute(
                update(Memory).where(Memory.id == memory_id, Memory.user_id == actor.user_pk).values(**values)
            )
            new_state = values.get("state", change.old_state)
            if new_state != change.old_state:
                session.add(
                    MemoryStatusHistory(
                        memory_id=memory_id,
                        changed_by=actor.app_pk,
                        old_state=change.old_state,
                        new_state=new_state,
                        changed_at=now,
                    )
                )
            if change.text_changed:
                session.add(
                    MemoryVersion(
                        memory_id=memory_id,
                        version=versions.get(memory_id, 0) + 1,
                        content=change.item.text,
                        changed_by=actor.app_pk,
                        created_at=now,
                    )
                )
            if change.categories is not None:
                session.execute(delete(MemoryCategory).where(MemoryCategory.memory_id == memory_id))
                if change.categories:
                    session.execute(
                        insert(MemoryCategory),
                        [{"memory_id": memory_id, "category_id": category_ids[n]} for n in change.categories],
                    )
        emit(session, "update", actor.user_id, [c.item.memory_id for c in plan.changed])


def point_vector(point: Any) -> list[float] | None:
    """The vector of a Qdrant point (the unnamed one)."""
    vector = point.vector
    if isinstance(vector, dict):
        vector = vector.get("") or next(iter(vector.values()), None)
    return list(vector) if vector is not None else None


def _as_points(records: list[Any]) -> list[Any]:
    from qdrant_client import models

    return [models.PointStruct(id=r.id, vector=r.vector, payload=r.payload) for r in records]
