"""An async Python client for memory-server's REST API.

    async with MemoryClient("http://127.0.0.1:8765", user_id="alice") as client:
        added = await client.add("I prefer tea to coffee", app="my-script")
        hits = await client.search("hot drinks")

Errors come back as ``MemoryServerClientError`` subclasses carrying the server's code
and message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from types import TracebackType
from typing import Any, Generic, TypeVar

import httpx
from pydantic import BaseModel

from memory_server.schemas import AddResult, DeleteResult, MemoryOut, SearchResult
from memory_server.services.apps import AppOut, CategoryOut, Stats
from memory_server.services.backup import ImportReport
from memory_server.services.lifecycle import AccessLogEntry, HistoryEntry, StateChange

T = TypeVar("T")

__all__ = [
    "ConflictError",
    "InvalidInputError",
    "MemoryClient",
    "MemoryServerClientError",
    "NotFoundError",
    "Page",
    "PayloadTooLargeError",
    "UnavailableError",
]


class MemoryServerClientError(Exception):
    """The server answered with an error (``status``, ``code``, ``message``)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class InvalidInputError(MemoryServerClientError):
    """400 or 422: the request was malformed or named something invalid."""


class NotFoundError(MemoryServerClientError):
    """404: no such memory or app for this user."""


class ConflictError(MemoryServerClientError):
    """409: the change conflicts with what is stored."""


class PayloadTooLargeError(MemoryServerClientError):
    """413: the text or request body is over the server's limit."""


class UnavailableError(MemoryServerClientError):
    """503: a component of the server is down; retrying later may work."""


_BY_STATUS: dict[int, type[MemoryServerClientError]] = {
    400: InvalidInputError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: InvalidInputError,
    503: UnavailableError,
}


class Page(BaseModel, Generic[T]):
    """One page of a paginated listing."""

    items: list[T]
    total: int
    page: int
    size: int
    pages: int


