"""Memory change events (add, update, state, delete) for the SSE stream.

Services queue events on the SQL session (``emit``); they are delivered only if the
transaction commits. On PostgreSQL they travel as ``NOTIFY`` in that same transaction, and
every replica's listener fans them out to its local subscribers, so a change made through
any replica reaches every stream. On SQLite (a single process) they are fanned out
directly after the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

CHANNEL = "memory_server_events"
_PENDING = "memory_server_pending_events"
MAX_IDS_PER_EVENT = 100  # keeps a NOTIFY payload well under PostgreSQL's 8000 bytes


@dataclass(frozen=True)
class MemoryEvent:
    """One change: ``type`` is add, update, state or delete."""

    type: str
    user_id: str
    memory_ids: list[str]
    data: dict[str, Any] = field(default_factory=dict)
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def emit(session: Session, event_type: str, user_id: str, memory_ids: list[str], **data: Any) -> None:
    """Queue events on ``session``; they go out when (and only if) it commits."""
    pending: list[MemoryEvent] = session.info.setdefault(_PENDING, [])
    for start in range(0, max(len(memory_ids), 1), MAX_IDS_PER_EVENT):
        pending.append(MemoryEvent(event_type, user_id, memory_ids[start : start + MAX_IDS_PER_EVENT], data))


def take_pending(session: Session) -> list[MemoryEvent]:
    events: list[MemoryEvent] = session.info.pop(_PENDING, [])
    return events


def notify_in_transaction(session: Session, events: list[MemoryEvent]) -> None:
    """PostgreSQL: send the events with the transaction (delivered on commit)."""
    for event in events:
        session.execute(
            text("SELECT pg_notify(:channel, :payload)"), {"channel": CHANNEL, "payload": event.to_json()}
        )


class EventBus:
    """Fans events out to this process's subscribers (one asyncio queue each)."""

    def __init__(self) -> None:
        self._subscribers: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[MemoryEvent], str]] = set()
        self._lock = threading.Lock()

    def deliver(self, events: list[MemoryEvent]) -> None:
        """Hand events to subscribers of their user; safe to call from any thread."""
        with self._lock:
            subscribers = list(self._subscribers)
        for loop, queue, user_id in subscribers:
            for event in events:
                if event.user_id == user_id:
                    try:
                        loop.call_soon_threadsafe(_put, queue, event)
                    except RuntimeError:  # the subscriber's loop has closed
                        continue

    def subscribe(self, user_id: str) -> Subscription:
        """Events of ``user_id`` from this moment on, in commit order (call from the event loop)."""
        queue: asyncio.Queue[MemoryEvent] = asyncio.Queue(maxsize=10_000)
        entry = (asyncio.get_running_loop(), queue, user_id)
        with self._lock:
            self._subscribers.add(entry)

        def close() -> None:
            with self._lock:
                self._subscribers.discard(entry)

        return Subscription(queue, close)

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subscribers)


class Subscription:
    """An async iterator of one subscriber's events; ``close`` it when done."""

    def __init__(self, queue: asyncio.Queue[MemoryEvent], close: Callable[[], None]) -> None:
        self._queue = queue
        self.close = close

    def __aiter__(self) -> AsyncIterator[MemoryEvent]:
        return self

    async def __anext__(self) -> MemoryEvent:
        return await self._queue.get()


def _put(queue: asyncio.Queue[MemoryEvent], event: MemoryEvent) -> None:
    try:
        queue.put_nowait(event)
    except asyncio.QueueFull:
        log.warning("an event stream subscriber is too slow; dropping an event")


async def listen_postgres(
    url: str, bus: EventBus, stop: asyncio.Event, listening: asyncio.Event | None = None
) -> None:
    """Relay NOTIFY events from PostgreSQL to local subscribers until ``stop`` is set.

    Reconnects with backoff when the database goes away.
    """
    import psycopg

    delay = 0.5
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                if listening is not None:
                    listening.set()
                delay = 0.5
                notifies = conn.notifies()
                while not stop.is_set():
                    getter = asyncio.ensure_future(anext(notifies))
                    stopper = asyncio.ensure_future(stop.wait())
                    done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    if getter not in done:
                        getter.cancel()
                        break
                    stopper.cancel()
                    notice = getter.result()
                    try:
                        bus.deliver([MemoryEvent(**json.loads(notice.payload))])
                    except (ValueError, TypeError):
                        log.warning("ignoring a malformed event notification")
        except (psycopg.Error, OSError) as exc:
            log.warning("event listener lost PostgreSQL (%s); retrying", type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            delay = min(delay * 2, 10)
