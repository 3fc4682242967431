"""Access records (who read which memory, and use counts) written behind the request.

A search or a listing used to write its access-log rows and bump ``access_count`` in the
request's own transaction: a read became a write, and every search queued on SQLite's
single write lock (and paid a commit) behind every other. The recorder instead keeps the
records in memory and writes them in one transaction per ``interval`` (default 0.25 s)
from a background thread, so searches only read.

What this trades: a reader in *another* process (a second replica) sees a search's access
records up to ``interval`` later; readers in this process call ``flush()`` first and see
them at once. A clean shutdown writes everything (``close``). A crash loses at most the
last ``interval`` of access records, never a memory. If the database is unreachable the
records wait (up to ``max_pending``; beyond that the oldest are dropped and counted) and
go out with the next successful flush.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import Counter
from sqlalchemy import bindparam, insert, select, update

from memory_server.storage.database import Database
from memory_server.storage.models import Memory, MemoryAccessLog, new_id

log = logging.getLogger(__name__)

ACCESS_DROPPED = Counter(
    "memory_server_access_records_dropped_total",
    "Access records dropped because the database stayed unreachable and the buffer was full",
)


@dataclass(frozen=True)
class _Record:
    app_pk: str
    memory_ids: tuple[str, ...]
    access_type: str
    meta: dict[str, Any]
    at: datetime
    touch: bool


class AccessRecorder:
    """Buffers access records and writes them in batches; ``interval=0`` writes at once."""

    def __init__(
        self,
        db: Database,
        interval: float = 0.25,
        max_pending: int = 100_000,
    ) -> None:
        self.db = db
        self.interval = interval
        self.max_pending = max_pending
        self._pending: list[_Record] = []
        self._count = 0  # memory ids across _pending
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        if interval > 0:
            self._thread = threading.Thread(target=self._loop, name="access-recorder", daemon=True)
            self._thread.start()

    def record(
        self,
        app_pk: str,
        memory_ids: Sequence[str],
        access_type: str,
        meta: dict[str, Any],
        at: datetime,
        touch: bool,
    ) -> None:
        """Note that ``app_pk`` read ``memory_ids``; ``touch`` also counts a use of each."""
        if not memory_ids:
            return
        entry = _Record(app_pk, tuple(memory_ids), access_type, meta, at, touch)
        with self._lock:
            self._pending.append(entry)
            self._count += len(entry.memory_ids)
            while self._count > self.max_pending and len(self._pending) > 1:
                dropped = self._pending.pop(0)
                self._count -= len(dropped.memory_ids)
                ACCESS_DROPPED.inc(len(dropped.memory_ids))
        if self._thread is None or self._stopped.is_set():
            self.flush()

    def flush(self) -> None:
        """Write every buffered record now (readers of access data call this first)."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending, self._count = self._pending, [], 0
            if not batch:
                return
            try:
                self._write(batch)
            except Exception:
                with self._lock:  # keep them for the next attempt, oldest first
                    self._pending[:0] = batch
                    self._count += sum(len(r.memory_ids) for r in batch)
                raise

    def close(self) -> None:
        """Stop the background writer and write what is left."""
        self._stopped.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.flush()
        except Exception:
            log.exception("could not write %d buffered access records at shutdown", self._count)

    def _loop(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(self.interval)
            if self._stopped.is_set():
                return
            try:
                self.flush()
            except Exception as exc:  # the database is away: keep the records, retry later
                log.warning("access records not written yet (%s); will retry", type(exc).__name__)
                self._stopped.wait(min(5.0, self.interval * 8))

    def _write(self, batch: list[_Record]) -> None:
        ids = {mid for r in batch for mid in r.memory_ids}
        uses: dict[str, tuple[int, datetime]] = {}
        for r in batch:
            if r.touch:
                for mid in r.memory_ids:
                    n, last = uses.get(mid, (0, r.at))
                    uses[mid] = (n + 1, max(last, r.at))
        with self.db.session() as session:
            # Memories purged since they were read have no row to point at any more.
            live: set[str] = set()
            id_list = sorted(ids)
            for start in range(0, len(id_list), 500):
                live.update(
                    session.scalars(select(Memory.id).where(Memory.id.in_(id_list[start : start + 500])))
                )
            rows = [
                {
                    "id": new_id(),
                    "memory_id": mid,
                    "app_id": r.app_pk,
                    "access_type": r.access_type,
                    "accessed_at": r.at,
                    "metadata_": r.meta,
                }
                for r in batch
                for mid in r.memory_ids
                if mid in live
            ]
            if rows:
                session.execute(insert(MemoryAccessLog), rows)
            bumps = [{"mid": mid, "n": n, "at": at} for mid, (n, at) in uses.items() if mid in live]
            if bumps:
                # Core executemany through the connection (the ORM's bulk update by primary
                # key cannot add to a column).
                session.connection().execute(
                    update(Memory)
                    .where(Memory.id == bindparam("mid"))
                    .values(
                        access_count=Memory.access_count + bindparam("n"), last_accessed_at=bindparam("at")
                    ),
                    bumps,
                )


def synchronous(db: Database) -> AccessRecorder:
    """A recorder that writes each record at once (services built outside a runtime)."""
    return AccessRecorder(db, interval=0)