class MemoryClient:
    """Async client for one user's memories; use as an async context manager."""

    def __init__(
        self,
        base_url: str,
        user_id: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"X-User-Id": user_id} if user_id is not None else {}
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/api/v1", headers=headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> MemoryClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise UnavailableError(0, "unreachable", f"cannot reach the server: {exc}") from exc
        if response.is_success:
            return response
        try:
            error = response.json()["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            code, message = "http_error", response.text[:500]
        raise _BY_STATUS.get(response.status_code, MemoryServerClientError)(
            response.status_code, code, message
        )

    # ------------------------------------------------------------------ memories

    async def add(
        self,
        text: str | None = None,
        *,
        messages: list[dict[str, str]] | None = None,
        app: str | None = None,
        metadata: dict[str, Any] | None = None,
        infer: bool | None = None,
        memory_type: str | None = None,
        importance: float | None = None,
    ) -> AddResult:
        """Store text (or a conversation); returns the memories created or matched."""
        body = {
            "text": text,
            "messages": messages,
            "app": app,
            "metadata": metadata,
            "infer": infer,
            "memory_type": memory_type,
            "importance": importance,
        }
        response = await self._request(
            "POST", "/memories", json={k: v for k, v in body.items() if v is not None}
        )
        return AddResult.model_validate(response.json())

    async def search(self, query: str, limit: int = 10) -> list[MemoryOut]:
        """Active memories closest in meaning to ``query``, best first."""
        response = await self._request("POST", "/memories/search", json={"query": query, "limit": limit})
        return SearchResult.model_validate(response.json()).results

    async def list_memories(
        self,
        *,
        page: int = 1,
        size: int = 50,
        app: list[str] | None = None,
        state: list[str] | None = None,
        category: str | None = None,
        memory_type: str | None = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        q: str | None = None,
        sort: str = "-created",
    ) -> Page[MemoryOut]:
        """One page of memories (default: all but deleted, newest first)."""
        params: dict[str, Any] = {"page": page, "size": size, "sort": sort}
        optional = {"app": app, "state": state, "category": category, "memory_type": memory_type, "q": q}
        params.update({k: v for k, v in optional.items() if v is not None})
        if created_from is not None:
            params["created_from"] = created_from.isoformat()
        if created_to is not None:
            params["created_to"] = created_to.isoformat()
        response = await self._request("GET", "/memories", params=params)
        return Page[MemoryOut].model_validate(response.json())

    async def iterate(self, size: int = 100, **filters: Any) -> AsyncIterator[MemoryOut]:
        """Every memory matching ``filters``, page by page."""
        page = 1
        while True:
            batch = await self.list_memories(page=page, size=size, **filters)
            for memory in batch.items:
                yield memory
            if page >= batch.pages:
                return
            page += 1

    async def get(self, memory_id: str) -> MemoryOut:
        response = await self._request("GET", f"/memories/{memory_id}")
        return MemoryOut.model_validate(response.json())

    async def update(
        self,
        memory_id: str,
        *,
        text: str | None = None,
        metadata: dict[str, Any] | None = None,
        memory_type: str | None = None,
        importance: float | None = None,
    ) -> MemoryOut:
        """Change a memory's text (re-embedded), metadata, type or importance."""
        body = {"text": text, "metadata": metadata, "memory_type": memory_type, "importance": importance}
        response = await self._request(
            "PUT", f"/memories/{memory_id}", json={k: v for k, v in body.items() if v is not None}
        )
        return MemoryOut.model_validate(response.json())

    async def delete(self, *memory_ids: str) -> DeleteResult:
        """Delete memories by id; unknown ids come back in ``not_found``."""
        response = await self._request("DELETE", "/memories", json={"memory_ids": list(memory_ids)})
        return DeleteResult.model_validate(response.json())

    async def set_state(
        self,
        action: str,
        *,
        memory_ids: list[str] | None = None,
        app: str | None = None,
        category: str | None = None,
    ) -> StateChange:
        """``pause``, ``archive`` or ``activate`` memories by id, or all of an app or a category."""
        body = {"action": action, "memory_ids": memory_ids, "app": app, "category": category}
        response = await self._request(
            "POST", "/memories/actions/state", json={k: v for k, v in body.items() if v is not None}
        )
        return StateChange.model_validate(response.json())

    async def history(self, memory_id: str) -> list[HistoryEntry]:
        response = await self._request("GET", f"/memories/{memory_id}/history")
        return [HistoryEntry.model_validate(item) for item in response.json()]

    async def access_log(self, memory_id: str, page: int = 1, size: int = 50) -> Page[AccessLogEntry]:
        response = await self._request(
            "GET", f"/memories/{memory_id}/access-log", params={"page": page, "size": size}
        )
        return Page[AccessLogEntry].model_validate(response.json())

    async def related(self, memory_id: str, limit: int = 10) -> list[MemoryOut]:
        response = await self._request("GET", f"/memories/{memory_id}/related", params={"limit": limit})
        return SearchResult.model_validate(response.json()).results

    # ------------------------------------------------------------------ backup

    async def export(
        self, *, app: str | None = None, since: datetime | None = None, vectors: bool = False
    ) -> bytes:
        """This user's memories as an export file (gzip'd JSON Lines; see docs/backup.md)."""
        body: dict[str, Any] = {"vectors": vectors}
        if app is not None:
            body["app"] = app
        if since is not None:
            body["since"] = since.isoformat()
        response = await self._request("POST", "/backup/export", json=body)
        return response.content

    async def import_file(self, data: bytes, *, mode: str = "skip") -> ImportReport:
        """Import an export file into this user's memories; running it again adds nothing twice."""
        response = await self._request(
            "POST",
            "/backup/import",
            params={"mode": mode},
            content=data,
            headers={"Content-Type": "application/gzip"},
        )
        return ImportReport.model_validate(response.json())

    # ------------------------------------------------------------------ apps and totals

    async def apps(self) -> list[AppOut]:
        response = await self._request("GET", "/apps")
        return [AppOut.model_validate(item) for item in response.json()]

    async def set_app_active(self, app_id: str, is_active: bool) -> AppOut:
        response = await self._request("PUT", f"/apps/{app_id}", json={"is_active": is_active})
        return AppOut.model_validate(response.json())

    async def categories(self) -> list[CategoryOut]:
        response = await self._request("GET", "/categories")
        return [CategoryOut.model_validate(item) for item in response.json()]

    async def stats(self) -> Stats:
        response = await self._request("GET", "/stats")
        return Stats.model_validate(response.json())
