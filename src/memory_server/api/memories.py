"""REST routes for memories under ``/api/v1``: thin adapters over the services."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Request
from fastapi_pagination import Page, Params, create_page
from pydantic import BaseModel, Field
from sse_starlette import EventSourceResponse

from memory_server.api.deps import PrincipalDep, RuntimeDep, UserDep, acting_app, caller_for
from memory_server.schemas import AddResult, DeleteResult, MemoryOut, MemoryTypeName, SearchResult, StateName
from memory_server.services.base import MAX_DELETE_IDS, MAX_SEARCH_LIMIT
from memory_server.services.filters import MemoryFilter
from memory_server.services.lifecycle import AccessLogEntry, HistoryEntry, StateChange
from memory_server.services.memories import Caller

router = APIRouter(prefix="/api/v1", tags=["memories"])

SortName = Literal["created", "-created", "updated", "-updated", "app", "-app", "importance", "-importance"]


class ChatMessage(BaseModel):
    role: Literal["user", "assistant", "system"]
    content: str


class AddMemoryRequest(BaseModel):
    text: str | None = Field(None, description="What to remember. Give text or messages.")
    messages: list[ChatMessage] | None = Field(
        None, description="A conversation to remember (or extract from)."
    )
    metadata: dict[str, Any] | None = None
    app: str | None = Field(
        None, description="App (client) to attribute the memory to; default DEFAULT_APP_ID."
    )
    infer: bool | None = Field(
        None, description="Let the LLM extract facts (default: when an LLM is configured)."
    )
    memory_type: MemoryTypeName | None = None
    importance: float | None = Field(None, ge=0, le=1)


class UpdateMemoryRequest(BaseModel):
    text: str | None = None
    metadata: dict[str, Any] | None = None
    memory_type: MemoryTypeName | None = None
    importance: float | None = Field(None, ge=0, le=1)


class DeleteMemoriesRequest(BaseModel):
    memory_ids: list[str] = Field(min_length=1, max_length=MAX_DELETE_IDS)


class StateChangeRequest(BaseModel):
    action: Literal["pause", "archive", "activate"]
    memory_ids: list[str] | None = Field(None, min_length=1, max_length=MAX_DELETE_IDS)
    app: str | None = Field(None, description="every memory of this app (name)")
    category: str | None = Field(None, description="every memory in this category")


def _page(params: Params) -> tuple[int, int]:
    return params.size, (params.page - 1) * params.size


@router.get("/memories", response_model=Page[MemoryOut], summary="List memories")
def list_memories(
    rt: RuntimeDep,
    user: UserDep,
    params: Annotated[Params, Query()],
    app: Annotated[list[str] | None, Query(description="only these apps (names)")] = None,
    state: Annotated[
        list[StateName] | None, Query(description="only these states (default: all but deleted)")
    ] = None,
    category: str | None = None,
    memory_type: MemoryTypeName | None = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    q: Annotated[
        str | None, Query(max_length=500, description="text the memory contains (case-insensitive)")
    ] = None,
    sort: Annotated[
        SortName, Query(description="created, updated, app or importance; '-' for descending")
    ] = "-created",
) -> Any:
    limit, offset = _page(params)
    filters = MemoryFilter(
        states=state or ["active", "paused", "archived"],
        apps=app or (),
        category=category,
        memory_type=memory_type,
        created_from=created_from,
        created_to=created_to,
        text=q,
    )
    page = rt.memories.list_memories(caller_for(rt, user), limit, offset, filters, sort, log_access=False)
    return create_page(page.results, total=page.total, params=params)


@router.post("/memories", response_model=AddResult, summary="Add memories")
def add_memories(rt: RuntimeDep, user: UserDep, who: PrincipalDep, body: AddMemoryRequest) -> AddResult:
    messages = [m.model_dump() for m in body.messages] if body.messages is not None else None
    caller = caller_for(rt, user, acting_app(who, body.app))
    if who is not None and who.app is not None:  # an app's own token obeys its paused state
        caller = Caller(caller.user_id, caller.client_name)
    return rt.memories.add(
        caller,
        text=body.text,
        infer=body.infer,
        metadata=body.metadata,
        memory_type=body.memory_type,
        importance=body.importance,
        messages=messages,
    )


@router.delete("/memories", response_model=DeleteResult, summary="Delete many memories")
def delete_memories(rt: RuntimeDep, user: UserDep, body: DeleteMemoriesRequest) -> DeleteResult:
    return rt.memories.delete(caller_for(rt, user), body.memory_ids)


@router.post("/memories/actions/state", response_model=StateChange, summary="Pause, archive or activate")
def change_state(rt: RuntimeDep, user: UserDep, body: StateChangeRequest) -> StateChange:
    return rt.lifecycle.change_state(
        caller_for(rt, user), body.action, body.memory_ids, body.app, body.category
    )


@router.get("/memories/stream", summary="Server-Sent Events of this user's memory changes")
async def stream(request: Request, rt: RuntimeDep, user: UserDep) -> EventSourceResponse:
    """Each change (add, update, state, delete) as an SSE event whose data is JSON."""

    subscription = rt.db.events.subscribe(user)  # registered before "ready" is sent: nothing is missed

    async def events() -> AsyncIterator[dict[str, str]]:
        try:
            yield {"event": "ready", "data": json.dumps({"user_id": user})}
            sequence = 0
            async for event in subscription:
                sequence += 1
                yield {"event": event.type, "id": str(sequence), "data": event.to_json()}
        finally:
            subscription.close()

    return EventSourceResponse(events(), ping=15, send_timeout=30)


@router.get("/memories/{memory_id}", response_model=MemoryOut, summary="Get a memory")
def get_memory(rt: RuntimeDep, user: UserDep, memory_id: str) -> MemoryOut:
    return rt.memories.get(caller_for(rt, user), memory_id)


@router.put("/memories/{memory_id}", response_model=MemoryOut, summary="Update a memory")
def update_memory(rt: RuntimeDep, user: UserDep, memory_id: str, body: UpdateMemoryRequest) -> MemoryOut:
    return rt.memories.update(
        caller_for(rt, user), memory_id, body.text, body.metadata, body.memory_type, body.importance
    )


@router.delete("/memories/{memory_id}", response_model=DeleteResult, summary="Delete a memory")
def delete_memory(rt: RuntimeDep, user: UserDep, memory_id: str) -> DeleteResult:
    return rt.memories.delete(caller_for(rt, user), [memory_id])


@router.get("/memories/{memory_id}/history", response_model=list[HistoryEntry], summary="Versions and states")
def history(rt: RuntimeDep, user: UserDep, memory_id: str) -> list[HistoryEntry]:
    return rt.lifecycle.history(caller_for(rt, user), memory_id)


@router.get(
    "/memories/{memory_id}/access-log", response_model=Page[AccessLogEntry], summary="Reads of a memory"
)
def access_log(rt: RuntimeDep, user: UserDep, memory_id: str, params: Annotated[Params, Query()]) -> Any:
    limit, offset = _page(params)
    page = rt.lifecycle.access_log(caller_for(rt, user), memory_id, limit, offset)
    return create_page(page.results, total=page.total, params=params)


@router.get("/memories/{memory_id}/related", response_model=SearchResult, summary="Nearest memories")
def related(
    rt: RuntimeDep,
    user: UserDep,
    memory_id: str,
    limit: Annotated[int, Query(ge=1, le=MAX_SEARCH_LIMIT)] = 10,
) -> SearchResult:
    return rt.memories.related(caller_for(rt, user), memory_id, limit)


@router.post("/memories/search", response_model=SearchResult, summary="Search memories by meaning")
def search(
    rt: RuntimeDep,
    user: UserDep,
    query: Annotated[str, Body(embed=True)],
    limit: Annotated[int, Body(embed=True, ge=1, le=MAX_SEARCH_LIMIT)] = 10,
) -> SearchResult:
    return rt.memories.search(caller_for(rt, user), query, limit)
