"""Finding and repairing drift between SQL and the vector store.

SQL is the source of truth. For each user the check compares the live (not deleted) SQL
memories with the points in the user's collection:

- an **orphan vector** is a point with no live SQL memory (a crash between a vector write
  and its SQL commit, or a failed vector delete): repair deletes it;
- a **missing vector** is a live memory without a point: repair embeds and writes it;
- **stale content** is a point whose text differs from SQL's: repair re-embeds it.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import select

from memory_server.services.base import ServiceBase
from memory_server.services.statements import chunks
from memory_server.storage.mem0_pool import mem0_payload
from memory_server.storage.models import App, Memory, MemoryState, User

log = logging.getLogger(__name__)

MAX_POINTS = 10_000_000


class UserDrift(BaseModel):
    user_id: str
    orphan_vectors: list[str] = Field(default_factory=list)
    missing_vectors: list[str] = Field(default_factory=list)
    stale_content: list[str] = Field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.orphan_vectors or self.missing_vectors or self.stale_content)


class DoctorReport(BaseModel):
    users_checked: int = 0
    repaired: bool = False
    drift: list[UserDrift] = Field(default_factory=list, description="users with drift only")

    @property
    def clean(self) -> bool:
        return not self.drift


def _rows(listed: Any) -> list[Any]:
    """mem0's ``list`` answers a (points, next_offset) pair on Qdrant, or a plain list elsewhere."""
    if isinstance(listed, tuple | list) and listed and isinstance(listed[0], list):
        return list(listed[0])
    return list(listed or [])


class Doctor(ServiceBase):
    """Checks (and optionally repairs) every user's SQL rows against their vectors."""

    def check(self, repair: bool = False, user_id: str | None = None) -> DoctorReport:
        with self.db.session() as session:
            query = select(User.user_id).order_by(User.user_id)
            if user_id is not None:
                query = query.where(User.user_id == user_id)
            users = list(session.scalars(query))
        report = DoctorReport(repaired=repair)
        for uid in users:
            drift = self._check_user(uid, repair)
            report.users_checked += 1
            if not drift.clean:
                report.drift.append(drift)
        return report

    def _check_user(self, user_id: str, repair: bool) -> UserDrift:
        drift = UserDrift(user_id=user_id)
        with self.db.session() as session:
            live = {
                row.id: (row.content, row.created_at, row.updated_at, row.app_id)
                for row in session.execute(
                    select(Memory.id, Memory.content, Memory.created_at, Memory.updated_at, Memory.app_id)
                    .join(User, User.id == Memory.user_id)
                    .where(User.user_id == user_id, Memory.state != MemoryState.deleted.value)
                ).all()
            }
            apps = dict(
                session.execute(select(App.id, App.name).join(User).where(User.user_id == user_id)).all()
            )
        memory = self.pool.get(user_id)
        points = {
            str(p.id): (p.payload or {}).get("data") for p in _rows(memory.store.list(top_k=MAX_POINTS))
        }
        drift.orphan_vectors = sorted(set(points) - set(live))
        drift.missing_vectors = sorted(set(live) - set(points))
        drift.stale_content = sorted(m for m in set(live) & set(points) if points[m] != live[m][0])
        if repair and not drift.clean:
            self._repair(user_id, memory, drift, live, apps)
        return drift

    def _repair(
        self, user_id: str, memory: Any, drift: UserDrift, live: dict[str, Any], apps: dict[str, str]
    ) -> None:
        if drift.orphan_vectors:
            memory.store.delete_many(drift.orphan_vectors)
        rewrite = drift.missing_vectors + drift.stale_content
        for batch in chunks(rewrite, 256):
            texts = [live[m][0] for m in batch]
            vectors = self.pool.embedder.embed_batch(texts)
            payloads = [mem0_payload(user_id, live[m][3], live[m][0], live[m][1], live[m][2]) for m in batch]
            memory.store.insert(vectors=vectors, payloads=payloads, ids=batch)
        log.info(
            "doctor repaired %s: %d orphan, %d missing, %d stale (apps: %s)",
            user_id,
            len(drift.orphan_vectors),
            len(drift.missing_vectors),
            len(drift.stale_content),
            ", ".join(sorted(apps.values())),
        )
