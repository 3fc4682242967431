"""SQL the services share, built once: a new memory's first rows, and look-ups by id.

Kept apart from ``base.py``'s ``ServiceBase`` (who the caller is, what input is
acceptable, how a row becomes a result): these are statements and the helpers that feed
them, with no service state.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import BindParameter, Executable, bindparam, select
from sqlalchemy.orm import Session

from memory_server.events import emit
from memory_server.storage.models import (
    App,
    Category,
    Memory,
    MemoryCategory,
    MemoryState,
    MemoryStatusHistory,
    MemoryVersion,
    new_id,
)

if TYPE_CHECKING:
    from memory_server.services.base import Actor

T = TypeVar("T")


# A new memory's first rows, inserted with Core: three plain INSERTs (0.7 ms a memory on
# SQLite) where the ORM's unit of work took 1.3 ms (docs/benchmarks.md, seventh pass).
_INSERT_MEMORY = Memory.metadata.tables[Memory.__tablename__].insert()
_INSERT_STATUS = MemoryStatusHistory.metadata.tables[MemoryStatusHistory.__tablename__].insert()
_INSERT_VERSION = MemoryVersion.metadata.tables[MemoryVersion.__tablename__].insert()
# The ORM's attribute names (``metadata_``) -> column names (``metadata``).
_MEMORY_COLUMNS = {attr.key: column.key for attr in Memory.__mapper__.column_attrs for column in attr.columns}


def insert_new_memories(
    session: Session, actor: Actor, rows: Sequence[dict[str, Any]], now: datetime
) -> None:
    """Insert new memories (``rows`` keyed by ``Memory`` attribute, ``id`` included) with
    their first status and version rows, and queue the ``add`` event for the commit.

    A memory whose text is already live for the user raises ``IntegrityError`` here.
    """
    connection = session.connection()
    connection.execute(_INSERT_MEMORY, [{_MEMORY_COLUMNS[k]: v for k, v in row.items()} for row in rows])
    connection.execute(
        _INSERT_STATUS,
        [
            {
                "id": new_id(),
                "memory_id": row["id"],
                "changed_by": actor.app_pk,
                "old_state": None,
                "new_state": row["state"],
                "changed_at": now,
            }
            for row in rows
        ],
    )
    connection.execute(
        _INSERT_VERSION,
        [
            {
                "id": new_id(),
                "memory_id": row["id"],
                "version": 1,
                "content": row["content"],
                "changed_by": actor.app_pk,
                "created_at": now,
            }
            for row in rows
        ],
    )
    emit(session, "add", actor.user_id, [row["id"] for row in rows], app=actor.app_name)


LIVE_BY_HASH = (
    select(Memory.id)
    .where(
        Memory.user_id == bindparam("user"),
        Memory.content_hash == bindparam("digest"),
        Memory.state != MemoryState.deleted.value,
    )
    .limit(1)
)

# Statements that look memories up by id take one bind parameter per id, in a few fixed
# sizes: each size is compiled once and cached by SQLAlchemy, where ``IN`` over a list is
# re-rendered on every call. Short lists are padded by repeating their first id.
_ID_BUCKETS = (8, 32, 128, 512)
MOST_IDS = _ID_BUCKETS[-1]  # per statement: ``chunks(ids, MOST_IDS)``
_RESULT_COLUMNS = (
    Memory.id,
    Memory.user_id,
    Memory.content,
    Memory.state,
    Memory.memory_type,
    Memory.importance,
    Memory.metadata_.label("metadata_"),
    Memory.created_at,
    Memory.updated_at,
    Memory.access_count,
    Memory.last_accessed_at,
    Memory.expires_at,
    Memory.archived_at,
    App.name.label("app_name"),
)


@lru_cache(maxsize=2 * len(_ID_BUCKETS))
def _id_statement(kind: str, size: int) -> Executable:
    ids: list[BindParameter[str]] = [bindparam(f"id{i}") for i in range(size)]
    if kind == "memories":
        return select(*_RESULT_COLUMNS).join(App, App.id == Memory.app_id).where(Memory.id.in_(ids))
    return (
        select(MemoryCategory.memory_id, Category.name)
        .join(Category, Category.id == MemoryCategory.category_id)
        .where(MemoryCategory.memory_id.in_(ids))
        .order_by(Category.name)
    )


def by_ids(kind: str, ids: Sequence[str]) -> tuple[Executable, dict[str, str]]:
    """The ``kind`` statement ("memories" or "categories") and its parameters for ``ids``
    (1 to 512 of them, as ``chunks`` gives them)."""
    size = next(b for b in _ID_BUCKETS if b >= len(ids))
    padded = [*ids, *[ids[0]] * (size - len(ids))]
    return _id_statement(kind, size), {f"id{i}": mid for i, mid in enumerate(padded)}


def chunks(items: Sequence[T], size: int) -> Iterable[list[T]]:
    """``items`` in lists of at most ``size``."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
