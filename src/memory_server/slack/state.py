"""The Slack sync's own SQL state: per-channel cursors and status, and the ledger of stored messages.

Memory rules stay in the service layer; these tables only record where the sync stands
(so a restart resumes) and which Slack messages became which memories (so edits,
deletions and thread replies can be found again).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from memory_server.slack.client import ts_key
from memory_server.storage.database import Database
from memory_server.storage.models import SlackChannelState, SlackMessage, utcnow

# The row that holds workspace-wide problems (a bad token, Slack down) next to the channels.
WORKSPACE = "*"


class ChannelStatus(BaseModel):
    """One channel's sync state as the CLI and REST show it."""

    team_id: str
    channel_id: str
    channel_name: str
    status: str
    cursor_ts: str | None
    cursor_at: datetime | None
    last_run_at: datetime | None
    last_success_at: datetime | None
    last_error: str | None
    last_added: int
    last_updated: int
    last_deleted: int
    last_skipped: int
    total_added: int
    total_deleted: int
    stored_messages: int


class SyncState:
    """Reads and writes ``slack_channels`` and ``slack_messages``."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def cursor(self, team_id: str, channel_id: str) -> str | None:
        """The ts of the newest top-level message already synced in this channel."""
        with self.db.session() as session:
            row = session.get(SlackChannelState, (team_id, channel_id))
            return row.cursor_ts if row else None

    def record(self, team_id: str, channel_id: str, **values: Any) -> None:
        """Create or update a channel's row; counts given as ``add_*`` are added to the totals."""
        with self.db.session() as session:
            row = session.get(SlackChannelState, (team_id, channel_id), with_for_update=not self.db.is_sqlite)
            if row is None:
                row = SlackChannelState(
                    team_id=team_id,
                    channel_id=channel_id,
                    channel_name="",
                    status="new",
                    last_added=0,
                    last_updated=0,
                    last_deleted=0,
                    last_skipped=0,
                    total_added=0,
                    total_deleted=0,
                )
                session.add(row)
            for key, value in values.items():
                if key.startswith("add_"):
                    setattr(row, key[4:], (getattr(row, key[4:]) or 0) + value)
                elif key == "cursor_ts":
                    if value is not None and (row.cursor_ts is None or _ts(value) > _ts(row.cursor_ts)):
                        row.cursor_ts = value  # a cursor never moves back
                else:
                    setattr(row, key, value)

    def remember(self, team_id: str, channel_id: str, messages: list[tuple[str, str | None, str]]) -> None:
        """Add ``(ts, thread_ts, memory_id)`` rows to the ledger (idempotent)."""
        if not messages:
            return
        rows = [
            {
                "team_id": team_id,
                "channel_id": channel_id,
                "ts": ts,
                "thread_ts": thread_ts,
                "memory_id": memory_id,
                "synced_at": utcnow(),
            }
            for ts, thread_ts, memory_id in messages
        ]
        insert = sqlite_insert if self.db.is_sqlite else pg_insert
        with self.db.session() as session:
            for start in range(0, len(rows), 500):
                statement = insert(SlackMessage).values(rows[start : start + 500])
                session.execute(
                    statement.on_conflict_do_update(
                        index_elements=["team_id", "channel_id", "ts"],
                        set_={"thread_ts": statement.excluded.thread_ts},
                    )
                )

    def forget(self, team_id: str, channel_id: str, timestamps: list[str]) -> None:
        """Drop ledger rows of messages that are gone from Slack."""
        with self.db.session() as session:
            for start in range(0, len(timestamps), 500):
                session.execute(
                    delete(SlackMessage).where(
                        SlackMessage.team_id == team_id,
                        SlackMessage.channel_id == channel_id,
                        SlackMessage.ts.in_(timestamps[start : start + 500]),
                    )
                )

    def top_level_since(self, team_id: str, channel_id: str, oldest: str) -> set[str]:
        """Stored top-level messages newer than ``oldest`` (a re-read of history must see them again)."""
        with self.db.session() as session:
            rows = session.execute(
                select(SlackMessage.ts, SlackMessage.thread_ts).where(
                    SlackMessage.team_id == team_id, SlackMessage.channel_id == channel_id
                )
            ).all()
        return {
            ts for ts, thread_ts in rows if (thread_ts is None or thread_ts == ts) and _ts(ts) > _ts(oldest)
        }

    def active_threads(self, team_id: str, channel_id: str, since: str) -> set[str]:
        """Threads whose newest stored message is newer than ``since``."""
        with self.db.session() as session:
            rows = session.execute(
                select(SlackMessage.thread_ts, func.max(SlackMessage.ts))
                .where(
                    SlackMessage.team_id == team_id,
                    SlackMessage.channel_id == channel_id,
                    SlackMessage.thread_ts.is_not(None),
                )
                .group_by(SlackMessage.thread_ts)
            ).all()
        return {str(thread) for thread, newest in rows if newest is not None and _ts(newest) >= _ts(since)}

    def thread_messages(self, team_id: str, channel_id: str, thread_ts: str) -> set[str]:
        """Stored replies of one thread (the parent excluded)."""
        with self.db.session() as session:
            return {
                ts
                for ts in session.scalars(
                    select(SlackMessage.ts).where(
                        SlackMessage.team_id == team_id,
                        SlackMessage.channel_id == channel_id,
                        SlackMessage.thread_ts == thread_ts,
                    )
                )
                if ts != thread_ts
            }

    def statuses(self) -> list[ChannelStatus]:
        """Every channel's state, the workspace row first."""
        with self.db.session() as session:
            counts = dict(
                session.execute(
                    select(SlackMessage.channel_id, func.count()).group_by(SlackMessage.channel_id)
                ).all()
            )
            rows = session.scalars(select(SlackChannelState)).all()
        out = [
            ChannelStatus(
                team_id=r.team_id,
                channel_id=r.channel_id,
                channel_name=r.channel_name,
                status=r.status,
                cursor_ts=r.cursor_ts,
                cursor_at=ts_to_datetime(r.cursor_ts) if r.cursor_ts else None,
                last_run_at=r.last_run_at,
                last_success_at=r.last_success_at,
                last_error=r.last_error,
                last_added=r.last_added,
                last_updated=r.last_updated,
                last_deleted=r.last_deleted,
                last_skipped=r.last_skipped,
                total_added=r.total_added,
                total_deleted=r.total_deleted,
                stored_messages=int(counts.get(r.channel_id, 0)),
            )
            for r in rows
        ]
        return sorted(out, key=lambda s: (s.channel_id != WORKSPACE, s.channel_name, s.channel_id))


def _ts(value: str) -> tuple[int, int]:
    return ts_key(value)


def ts_to_datetime(ts: str) -> datetime:
    """A Slack ts as an aware UTC datetime."""
    seconds, fraction = _ts(ts)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=fraction)


def datetime_to_ts(when: datetime) -> str:
    """An aware datetime as a Slack ts."""
    return f"{when.timestamp():.6f}"
