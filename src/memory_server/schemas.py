"""Results the service layer returns; MCP tools and REST routes serialise these as they are."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

Event = Literal["ADD", "NONE"]


class MemoryOut(BaseModel):
    """One memory as a client sees it."""

    id: str
    text: str
    app: str = Field(description="the MCP client (app) that created it")
    state: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime
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
