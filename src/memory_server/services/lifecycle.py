"""State changes (pause, archive, activate), history, access logs, and the maintenance job."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, and_, func, insert, select, update

from memory_server.errors import InvalidInput, NotFound
from memory_server.events import emit
from memory_server.identity import validate_memory_id
from memory_server.services.base import MAX_DELETE_IDS, MAX_LIST_LIMIT, Caller, ServiceBase
from memory_server.services.filters import MemoryFilter
from memory_server.services.statements import chunks
from memory_server.storage.models import (
    App,
    Memory,
    MemoryAccessLog,
    MemoryState,
    MemoryStatusHistory,
    MemoryType,
    MemoryVersion,
    User,
    new_id,
)

log = logging.getLogger(__name__)

Action = Literal["pause", "archive", "activate"]
_TARGET = {"pause": MemoryState.paused, "archive": MemoryState.archived, "activate": MemoryState.active}


class StateChange(BaseModel):
    state: str
    changed: list[str] = Field(description="ids whose state changed (others were already in it)")


class HistoryEntry(BaseModel):
    at: datetime
    kind: Literal["content", "state"]
    version: int | None = None
    text: str | None = None
    old_state: str | None = None
    new_state: str | None = None
    app: str | None = Field(None, description="the app that made the change; empty for the maintenance job")


class AccessLogEntry(BaseModel):
    at: datetime
    app: str
    access_type: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class AccessLogPage(BaseModel):
    results: list[AccessLogEntry]
    total: int
    limit: int
    offset: int


class MaintenanceReport(BaseModel):
    promoted: int = 0
    expired: int = 0
    archived: int = 0


class MaintenancePolicy(BaseModel):
    archive_after: timedelta = timedelta(days=30)
    archive_max_importance: float = 0.3
    archive_max_access_count: int = 2
    promote_access_count: int = 5


class LifecycleService(ServiceBase):
    """Moves memories between states and keeps their history."""

    def change_state(
        self,
        caller: Caller,
        action: str,
        memory_ids: list[str] | None = None,
        app: str | None = None,
        category: str | None = None,
    ) -> StateChange:
        """Pause, archive or activate: the listed ids, or all memories of an app, or of a category."""
        if action not in _TARGET:
            raise InvalidInput(f"action {str(action)[:40]!r} is not one of: pause, archive, activate")
        if sum(x is not None for x in (memory_ids, app, category)) != 1:
            raise InvalidInput("give exactly one of memory_ids, app or category")
        actor = self._actor(caller)
        target = _TARGET[action]
        with self.db.session() as session:
            if memory_ids is not None:
                if not memory_ids or len(memory_ids) > MAX_DELETE_IDS:
                    raise InvalidInput(f"memory_ids must hold 1 to {MAX_DELETE_IDS} ids")
                ids = list(dict.fromkeys(validate_memory_id(m) for m in memory_ids))
                owned = set(
                    session.scalars(
                        select(Memory.id).where(
                            Memory.user_id == actor.user_pk,
                            Memory.id.in_(ids),
                            Memory.state != MemoryState.deleted.value,
                        )
                    )
                )
                if not owned:
                    raise NotFound(f"no memory with id {ids[0]} for this user")
            else:
                states = [s.value for s in MemoryState if s is not MemoryState.deleted]
                filters = MemoryFilter(states=states, apps=[app] if app else (), category=category)
                ids = list(
                    session.scalars(
                        select(Memory.id)
                        .join(App, App.id == Memory.app_id)
                        .where(*filters.conditions(actor.user_pk))
                    )
                )
            changed = self._set_state(session, actor, ids, target)
        return StateChange(state=target.value, changed=changed)

    def history(self, caller: Caller, memory_id: Any) -> list[HistoryEntry]:
        """Every text the memory had and every state it went through, oldest first."""
        actor = self._actor(caller)
        mid = validate_memory_id(memory_id)
        with self.db.session() as session:
            owner = session.scalar(select(Memory.user_id).where(Memory.id == mid))
            if owner != actor.user_pk:
                raise NotFound(f"no memory with id {mid} for this user")
            versions = session.execute(
                select(MemoryVersion, App.name)
                .outerjoin(App, App.id == MemoryVersion.changed_by)
                .where(MemoryVersion.memory_id == mid)
            ).all()
            states = session.execute(
                select(MemoryStatusHistory, App.name)
                .outerjoin(App, App.id == MemoryStatusHistory.changed_by)
                .where(MemoryStatusHistory.memory_id == mid)
            ).all()
        entries = [
            HistoryEntry(at=v.created_at, kind="content", version=v.version, text=v.content, app=name)
            for v, name in versions
        ] + [
            HistoryEntry(
                at=s.changed_at, kind="state", old_state=s.old_state, new_state=s.new_state, app=name
            )
            for s, name in states
        ]
        # content before state at the same instant: a memory's first version precedes its activation
        return sorted(entries, key=lambda e: (e.at, e.kind != "content", e.version or 0))

    def access_log(self, caller: Caller, memory_id: Any, limit: int = 50, offset: int = 0) -> AccessLogPage:
        """Who read the memory and how (search, list, get), newest first."""
        actor = self._actor(caller)
        mid = validate_memory_id(memory_id)
        limit = self._check_limit(limit, "limit", 1, MAX_LIST_LIMIT)
        offset = self._check_limit(offset, "offset", 0, 10**9)
        self.access.flush()
        with self.db.session(readonly=True) as session:
            owner = session.scalar(select(Memory.user_id).where(Memory.id == mid))
            if owner != actor.user_pk:
                raise NotFound(f"no memory with id {mid} for this user")
            where = MemoryAccessLog.memory_id == mid
            total = session.scalar(select(func.count()).select_from(MemoryAccessLog).where(where)) or 0
            rows = session.execute(
                select(MemoryAccessLog, App.name)
                .join(App, App.id == MemoryAccessLog.app_id)
                .where(where)
                .order_by(MemoryAccessLog.accessed_at.desc(), MemoryAccessLog.id.desc())
                .limit(limit)
                .offset(offset)
            ).all()
        return AccessLogPage(
            results=[
                AccessLogEntry(
                    at=r.accessed_at, app=name, access_type=r.access_type, metadata=r.metadata_ or {}
                )
                for r, name in rows
            ],
            total=total,
            limit=limit,
            offset=offset,
        )

    def run_maintenance(self, policy: MaintenancePolicy, batch: int = 1000) -> MaintenanceReport:
        """Promote used short-term memories, archive expired and stale ones (all users).

        Promotion runs first, so a memory in use is never archived in the same pass.
        """
        self.access.flush()  # promotion counts uses
        now = self.clock()
        report = MaintenanceReport()
        short_active = and_(
            Memory.memory_type == MemoryType.short_term.value, Memory.state == MemoryState.active.value
        )
        report.promoted = self._promote(short_active, policy.promote_access_count, now, batch)
        report.expired = self._archive_where(
            and_(Memory.state == MemoryState.active.value, Memory.expires_at <= now), now, batch, "expired"
        )
        stale = and_(
            short_active,
            Memory.created_at <= now - policy.archive_after,
            Memory.importance < policy.archive_max_importance,
            Memory.access_count <= policy.archive_max_access_count,
        )
        report.archived = self._archive_where(stale, now, batch, "stale")
        if report.promoted or report.expired or report.archived:
            log.info("maintenance: %s", report.model_dump())
        return report

    def _promote(self, short_active: ColumnElement[bool], min_uses: int, now: datetime, batch: int) -> int:
        total = 0
        while True:
            with self.db.session() as session:
                rows = session.execute(
                    select(Memory.id, User.user_id)
                    .join(User, User.id == Memory.user_id)
                    .where(short_active, Memory.access_count >= min_uses)
                    .limit(batch)
                ).all()
                if not rows:
                    return total
                ids = [r.id for r in rows]
                session.execute(
                    update(Memory)
                    .where(Memory.id.in_(ids))
                    .values(memory_type=MemoryType.long_term.value, expires_at=None, updated_at=now)
                )
                for user_id, user_ids in _by_user(rows).items():
                    emit(session, "update", user_id, user_ids, fields=["memory_type"], reason="promoted")
            total += len(ids)

    def _archive_where(self, condition: ColumnElement[bool], now: datetime, batch: int, reason: str) -> int:
        total = 0
        while True:
            with self.db.session() as session:
                rows = session.execute(
                    select(Memory.id, User.user_id)
                    .join(User, User.id == Memory.user_id)
                    .where(condition)
                    .limit(batch)
                ).all()
                if not rows:
                    return total
                ids = [r.id for r in rows]
                for chunk in chunks(ids, 500):
                    session.execute(
                        update(Memory)
                        .where(Memory.id.in_(chunk))
                        .values(state=MemoryState.archived.value, archived_at=now, updated_at=now)
                    )
                    session.execute(
                        insert(MemoryStatusHistory),
                        [
                            {
                                "id": new_id(),
                                "memory_id": mid,
                                "changed_by": None,
                                "old_state": "active",
                                "new_state": MemoryState.archived.value,
                                "changed_at": now,
                            }
                            for mid in chunk
                        ],
                    )
                for user_id, user_ids in _by_user(rows).items():
                    emit(session, "state", user_id, user_ids, state=MemoryState.archived.value, reason=reason)
            total += len(ids)


def _by_user(rows: Any) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for memory_id, user_id in rows:
        grouped.setdefault(user_id, []).append(memory_id)
    return grouped
