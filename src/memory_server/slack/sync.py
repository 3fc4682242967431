"""Slack history into memories: a thin adapter from Slack messages to ``MemoryService.upsert_many``.

One run, per channel:

1. read history after ``min(cursor, now - thread window)`` (the first run goes back
   ``SLACK_BACKFILL_DAYS``): new messages, and recent ones again, to see edits and deletions;
2. re-read every thread with a message inside the thread window, and every thread whose
   parent was just read, so new replies to old threads are found;
3. store kept messages oldest first, in batches; after each batch of history the cursor moves
   to the newest message of that batch, so an interrupted run resumes where it stopped;
4. delete the memories of messages Slack reports deleted, or that a full re-read no longer shows.

Memory ids are ``uuid5`` of ``slack:{team}:{channel}:{ts}``: storing a message again
updates or leaves its memory, never makes a second one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import anyio
from pydantic import BaseModel, Field

from memory_server.config import Settings
from memory_server.errors import Conflict, MemoryServerError, NotFound
from memory_server.scheduler import advisory_lock
from memory_server.services.bulk import BulkItem
from memory_server.services.memories import Caller, MemoryService
from memory_server.slack.client import Channel, SlackClient, SlackError, Team, ts_key
from memory_server.slack.state import WORKSPACE, ChannelStatus, SyncState, datetime_to_ts, ts_to_datetime
from memory_server.storage.database import Database
from memory_server.storage.models import utcnow

log = logging.getLogger(__name__)

APP_NAME = "slack"
LOCK_NAME = "slack-sync"
BATCH = 256
_NAMESPACE = uuid.UUID("2f0c8a63-5b7e-4f4e-9d1a-6c3b8e7f1a20")
_JOIN_LEAVE = {"channel_join", "channel_leave", "group_join", "group_leave"}
_NOT_MESSAGES = {"message_deleted", "message_replied", "tombstone"}


def message_memory_id(team_id: str, channel_id: str, ts: str) -> str:
    """The stable memory id of one Slack message."""
    return str(uuid.uuid5(_NAMESPACE, f"slack:{team_id}:{channel_id}:{ts}"))


class ChannelReport(BaseModel):
    """What one run did in one channel."""

    channel_id: str
    channel_name: str
    status: Literal["ok", "error", "archived"] = "ok"
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    skipped: int = 0
    error: str | None = None


class SyncReport(BaseModel):
    """What one run did: ``busy`` when another run held the lock, ``disabled`` without a token."""

    status: Literal["ok", "error", "busy", "disabled"]
    started_at: datetime
    finished_at: datetime | None = None
    error: str | None = None
    channels: list[ChannelReport] = Field(default_factory=list)


@dataclass
class Progress:
    """Passed to the progress callback: ``done`` of ``total`` messages stored in ``channel``."""

    channel: str
    total: int
    done: int


@dataclass
class _Work:
    history: list[dict[str, Any]] = field(default_factory=list)  # kept top-level messages, oldest first
    history_ts: list[str] = field(default_factory=list)  # every top-level ts read, oldest first
    replies: list[dict[str, Any]] = field(default_factory=list)
    deletes: set[str] = field(default_factory=set)


class SlackSync:
    """Runs syncs, one at a time per process, and (on PostgreSQL) one at a time across replicas."""

    def __init__(
        self,
        settings: Settings,
        service: MemoryService,
        db: Database,
        client_factory: Callable[[], SlackClient] | None = None,
        clock: Callable[[], datetime] = utcnow,
        batch_size: int = BATCH,
    ) -> None:
        self.settings = settings
        self.service = service
        self.state = SyncState(db)
        self.db = db
        self.clock = clock
        self.batch_size = batch_size
        self.caller = Caller(settings.slack_target_user, APP_NAME)
        self._client_factory = client_factory or self._default_client
        self._busy = False
        self._task: asyncio.Task[Any] | None = None
        self.last_report: SyncReport | None = None

    def _default_client(self) -> SlackClient:
        token = self.settings.slack_bot_token
        assert token is not None
        return SlackClient(token.get_secret_value(), self.settings.slack_api_base_url)

    @property
    def enabled(self) -> bool:
        return self.settings.slack_enabled

    @property
    def running(self) -> bool:
        """Whether this process is running a sync now."""
        return self._busy

    def start(self) -> asyncio.Task[SyncReport]:
        """Start a sync in the background now; ``Conflict`` if one is running here."""
        if not self.enabled:
            raise Conflict("the Slack sync is off: set SLACK_BOT_TOKEN and restart the server")
        if self._busy:
            raise Conflict("a Slack sync is already running; try again when it has finished")
        self._busy = True  # taken before the task first runs, so a second request sees it
        self._task = asyncio.create_task(self._run_claimed(None, None, None))
        return self._task

    async def run(
        self,
        channels: list[str] | None = None,
        since: datetime | None = None,
        progress: Callable[[Progress], None] | None = None,
    ) -> SyncReport:
        """One sync; returns at once with status ``busy`` if another one is running."""
        if not self.enabled:
            return SyncReport(status="disabled", started_at=self.clock(), error="SLACK_BOT_TOKEN is not set")
        if self._busy:
            return SyncReport(status="busy", started_at=self.clock(), error="a sync is already running")
        self._busy = True
        self._task = asyncio.current_task()
        return await self._run_claimed(channels, since, progress)

    async def aclose(self) -> None:
        """Cancel a running sync and wait for it (a batch being written finishes first)."""
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run_claimed(
        self,
        channels: list[str] | None,
        since: datetime | None,
        progress: Callable[[Progress], None] | None,
    ) -> SyncReport:
        started = self.clock()
        try:
            async with advisory_lock(self.db, LOCK_NAME) as acquired:
                if not acquired:
                    log.info("Slack sync skipped: another replica is running it")
                    report = SyncReport(
                        status="busy", started_at=started, error="another server is running the Slack sync"
                    )
                else:
                    report = await self._sync(channels, since, progress, started)
        except MemoryServerError as exc:  # the database went away under us
            log.warning("Slack sync failed: %s", exc.message)
            report = SyncReport(status="error", started_at=started, error=exc.message)
        except Exception:
            # Never let a surprise escape into the scheduler or the server; the next run retries.
            log.exception("Slack sync failed")
            report = SyncReport(status="error", started_at=started, error="internal error (see the log)")
        finally:
            self._busy = False
        report.finished_at = self.clock()
        self.last_report = report
        return report

    async def _db(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # Runs blocking work in a thread; a cancelled sync waits for it to finish (no half writes).
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    async def _sync(
        self,
        only: list[str] | None,
        since: datetime | None,
        progress: Callable[[Progress], None] | None,
        started: datetime,
    ) -> SyncReport:
        client = self._client_factory()
        try:
            team = await client.team()
            channels, missing = self._select(
                await client.channels(), only or self.settings.slack_channel_list
            )
        except SlackError as exc:
            log.warning("Slack sync failed: %s", exc.message)
            await self._db(
                self.state.record, "", WORKSPACE, channel_name="(workspace)", status="error",
                last_run_at=started, last_error=exc.message,
            )  # fmt: skip
            return SyncReport(status="error", started_at=started, error=exc.message)
        await self._db(
            self.state.record, "", WORKSPACE, channel_name=f"(workspace {team.team_name})", status="ok",
            last_run_at=started, last_success_at=started, last_error=None,
        )  # fmt: skip
        reports: list[ChannelReport] = []
        for name in missing:
            message = f"no channel named {name!r} is visible to the bot: check SLACK_CHANNELS"
            await self._db(
                self.state.record, team.team_id, name, channel_name=name, status="error",
                last_run_at=started, last_error=message,
            )  # fmt: skip
            reports.append(ChannelReport(channel_id=name, channel_name=name, status="error", error=message))
        for channel in channels:
            reports.append(await self._sync_channel_safely(client, team, channel, since, progress, started))
        failed = any(r.status == "error" for r in reports)
        return SyncReport(status="error" if failed else "ok", started_at=started, channels=reports)

    @staticmethod
    def _select(found: list[Channel], wanted: list[str]) -> tuple[list[Channel], list[str]]:
        if not wanted:
            return [c for c in found if c.is_member], []
        by_key = {c.id: c for c in found} | {c.name: c for c in found}
        chosen = list({by_key[w].id: by_key[w] for w in wanted if w in by_key}.values())
        return chosen, [w for w in wanted if w not in by_key]

    async def _sync_channel_safely(
        self,
        client: SlackClient,
        team: Team,
        channel: Channel,
        since: datetime | None,
        progress: Callable[[Progress], None] | None,
        started: datetime,
    ) -> ChannelReport:
        report = ChannelReport(channel_id=channel.id, channel_name=channel.name)
        if channel.is_archived:
            report.status = "archived"
            await self._db(
                self.state.record, team.team_id, channel.id, channel_name=channel.name, status="archived",
                last_run_at=started, last_error=None,
            )  # fmt: skip
            return report
        await self._db(
            self.state.record, team.team_id, channel.id, channel_name=channel.name, status="running",
            last_run_at=started,
        )  # fmt: skip
        try:
            await self._sync_channel(client, team, channel, since, progress, report)
        except (SlackError, MemoryServerError) as exc:
            report.status, report.error = "error", exc.message
            log.warning("Slack sync of #%s failed: %s", channel.name, exc.message)
        await self._db(
            self.state.record, team.team_id, channel.id, status=report.status, last_error=report.error,
            last_added=report.added, last_updated=report.updated, last_deleted=report.deleted,
            last_skipped=report.skipped, add_total_added=report.added, add_total_deleted=report.deleted,
            **({"last_success_at": started} if report.status == "ok" else {}),
        )  # fmt: skip
        return report

    async def _sync_channel(
        self,
        client: SlackClient,
        team: Team,
        channel: Channel,
        since: datetime | None,
        progress: Callable[[Progress], None] | None,
        report: ChannelReport,
    ) -> None:
        now = self.clock()
        window_start = datetime_to_ts(now - timedelta(days=self.settings.slack_thread_window_days))
        cursor = await self._db(self.state.cursor, team.team_id, channel.id)
        if since is not None:
            oldest = datetime_to_ts(since)
        elif cursor is not None:
            oldest = min(cursor, window_start, key=ts_key)
        else:
            oldest = datetime_to_ts(now - timedelta(days=self.settings.slack_backfill_days))
        work = await self._collect(client, team, channel, oldest, window_start)

        total = len(work.history) + len(work.replies)
        done = 0
        if progress:
            progress(Progress(channel.name, total, 0))
        # History oldest first; the cursor follows each stored batch.
        size = self.batch_size
        for start in range(0, len(work.history_ts), size):
            chunk = work.history_ts[start : start + size]
            batch = [m for m in work.history if m["ts"] in set(chunk)]
            await self._store(client, team, channel, batch, report)
            await self._db(self.state.record, team.team_id, channel.id, cursor_ts=chunk[-1])
            done += len(batch)
            if progress:
                progress(Progress(channel.name, total, done))
        for start in range(0, len(work.replies), size):
            batch = work.replies[start : start + size]
            await self._store(client, team, channel, batch, report)
            done += len(batch)
            if progress:
                progress(Progress(channel.name, total, done))
        await self._delete(team, channel, sorted(work.deletes, key=ts_key), report)

    async def _collect(
        self, client: SlackClient, team: Team, channel: Channel, oldest: str, window_start: str
    ) -> _Work:
        """Read history and threads; sort messages into writes and deletes."""
        work = _Work()
        threads: set[str] = set()
        seen: set[str] = set()
        for message in await client.history(channel.id, oldest):
            subtype = message.get("subtype")
            if subtype == "message_deleted":
                work.deletes.add(str(message.get("deleted_ts", "")))
                continue
            if subtype == "message_changed" and isinstance(message.get("message"), dict):
                message = message["message"]
            ts = str(message.get("ts", ""))
            if not ts:
                continue
            seen.add(ts)
            work.history_ts.append(ts)
            if message.get("reply_count") and message.get("thread_ts", ts) == ts:
                threads.add(ts)  # a parent inside the re-read window: its thread is re-read too
            if subtype == "tombstone":
                work.deletes.add(ts)
            elif self._keep(message):
                work.history.append(message)
        # Stored top-level messages that a complete re-read no longer shows were deleted.
        stored = await self._db(self.state.top_level_since, team.team_id, channel.id, oldest)
        work.deletes |= stored - seen
        threads |= await self._db(self.state.active_threads, team.team_id, channel.id, window_start)
        history_ids = {m["ts"] for m in work.history}
        for thread_ts in sorted(threads, key=ts_key):
            stored_replies = await self._db(self.state.thread_messages, team.team_id, channel.id, thread_ts)
            thread = await client.replies(channel.id, thread_ts)
            if thread is None:  # the whole thread is gone
                work.deletes |= stored_replies | {thread_ts}
                continue
            present = {str(m.get("ts")) for m in thread}
            work.deletes |= stored_replies - present
            for reply in thread:
                ts = str(reply.get("ts", ""))
                if ts == thread_ts or ts in history_ids:
                    continue  # the parent (and broadcast replies) came with the history
                if reply.get("subtype") == "tombstone":
                    work.deletes.add(ts)
                elif self._keep(reply):
                    work.replies.append(reply)
        kept = {m["ts"] for m in work.history} | {m["ts"] for m in work.replies}
        work.deletes -= kept
        return work

    def _keep(self, message: dict[str, Any]) -> bool:
        subtype = message.get("subtype")
        if subtype in _NOT_MESSAGES:
            return False
        if subtype in _JOIN_LEAVE:
            return self.settings.slack_include_join_leave
        if subtype == "bot_message" or message.get("bot_id"):
            return self.settings.slack_include_bot_messages
        return bool(str(message.get("text") or "").strip())

    async def _store(
        self,
        client: SlackClient,
        team: Team,
        channel: Channel,
        messages: list[dict[str, Any]],
        report: ChannelReport,
    ) -> None:
        if not messages:
            return
        items = [await self._item(client, team, channel, m) for m in messages]
        result = await self._db(self.service.upsert_many, self.caller, items)
        report.added += len(result.added)
        report.updated += len(result.updated)
        report.unchanged += len(result.unchanged)
        report.skipped += len(result.skipped)
        ledger = [
            (str(m["ts"]), _thread_of(m), item.memory_id)
            for m, item in zip(messages, items, strict=True)
            if item.memory_id not in result.skipped or result.skipped[item.memory_id] == "deleted"
        ]
        await self._db(self.state.remember, team.team_id, channel.id, ledger)

    async def _item(
        self, client: SlackClient, team: Team, channel: Channel, message: dict[str, Any]
    ) -> BulkItem:
        ts = str(message["ts"])
        thread_ts = _thread_of(message)
        author_id = str(message.get("user") or message.get("bot_id") or "")
        if message.get("user"):
            author = await client.user_name(str(message["user"]))
        else:
            author = str(
                message.get("username")
                or (message.get("bot_profile") or {}).get("name")
                or author_id
                or "bot"
            )
        when = ts_to_datetime(ts)
        where = f"#{channel.name}" + (", in a thread" if thread_ts and thread_ts != ts else "")
        text = f"{author} in {where} ({when:%Y-%m-%d %H:%M} UTC): {str(message.get('text', '')).strip()}"
        permalink = ""
        if team.url:
            permalink = f"{team.url.rstrip('/')}/archives/{channel.id}/p{ts.replace('.', '')}"
            if thread_ts and thread_ts != ts:
                permalink += f"?thread_ts={thread_ts}&cid={channel.id}"
        metadata = {
            "source": "slack",
            "team": team.team_id,
            "channel_id": channel.id,
            "channel_name": channel.name,
            "ts": ts,
            "thread_ts": thread_ts,
            "author_id": author_id,
            "author_name": author,
            "permalink": permalink,
        }
        return BulkItem(message_memory_id(team.team_id, channel.id, ts), text, metadata, when)

    async def _delete(
        self, team: Team, channel: Channel, timestamps: list[str], report: ChannelReport
    ) -> None:
        if not timestamps:
            return
        ids = {message_memory_id(team.team_id, channel.id, ts): ts for ts in timestamps}
        for start in range(0, len(timestamps), 1000):
            chunk = list(ids)[start : start + 1000]
            try:
                result = await self._db(self.service.delete, self.caller, chunk)
                report.deleted += len(result.deleted)
            except NotFound:
                pass  # never stored (filtered out, or deleted by its user already)
        await self._db(self.state.forget, team.team_id, channel.id, timestamps)

    def statuses(self) -> list[ChannelStatus]:
        """Per-channel state from the database."""
        return self.state.statuses()


def _thread_of(message: dict[str, Any]) -> str | None:
    thread_ts = message.get("thread_ts")
    return str(thread_ts) if thread_ts else None
