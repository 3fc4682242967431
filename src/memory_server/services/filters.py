"""Filters and sort orders for listing memories (REST ``GET /memories``, MCP ``list_memories``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select

from memory_server.errors import InvalidInput
from memory_server.storage.models import App, Category, Memory, MemoryCategory, MemoryState, MemoryType

SORTS = {
    "created": Memory.created_at,
    "updated": Memory.updated_at,
    "app": App.name,
    "importance": Memory.importance,
}


@dataclass(frozen=True)
class MemoryFilter:
    """Which of a user's memories to list; every field narrows the result."""

    states: Sequence[str] = (MemoryState.active.value,)
    apps: Sequence[str] = ()
    category: str | None = None
    memory_type: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    text: str | None = None

    def conditions(self, user_pk: str) -> list[ColumnElement[Any]]:
        """SQL conditions (the query joins ``App`` on the memory's app)."""
        for state in self.states:
            if state not in MemoryState.__members__:
                raise InvalidInput(f"state {state[:40]!r} is not one of: active, paused, archived, deleted")
        if self.memory_type is not None and self.memory_type not in MemoryType.__members__:
            raise InvalidInput(
                f"memory_type {self.memory_type[:40]!r} is not one of: " + ", ".join(MemoryType.__members__)
            )
        found: list[ColumnElement[Any]] = [Memory.user_id == user_pk, Memory.state.in_(list(self.states))]
        if self.apps:
            found.append(App.name.in_(list(self.apps)))
        if self.memory_type:
            found.append(Memory.memory_type == self.memory_type)
        if self.created_from:
            found.append(Memory.created_at >= self.created_from)
        if self.created_to:
            found.append(Memory.created_at < self.created_to)
        if self.text:
            found.append(func.lower(Memory.content).contains(self.text.lower(), autoescape=True))
        if self.category:
            found.append(
                Memory.id.in_(
                    select(MemoryCategory.memory_id)
                    .join(Category, Category.id == MemoryCategory.category_id)
                    .where(Category.name == self.category.lower())
                )
            )
        return found


def order_by(sort: str) -> list[Any]:
    """``created``, ``-created`` (newest first), ``updated``, ``app``, ``importance``, each with ``-``."""
    key = sort.lstrip("-")
    if key not in SORTS:
        raise InvalidInput(f"sort {sort[:40]!r} is not one of: " + ", ".join(f"[-]{k}" for k in SORTS))
    column = SORTS[key]
    primary = column.desc() if sort.startswith("-") else column.asc()
    tiebreak = Memory.id.desc() if sort.startswith("-") else Memory.id.asc()
    return [primary, tiebreak]
