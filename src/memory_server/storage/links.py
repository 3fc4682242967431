"""Conversation links (``prev_id``, ``next_id``) of an embedded collection's points, in memory.

Ranking spreads part of each candidate's score to its neighbours (storage/ranking.py), so
it needs the links of its ~200 candidates. Read with the candidates from the engine they
cost 18 us a point, 3.6 of a 10k search's 8 ms; from here, a dict lookup. Writers record
what they change; a reader that fetched links from the shard keeps them only if no write
came in between (``epoch``), so a read racing a write cannot cache stale links.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from memory_server.storage.ranking import NEXT, PREV

CACHE_SIZE = 100_000  # links remembered per open collection (~30 MB when full)

Link = tuple[Any, Any]  # (prev_id, next_id), either may be None


def link_of(payload: Mapping[str, Any] | None) -> Link:
    payload = payload or {}
    return payload.get(PREV), payload.get(NEXT)


class LinkCache:
    """Links by point id. Lookups take no lock (a dict read under the GIL); writes do."""

    def __init__(self) -> None:
        self._links: dict[str, Link] = {}
        self._lock = threading.Lock()
        self.epoch = 0  # bumped by every write

    def __len__(self) -> int:
        return len(self._links)

    def get(self, point_id: str) -> Link | None:
        return self._links.get(point_id)

    def keep(self, links: Mapping[str, Link], epoch: int) -> None:
        """Cache links read from the shard when ``epoch`` was current (none written since).

        Past ``CACHE_SIZE`` it stops growing; what is missing is read from the shard.
        """
        with self._lock:
            if epoch == self.epoch and len(self._links) < CACHE_SIZE:
                self._links.update(links)

    def wrote(self, links: Mapping[str, Link]) -> None:
        """Points written with these links."""
        with self._lock:
            self.epoch += 1
            self._links.update(links)

    def merged(self, point_id: str, payload: Mapping[str, Any]) -> None:
        """A payload merged into one point (``set_payload``): only the keys it names change."""
        with self._lock:
            self.epoch += 1
            cached = self._links.get(point_id)
            if cached is not None:
                self._links[point_id] = (payload.get(PREV, cached[0]), payload.get(NEXT, cached[1]))

    def snapshot(self) -> dict[str, Link]:
        """A copy of every cached link (to save at close)."""
        with self._lock:
            return dict(self._links)

    def forget(self, ids: Iterable[str]) -> None:
        """Points deleted or overwritten: read them again when needed."""
        with self._lock:
            self.epoch += 1
            for point_id in ids:
                self._links.pop(point_id, None)

    def learn(
        self, read_page: Callable[[Any], tuple[Sequence[Any], Any]], closed: Callable[[], bool]
    ) -> None:
        """Fill the cache from the whole collection, one page (of records) at a time.

        ``read_page(offset)`` returns records and the next offset (None at the end). The
        engine holds the GIL while it reads, so small pages let requests run in between.
        """
        offset: Any = None
        while len(self._links) < CACHE_SIZE and not closed():
            epoch = self.epoch
            records, offset = read_page(offset)
            self.keep({str(r.id): link_of(r.payload) for r in records}, epoch)
            if offset is None:
                return
