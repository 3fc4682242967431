"""Background jobs of ``memory-server serve``: an ``AsyncIOScheduler`` the app lifespan starts and stops.

Jobs are module-level coroutine functions (so a persistent job store could name them).
Every job runs one instance at a time (``max_instances=1``) and runs missed at most once
(``coalesce``). Jobs that must not run on two replicas at once take ``advisory_lock``:
a PostgreSQL advisory lock; on SQLite one process is assumed (the embedded Qdrant store
allows only one anyway), so the lock is always granted.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import TYPE_CHECKING

import anyio
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from memory_server.errors import Unavailable
from memory_server.storage.database import Database
from memory_server.storage.models import utcnow

if TYPE_CHECKING:
    from memory_server.runtime import Runtime
    from memory_server.slack.sync import SlackSync

log = logging.getLogger(__name__)

# The first Slack sync runs this long after start-up (or one interval, if shorter).
FIRST_RUN_DELAY = timedelta(seconds=10)


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a job name."""
    return int.from_bytes(hashlib.sha256(f"memory-server:{name}".encode()).digest()[:8], "big", signed=True)


@asynccontextmanager
async def advisory_lock(db: Database, name: str) -> AsyncIterator[bool]:
    """Hold the cluster-wide lock ``name`` for the block; yields ``False`` (at once) if another holds it.

    A session-level ``pg_try_advisory_lock`` on a connection kept for the block, so it is
    released when the block ends or, if this process dies, when PostgreSQL drops the session.
    """
    if db.is_sqlite:
        yield True
        return
    key = lock_key(name)
    try:
        connection = await anyio.to_thread.run_sync(db.engine.connect)
        acquired = bool(
            await anyio.to_thread.run_sync(
                lambda: connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
            )
        )
        await anyio.to_thread.run_sync(connection.commit)
    except DBAPIError as exc:
        raise Unavailable("the database is unavailable; cannot take the job lock") from exc
    try:
        yield acquired
    finally:
        with anyio.CancelScope(shield=True):
            try:
                if acquired:
                    await anyio.to_thread.run_sync(
                        lambda: connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    )
                    await anyio.to_thread.run_sync(connection.commit)
            except DBAPIError:
                log.warning("could not release the %s lock; dropping its connection", name)
                connection.invalidate()
            finally:
                await anyio.to_thread.run_sync(connection.close)


async def run_slack_sync(sync: SlackSync) -> None:
    """The Slack sync job: one run; problems are recorded in the sync status, never raised."""
    report = await sync.run()
    if report.status == "error":
        log.warning("Slack sync finished with errors: %s", report.error or "see slack status")
    else:
        log.info("Slack sync %s", report.status)


async def run_maintenance(runtime: Runtime) -> None:
    """The lifecycle job: one pass on one replica at a time (others skip this round)."""
    async with advisory_lock(runtime.db, "maintenance") as acquired:
        if not acquired:
            log.info("maintenance is running on another replica; skipping")
            return
        try:
            report, categorised = await anyio.to_thread.run_sync(runtime.maintain)
        except Exception:
            log.exception("maintenance failed; it runs again at the next interval")
            return
        log.info("maintenance done: %s, categorised %d", report.model_dump(), categorised)


def build_scheduler(
    slack: SlackSync | None = None,
    first_run_delay: timedelta = FIRST_RUN_DELAY,
    runtime: Runtime | None = None,
) -> AsyncIOScheduler:
    """The scheduler with every configured job (call ``start()`` inside a running event loop)."""
    scheduler = AsyncIOScheduler(
        timezone="UTC",
        job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": 300},
    )
    if slack is not None and slack.enabled:
        interval = timedelta(minutes=slack.settings.slack_sync_interval_minutes)
        scheduler.add_job(
            run_slack_sync,
            "interval",
            seconds=interval.total_seconds(),
            args=[slack],
            id="slack-sync",
            name="Slack history sync",
            next_run_time=utcnow() + min(first_run_delay, interval),
        )
    if runtime is not None and runtime.settings.maintenance_interval_minutes > 0:
        every = timedelta(minutes=runtime.settings.maintenance_interval_minutes)
        scheduler.add_job(
            run_maintenance,
            "interval",
            seconds=every.total_seconds(),
            args=[runtime],
            id="maintenance",
            name="Memory lifecycle maintenance",
            next_run_time=utcnow() + min(first_run_delay, every),
        )
    return scheduler
