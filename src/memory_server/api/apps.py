"""REST routes for apps (MCP clients), categories and statistics under ``/api/v1``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi_pagination import Page, Params, create_page
from pydantic import BaseModel

from memory_server.api.deps import PrincipalDep, RuntimeDep, UserDep, caller_for, require_unscoped
from memory_server.schemas import MemoryOut
from memory_server.services.apps import AppOut, CategoryOut, Stats

router = APIRouter(prefix="/api/v1", tags=["apps"])


class AppUpdate(BaseModel):
    is_active: bool


@router.get("/apps", response_model=list[AppOut], summary="List apps")
def list_apps(rt: RuntimeDep, user: UserDep) -> list[AppOut]:
    return rt.apps.list_apps(caller_for(rt, user))


@router.get("/apps/{app_id}", response_model=AppOut, summary="Get an app")
def get_app(rt: RuntimeDep, user: UserDep, app_id: str) -> AppOut:
    return rt.apps.get_app(caller_for(rt, user), app_id)


@router.put("/apps/{app_id}", response_model=AppOut, summary="Pause or resume an app")
def update_app(rt: RuntimeDep, user: UserDep, who: PrincipalDep, app_id: str, body: AppUpdate) -> AppOut:
    require_unscoped(who)
    return rt.apps.set_active(caller_for(rt, user), app_id, body.is_active)


@router.get("/apps/{app_id}/memories", response_model=Page[MemoryOut], summary="Memories an app created")
def app_memories(rt: RuntimeDep, user: UserDep, app_id: str, params: Annotated[Params, Query()]) -> Any:
    page = rt.apps.app_memories(caller_for(rt, user), app_id, params.size, (params.page - 1) * params.size)
    return create_page(page.results, total=page.total, params=params)


@router.get("/categories", response_model=list[CategoryOut], summary="Categories with this user's counts")
def categories(rt: RuntimeDep, user: UserDep) -> list[CategoryOut]:
    return rt.apps.categories(caller_for(rt, user))


@router.get("/stats", response_model=Stats, summary="Totals by state, app, category and type")
def stats(rt: RuntimeDep, user: UserDep) -> Stats:
    return rt.apps.stats(caller_for(rt, user))
