"""Results the service layer returns; MCP tools and REST routes serialise these as they are."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

Event = Literal["ADD", "NONE"]
MemoryTypeName = Literal["short_term", "long_term", "rule", "entity", "relationship"]
StateName = Literal["active", "paused", "archived", "deleted"]


class MemoryOut(BaseModel):
    """One memory as a client sees it."""

    id: str
    text: str
    app: str = Field(description="the MCP client (app) that created it")
    state: StateName
    memory_type: MemoryTypeName = "long_term"
    importance: float = Field(0.5, ge=0, le=1)
    categories: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime
    access_count: int = 0
    last_accessed_at: datetime | None = None
    expires_at: datetime | None = None
    archived_at: datetime | None = None
    score: float | None = Field(None, description="similarity to the query (search only), higher is closer")
    event: Event | None = Field(
        None, description="ADD: stored now; NONE: an equal or near-equal memory existed"
    )


class AddResult(BaseModel):
    results: list[MemoryOut]
    message: str | None = None


class SearchResult(BaseModel):
    results: list[MemoryOut]


class MemoryPage(BaseModel):
    results: list[MemoryOut]
    total: int
    limit: int
    offset: int


class DeleteResult(BaseModel):
    deleted: list[str]
    not_found: list[str] = Field(default_factory=list)
