"""REST routes for export and import (``/api/v1/backup``), over the backup service."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from memory_server.api.deps import RuntimeDep, UserDep
from memory_server.errors import PayloadTooLarge
from memory_server.services.backup import ImportReport

router = APIRouter(prefix="/api/v1/backup", tags=["backup"])

IMPORT_PATH = "/api/v1/backup/import"


class ExportRequest(BaseModel):
    app: str | None = Field(None, description="only this app's memories")
    since: datetime | None = Field(None, description="only memories created or changed at or after this time")
    vectors: bool = Field(
        False, description="include each memory's vector (a larger file; skips re-embedding)"
    )


@router.post(
    "/export",
    summary="Export this user's memories (gzip'd JSON Lines)",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/gzip": {}}}},
)
def export(rt: RuntimeDep, user: UserDep, body: ExportRequest | None = None) -> StreamingResponse:
    body = body or ExportRequest()
    since = body.since if body.since is None or body.since.tzinfo else body.since.replace(tzinfo=UTC)
    chunks = rt.memories.backups.export(user, app=body.app, since=since, include_vectors=body.vectors)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        chunks,
        media_type="application/gzip",
        headers={"Content-Disposition": f'attachment; filename="memories-{user}-{stamp}.jsonl.gz"'},
    )


@router.post(
    "/import",
    response_model=ImportReport,
    summary="Import an export file into this user's memories",
    openapi_extra={
        "requestBody": {"content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}}}
    },
)
async def import_(
    request: Request,
    rt: RuntimeDep,
    user: UserDep,
    mode: Annotated[
        Literal["skip", "overwrite"], Query(description="what to do with ids that exist")
    ] = "skip",
) -> ImportReport:
    """The request body is the file (gzip'd or plain JSON Lines); it always goes to the calling user."""
    limit = rt.settings.max_import_bytes
    with tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024) as spool:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the import file is over MAX_IMPORT_BYTES ({limit} bytes)")
            spool.write(chunk)
        spool.seek(0)
        return await anyio.to_thread.run_sync(
            lambda: rt.memories.backups.import_file(spool, user_id=user, mode=mode, client_name="rest-import")
        )
