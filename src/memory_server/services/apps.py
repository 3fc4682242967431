"""Apps (MCP clients) of a user, per-user statistics, and the category list."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import func, select, update

from memory_server.errors import InvalidInput, NotFound
from memory_server.identity import validate_memory_id
from memory_server.schemas import MemoryPage
from memory_server.services.base import Actor, Caller, ServiceBase
from memory_server.services.filters import MemoryFilter
from memory_server.services.memories import MemoryService
from memory_server.storage.models import (
    App,
    Category,
    Memory,
    MemoryAccessLog,
    MemoryCategory,
    MemoryState,
    User,
)


class AppOut(BaseModel):
    id: str
    name: str
    is_active: bool
    created_at: datetime
    memories_created: int = Field(description="memories this app stored that are not deleted")
    memories_accessed: int = Field(description="distinct memories this app has read")
    last_accessed_at: datetime | None = None


class CategoryOut(BaseModel):
    name: str
    description: str | None
    memories: int = Field(description="this user's memories (not deleted) in the category")


class Stats(BaseModel):
    total: int
    by_state: dict[str, int]
    by_app: dict[str, int]
    by_category: dict[str, int]
    by_memory_type: dict[str, int]


class UserOut(BaseModel):
    user_id: str
    created_at: datetime
    memories: int = Field(description="memories that are not deleted")
    apps: int


class AppService(ServiceBase):
    """What a user sees about their apps, categories and totals."""

    def _apps(self, actor: Actor, app_id: str | None = None) -> list[AppOut]:
        live = Memory.state != MemoryState.deleted.value
        self.access.flush()
        with self.db.session(readonly=True) as session:
            query = select(App).where(App.owner_id == actor.user_pk).order_by(App.name)
            if app_id is not None:
                query = query.where(App.id == app_id)
            apps = list(session.scalars(query))
            ids = [a.id for a in apps]
            created = dict(
                session.execute(
                    select(Memory.app_id, func.count())
                    .where(Memory.app_id.in_(ids), live)
                    .group_by(Memory.app_id)
                ).all()
            )
            accessed = {
                app: (count, last)
                for app, count, last in session.execute(
                    select(
                        MemoryAccessLog.app_id,
                        func.count(func.distinct(MemoryAccessLog.memory_id)),
                        func.max(MemoryAccessLog.accessed_at),
                    )
                    .where(MemoryAccessLog.app_id.in_(ids))
                    .group_by(MemoryAccessLog.app_id)
                ).all()
            }
        return [
            AppOut(
                id=a.id,
                name=a.name,
                is_active=a.is_active,
                created_at=a.created_at,
                memories_created=created.get(a.id, 0),
                memories_accessed=accessed.get(a.id, (0, None))[0],
                last_accessed_at=_utc(accessed.get(a.id, (0, None))[1]),
            )
            for a in apps
        ]

    def list_apps(self, caller: Caller) -> list[AppOut]:
        """The user's apps with how many memories each created and read."""
        return self._apps(self._actor(caller))

    def get_app(self, caller: Caller, app_id: Any) -> AppOut:
        found = self._apps(self._actor(caller), _app_id(app_id))
        if not found:
            raise NotFound(f"no app with id {app_id} for this user")
        return found[0]

    def set_active(self, caller: Caller, app_id: Any, is_active: bool) -> AppOut:
        """Pause (false) or resume (true) an app: a paused app's MCP calls are refused."""
        if not isinstance(is_active, bool):
            raise InvalidInput("is_active must be true or false")
        actor = self._actor(caller)
        app_pk = _app_id(app_id)
        with self.db.session() as session:
            result = session.execute(
                update(App).where(App.id == app_pk, App.owner_id == actor.user_pk).values(is_active=is_active)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                raise NotFound(f"no app with id {app_id} for this user")
        self.actors.forget_user(caller.user_id)
        return self.get_app(caller, app_pk)

    def app_memories(self, caller: Caller, app_id: Any, limit: int = 50, offset: int = 0) -> MemoryPage:
        """Memories an app created (any state but deleted), newest first."""
        app = self.get_app(caller, app_id)
        states = [s.value for s in MemoryState if s is not MemoryState.deleted]
        lister = MemoryService(
            self.db, self.pool, self.limits, self.clock, access=self.access, actors=self.actors
        )
        return lister.list_memories(
            caller, limit, offset, MemoryFilter(states=states, apps=[app.name]), log_access=False
        )

    def stats(self, caller: Caller) -> Stats:
        """Totals by state, app, category and memory type (deleted memories count only by state)."""
        actor = self._actor(caller)
        mine = Memory.user_id == actor.user_pk
        live = Memory.state != MemoryState.deleted.value
        with self.db.session() as session:
            by_state = dict(
                session.execute(select(Memory.state, func.count()).where(mine).group_by(Memory.state)).all()
            )
            by_app = dict(
                session.execute(
                    select(App.name, func.count())
                    .select_from(Memory)
                    .join(App, App.id == Memory.app_id)
                    .where(mine, live)
                    .group_by(App.name)
                ).all()
            )
            by_type = dict(
                session.execute(
                    select(Memory.memory_type, func.count()).where(mine, live).group_by(Memory.memory_type)
                ).all()
            )
            by_category = dict(
                session.execute(
                    select(Category.name, func.count())
                    .join(MemoryCategory, MemoryCategory.category_id == Category.id)
                    .join(Memory, Memory.id == MemoryCategory.memory_id)
                    .where(mine, live)
                    .group_by(Category.name)
                ).all()
            )
        return Stats(
            total=sum(v for k, v in by_state.items() if k != MemoryState.deleted.value),
            by_state=by_state,
            by_app=by_app,
            by_category=by_category,
            by_memory_type=by_type,
        )

    def categories(self, caller: Caller) -> list[CategoryOut]:
        """Every category, with how many of the user's memories are in it."""
        actor = self._actor(caller)
        with self.db.session() as session:
            counts = dict(
                session.execute(
                    select(MemoryCategory.category_id, func.count())
                    .join(Memory, Memory.id == MemoryCategory.memory_id)
                    .where(Memory.user_id == actor.user_pk, Memory.state != MemoryState.deleted.value)
                    .group_by(MemoryCategory.category_id)
                ).all()
            )
            rows = list(session.scalars(select(Category).order_by(Category.name)))
        return [
            CategoryOut(name=c.name, description=c.description, memories=counts.get(c.id, 0)) for c in rows
        ]

    # ---------------------------------------------------------------- admin

    def users(self) -> list[UserOut]:
        """Every user with their counts of live memories and apps (admin only)."""
        live = Memory.state != MemoryState.deleted.value
        with self.db.session() as session:
            memories = dict(
                session.execute(
                    select(Memory.user_id, func.count()).where(live).group_by(Memory.user_id)
                ).all()
            )
            apps = dict(session.execute(select(App.owner_id, func.count()).group_by(App.owner_id)).all())
            rows = session.scalars(select(User).order_by(User.user_id)).all()
            return [
                UserOut(
                    user_id=u.user_id,
                    created_at=u.created_at,
                    memories=memories.get(u.id, 0),
                    apps=apps.get(u.id, 0),
                )
                for u in rows
            ]

    def require_user(self, user_id: str) -> str:
        """``user_id`` if that user exists, else ``NotFound`` (admin routes never create users)."""
        with self.db.session() as session:
            if session.scalar(select(User.id).where(User.user_id == user_id)) is None:
                raise NotFound(f"no user {user_id[:128]!r}")
        return user_id


def _app_id(value: Any) -> str:
    try:
        return validate_memory_id(value)
    except InvalidInput:
        raise InvalidInput(f"invalid app id {str(value)[:80]!r}: expected a UUID") from None


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value
