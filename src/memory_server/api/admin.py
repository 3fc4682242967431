"""Admin REST routes under ``/api/v1/admin``: every user, and one user's memories.

Only an admin credential (an admin token, or a JWT with the admin role) reaches them;
everyone else gets 403. They act through the same services as the user's own routes,
as the app ``admin``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query
from fastapi_pagination import Page, Params, create_page

from memory_server.api.deps import AdminDep, RuntimeDep, caller_for
from memory_server.api.memories import DeleteMemoriesRequest
from memory_server.identity import validate_user_id
from memory_server.runtime import Runtime
from memory_server.schemas import DeleteResult, MemoryOut, SearchResult
from memory_server.services.apps import UserOut
from memory_server.services.base import MAX_SEARCH_LIMIT
from memory_server.services.filters import MemoryFilter
from memory_server.services.memories import Caller

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])
ADMIN_APP = "admin"


def _as(rt: Runtime, user_id: str) -> Caller:
    rt.apps.require_user(validate_user_id(user_id))
    return caller_for(rt, user_id, ADMIN_APP)


@router.get("/users", response_model=list[UserOut], summary="List users with their counts (admin)")
def list_users(rt: RuntimeDep, _admin: AdminDep) -> list[UserOut]:
    return rt.apps.users()


@router.get(
    "/users/{user_id}/memories", response_model=Page[MemoryOut], summary="List a user's memories (admin)"
)
def user_memories(
    rt: RuntimeDep,
    _admin: AdminDep,
    user_id: str,
    params: Annotated[Params, Query()],
    q: Annotated[str | None, Query(max_length=500, description="text the memory contains")] = None,
) -> Any:
    filters = MemoryFilter(states=["active", "paused", "archived"], text=q)
    limit, offset = params.size, (params.page - 1) * params.size
    page = rt.memories.list_memories(_as(rt, user_id), limit, offset, filters, "-created", log_access=False)
    return create_page(page.results, total=page.total, params=params)


@router.post(
    "/users/{user_id}/memories/search",
    response_model=SearchResult,
    summary="Search a user's memories (admin)",
)
def search_user_memories(
    rt: RuntimeDep,
    _admin: AdminDep,
    user_id: str,
    query: Annotated[str, Body(embed=True)],
    limit: Annotated[int, Body(embed=True, ge=1, le=MAX_SEARCH_LIMIT)] = 10,
) -> SearchResult:
    return rt.memories.search(_as(rt, user_id), query, limit)


@router.delete(
    "/users/{user_id}/memories", response_model=DeleteResult, summary="Delete a user's memories (admin)"
)
def delete_user_memories(
    rt: RuntimeDep, _admin: AdminDep, user_id: str, body: DeleteMemoriesRequest
) -> DeleteResult:
    return rt.memories.delete(_as(rt, user_id), body.memory_ids)
