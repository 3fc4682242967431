"""REST routes of the Slack sync: its status, and a trigger to run it now."""

from __future__ import annotations

from typing import Literal

import anyio
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from memory_server.slack.state import ChannelStatus
from memory_server.slack.sync import SlackSync, SyncReport

router = APIRouter(prefix="/api/v1/slack", tags=["slack"])


class SlackStatus(BaseModel):
    enabled: bool = Field(description="false until SLACK_BOT_TOKEN is set")
    running: bool = Field(description="a sync is running in this server now")
    interval_minutes: float
    target_user: str = Field(description="whose memory receives the messages")
    last_run: SyncReport | None = Field(None, description="the last run in this server since it started")
    channels: list[ChannelStatus] = Field(
        description="per channel (and '*', the workspace): cursor, counts, error"
    )


class SyncStarted(BaseModel):
    status: Literal["started"] = "started"


def _sync(request: Request) -> SlackSync:
    sync: SlackSync = request.app.state.slack
    return sync


@router.get("/status", summary="Slack sync state per channel")
async def slack_status(request: Request) -> SlackStatus:
    sync = _sync(request)
    channels = await anyio.to_thread.run_sync(sync.statuses)
    return SlackStatus(
        enabled=sync.enabled,
        running=sync.running,
        interval_minutes=sync.settings.slack_sync_interval_minutes,
        target_user=sync.caller.user_id,
        last_run=sync.last_report,
        channels=channels,
    )


@router.post("/sync", status_code=202, summary="Run a Slack sync now (409 if one is running)")
async def slack_sync_now(request: Request) -> SyncStarted:
    _sync(request).start()
    return SyncStarted()
