"""What a bulk write takes and answers: items, results, and the checks of an item's fields."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from memory_server.errors import InvalidInput
from memory_server.storage.models import MemoryState

BATCH_SIZE = 256
MAX_CATEGORY_CHARS = 64

OnExisting = Literal["update", "skip", "overwrite"]
"""What a bulk write does with an id that is already stored for the user.

``update`` (the default, the Slack sync's): a changed text (and its metadata) replaces the
stored one; other fields stay. ``skip``: stored memories are left alone. ``overwrite``: the
stored memory becomes the item (every field, as a new memory from it would be), keeping
its id and, unless the item gives one, its creation time.
"""

WRITABLE_STATES = (MemoryState.active.value, MemoryState.paused.value, MemoryState.archived.value)


@dataclass(frozen=True)
class BulkItem:
    """One memory to write: a stable UUID and its text; every other field is optional.

    ``None`` means "not given": a new memory gets what ``add`` would give it (the caller's
    app, ``active``, ``long_term``, importance 0.5, no categories, the current time). The
    fields after ``created_at`` let an import carry a whole memory: ``app`` is an app
    name (created for the user if missing), ``categories`` are names (created if
    unknown), and ``vector`` is stored as given instead of embedding ``text``.
    """

    memory_id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    app: str | None = None
    state: str | None = None
    memory_type: str | None = None
    importance: float | None = None
    categories: Sequence[str] | None = None
    updated_at: datetime | None = None
    archived_at: datetime | None = None
    expires_at: datetime | None = None
    access_count: int | None = None
    last_accessed_at: datetime | None = None
    vector: Sequence[float] | None = None


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


@dataclass(frozen=True)
class _Item:
    """A validated ``BulkItem``: canonical id, clean text and fields, its content hash."""

    memory_id: str
    text: str
    digest: str
    source: BulkItem
    metadata: dict[str, Any]
    app: str | None
    state: str | None
    memory_type: str | None
    importance: float | None
    categories: list[str] | None
    access_count: int | None
    vector: list[float] | None


@dataclass
class _Change:
    """An existing memory to rewrite: the columns to set and what else follows from them."""

    item: _Item
    values: dict[str, Any]
    old_state: str
    text_changed: bool
    categories: list[str] | None  # replace the memory's categories with these; None: leave them


@dataclass
class _Plan:
    new: list[tuple[_Item, dict[str, Any]]] = field(default_factory=list)
    changed: list[_Change] = field(default_factory=list)


def category_id(name: str) -> str:
    """A category's id: derived from its name, as migration 0002 does for the seed list.

    Two writers creating the same new category at once then insert the same row.
    """
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"memory-server:category:{name}"))


def _clean_categories(names: Sequence[str]) -> list[str]:
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise InvalidInput("categories must be a list of names")
    clean = sorted({n.strip().lower() for n in names})
    for name in clean:
        if not name or len(name) > MAX_CATEGORY_CHARS or "\x00" in name:
            raise InvalidInput(f"category names must have 1 to {MAX_CATEGORY_CHARS} characters")
    return clean


def _utc(value: datetime | None) -> datetime | None:
    """``value`` as an aware datetime; a naive one is taken to be UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
