"""SQLAlchemy models. The schema itself is created by Alembic migrations, never ``create_all``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time in UTC (the only clock the models use)."""
    return datetime.now(UTC)


def new_id() -> str:
    """A new random UUID as text."""
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite drops the offset on storage)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class MemoryState(StrEnum):
    """Lifecycle states of a memory; search and list show only ``active`` ones."""

    active = "active"
    paused = "paused"
    archived = "archived"
    deleted = "deleted"


class MemoryType(StrEnum):
    """What kind of memory this is; short-term memories expire unless they are used."""

    short_term = "short_term"
    long_term = "long_term"
    rule = "rule"
    entity = "entity"
    relationship = "relationship"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON}


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(String(128), unique=True, index=True)
    name: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class App(Base):
    """One MCP client (Claude Desktop, Cursor, ...) of one user."""

    __tablename__ = "apps"
    __table_args__ = (UniqueConstraint("owner_id", "name", name="uq_apps_owner_name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(Text)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Memory(Base):
    """A memory's SQL side; ``id`` is also its point id in the user's Qdrant collection."""

    __tablename__ = "memories"
    __table_args__ = (
        CheckConstraint("state IN ('active', 'paused', 'archived', 'deleted')", name="state"),
        CheckConstraint(
            "memory_type IN ('short_term', 'long_term', 'rule', 'entity', 'relationship')", name="memory_type"
        ),
        CheckConstraint("importance >= 0 AND importance <= 1", name="importance"),
        # maintenance: due expiries and old short-term memories
        Index("ix_memories_state_expires", "state", "expires_at"),
        Index("ix_memories_user_type", "user_id", "memory_type"),
        # list: newest active memories of a user
        Index("ix_memories_user_state_created", "user_id", "state", "created_at"),
        # exact-duplicate check; one live copy of a text per user
        Index(
            "uq_memories_user_hash_live",
            "user_id",
            "content_hash",
            unique=True,
            sqlite_where=text("state != 'deleted'"),
            postgresql_where=text("state != 'deleted'"),
        ),
        Index("ix_memories_app_id", "app_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    content: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=MemoryState.active.value)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    archived_at: Mapped[datetime | None] = mapped_column()
    deleted_at: Mapped[datetime | None] = mapped_column()
    memory_type: Mapped[str] = mapped_column(
        String(32), default=MemoryType.long_term.value, server_default=MemoryType.long_term.value
    )
    importance: Mapped[float] = mapped_column(Float, default=0.5, server_default=text("0.5"))
    access_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    last_accessed_at: Mapped[datetime | None] = mapped_column()
    expires_at: Mapped[datetime | None] = mapped_column()

    app: Mapped[App] = relationship(lazy="raise")
    categories: Mapped[list[Category]] = relationship(secondary="memory_categories", lazy="raise")


class MemoryVersion(Base):
    """Each text a memory has had, oldest first (version 1 is the text it was added with)."""

    __tablename__ = "memory_versions"
    __table_args__ = (UniqueConstraint("memory_id", "version", name="uq_memory_versions_memory_version"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    memory_id: Mapped[str] = mapped_column(ForeignKey("memories.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    content: Mapped[str] = mapped_column(Text)
    changed_by: Mapped[str | None] = mapped_column(ForeignKey("apps.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Category(Base):
    __tablename__ = "categories"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MemoryCategory(Base):
    __tablename__ = "memory_categories"

    memory_id: Mapped[str] = mapped_column(ForeignKey("memories.id", ondelete="CASCADE"), primary_key=True)
    category_id: Mapped[str] = mapped_column(
        ForeignKey("categories.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class MemoryAccessLog(Base):
    __tablename__ = "memory_access_logs"
    __table_args__ = (
        Index("ix_memory_access_logs_memory_accessed", "memory_id", "accessed_at"),
        Index("ix_memory_access_logs_app_id", "app_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    memory_id: Mapped[str] = mapped_column(ForeignKey("memories.id", ondelete="CASCADE"))
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    access_type: Mapped[str] = mapped_column(String(32))
    accessed_at: Mapped[datetime] = mapped_column(default=utcnow)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)


class MemoryStatusHistory(Base):
    __tablename__ = "memory_status_history"
    __table_args__ = (Index("ix_memory_status_history_memory_changed", "memory_id", "changed_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    memory_id: Mapped[str] = mapped_column(ForeignKey("memories.id", ondelete="CASCADE"))
    changed_by: Mapped[str | None] = mapped_column(ForeignKey("apps.id", ondelete="SET NULL"))
    old_state: Mapped[str | None] = mapped_column(String(16))
    new_state: Mapped[str] = mapped_column(String(16))
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)


class SlackChannelState(Base):
    """Where the Slack sync stands in one channel: its cursor, last run, counts and last error."""

    __tablename__ = "slack_channels"

    team_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    channel_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    channel_name: Mapped[str] = mapped_column(String(255), default="")
    # ts of the newest top-level message stored; the next run reads history after it
    cursor_ts: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="new")
    last_run_at: Mapped[datetime | None] = mapped_column()
    last_success_at: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    last_added: Mapped[int] = mapped_column(Integer, default=0)
    last_updated: Mapped[int] = mapped_column(Integer, default=0)
    last_deleted: Mapped[int] = mapped_column(Integer, default=0)
    last_skipped: Mapped[int] = mapped_column(Integer, default=0)
    total_added: Mapped[int] = mapped_column(Integer, default=0)
    total_deleted: Mapped[int] = mapped_column(Integer, default=0)


class SlackMessage(Base):
    """A Slack message the sync stored, so that edits, deletions and thread replies can be found."""

    __tablename__ = "slack_messages"
    __table_args__ = (Index("ix_slack_messages_thread", "team_id", "channel_id", "thread_ts"),)

    team_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    channel_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    ts: Mapped[str] = mapped_column(String(32), primary_key=True)
    thread_ts: Mapped[str | None] = mapped_column(String(32))
    memory_id: Mapped[str] = mapped_column(String(36))
    synced_at: Mapped[datetime] = mapped_column(default=utcnow)
