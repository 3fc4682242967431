"""Hybrid ranking shared by every vector store: dense + BM25, fused, with conversation context.

Each store supplies three primitives (dense candidates, lexical candidates, fetch by id);
the fusion runs here, once, so the embedded engine and a Qdrant server rank alike.
Every step was kept because it raised recall on the LoCoMo dev split
(benchmarks/locomo_recall.py, docs/benchmarks.md):

- dense MiniLM alone 0.42 recall@5, BM25 alone 0.56, reciprocal-rank fusion 0.50-0.56;
- a convex mix of normalised scores (dense min-max, BM25 over its best) beats RRF: 0.60;
- conversation context: a memory stored right after another by the same app (within
  ``link_window``) is linked to it, and part of a hit's score flows to its neighbours:
  0.62. Answers often sit in the turn after the one that names the topic.

The score a caller sees stays the cosine similarity to the query, so thresholds
(``SEARCH_MIN_SCORE``, ``DUPLICATE_THRESHOLD``) keep their meaning; the order is the fused one.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

import numpy as np

from memory_server.storage.lexical import ENCODER

PREV, NEXT = "prev_id", "next_id"


@dataclass(frozen=True)
class RankingConfig:
    """How search ranks; from settings (``SEARCH_MODE`` and friends)."""

    mode: Literal["hybrid", "dense"] = "hybrid"
    dense_weight: float = 0.4
    context_weight: float = 0.2
    depth: int = 100
    link_window: timedelta = timedelta(minutes=30)


@dataclass
class Hit:
    """One ranked memory: ``score`` is its cosine similarity, ``rank`` the fused score."""

    id: str
    score: float
    payload: dict[str, Any]
    rank: float = 0.0
    vector: list[float] | None = None


Candidate = tuple[str, float, dict[str, Any]]


def fuse(
    dense: Sequence[Candidate], lexical: Sequence[Candidate], config: RankingConfig
) -> list[tuple[str, float]]:
    """Fused order of the candidates (ids with their fused score), best first."""
    scores: dict[str, float] = {}
    if dense:
        values = [s for _, s, _ in dense]
        low, high = min(values), max(values)
        span = (high - low) or 1.0
        weight = config.dense_weight if lexical else 1.0
        for mid, s, _ in dense:
            scores[mid] = weight * (s - low) / span
    if lexical:
        best = max(s for _, s, _ in lexical) or 1.0
        weight = 1.0 - config.dense_weight if dense else 1.0
        for mid, s, _ in lexical:
            scores[mid] = scores.get(mid, 0.0) + weight * s / best
    if config.context_weight > 0:
        payloads = {mid: p for mid, _, p in (*dense, *lexical)}
        spread = dict(scores)
        for mid, value in scores.items():
            payload = payloads.get(mid) or {}
            for key in (PREV, NEXT):
                neighbour = payload.get(key)
                if isinstance(neighbour, str):
                    spread[neighbour] = spread.get(neighbour, 0.0) + config.context_weight * value
        scores = spread
    return sorted(scores.items(), key=lambda item: item[1], reverse=True)


def _unit(vector: Sequence[float]) -> np.ndarray:
    array = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(array)) or 1.0
    return array / norm


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


class Primitives(Protocol):
    def _dense(self, vector: list[float], limit: int) -> list[Candidate]: ...

    def _lexical(self, indices: list[int], values: list[float], limit: int) -> list[Candidate]: ...

    def _fetch(self, ids: list[str]) -> list[Hit]: ...

    def _set_payload(self, point_id: str, payload: dict[str, Any]) -> None: ...


class HybridMixin:
    """Hybrid ``rank`` and conversation links, over a store's primitives."""

    ranking: RankingConfig
    user_id: str
    _tail: tuple[str, datetime, Any] | None
    _write_lock: threading.RLock

    def _scoped(self, filters: dict[str, Any] | None) -> dict[str, Any] | None:
        """Drop the ``user_id`` condition: the whole collection is this user's.

        mem0 always filters by user; the collection is per user already, and on an embedded
        store every filter costs time per point. A filter naming another user is a bug and
        is refused, never widened.
        """
        if not filters:
            return None
        remaining = dict(filters)
        owner = remaining.pop("user_id", self.user_id)
        if owner != self.user_id:
            raise ValueError("a user's collection was asked for another user's memories")
        return remaining or None

    def _dense(self, vector: list[float], limit: int) -> list[Candidate]:
        raise NotImplementedError

    def _lexical(self, indices: list[int], values: list[float], limit: int) -> list[Candidate]:
        raise NotImplementedError

    def _fetch(self, ids: list[str]) -> list[Hit]:
        raise NotImplementedError

    def _set_payload(self, point_id: str, payload: dict[str, Any]) -> None:
        raise NotImplementedError

    def rank(self, query: str, vector: list[float], top_k: int, min_score: float = -1.0) -> list[Hit]:
        """The ``top_k`` memories for ``query`` (its ``vector`` already embedded), best first."""
        config = self.ranking
        depth = max(config.depth, top_k)
        dense = self._dense(vector, depth)
        lexical: list[Candidate] = []
        if config.mode == "hybrid":
            indices, values = ENCODER.query(query)
            if indices:
                lexical = self._lexical(indices, values, depth)
        fused = fuse(dense, lexical, config)
        cosine = {mid: s for mid, s, _ in dense}
        payloads = {mid: p for mid, _, p in (*dense, *lexical)}
        unit = _unit(vector)
        hits: list[Hit] = []
        # Walk the fused order until top_k hits pass min_score (so that fewer than top_k
        # means the collection has no more), fetching what the candidates lack in steps.
        for start in range(0, len(fused), top_k):
            window = fused[start : start + top_k]
            missing = [mid for mid, _ in window if mid not in cosine or mid not in payloads]
            if missing:
                for hit in self._fetch(missing):
                    payloads[hit.id] = hit.payload
                    if hit.vector is not None and len(hit.vector) == len(unit):
                        cosine[hit.id] = float(unit @ _unit(hit.vector))
            for mid, value in window:
                if mid in cosine and mid in payloads and cosine[mid] >= min_score:
                    hits.append(Hit(mid, cosine[mid], payloads[mid], rank=value))
                    if len(hits) == top_k:
                        return hits
        return hits

    def _link(self, ids: Sequence[str], payloads: Sequence[dict[str, Any]]) -> None:
        """Link each new memory to the one stored just before it (same app, within the window).

        Called under the write lock, before the points are written; the previous point
        outside this batch gets its ``next_id`` set here.
        """
        window = self.ranking.link_window
        index = {mid: i for i, mid in enumerate(ids)}
        # Oldest first, whatever order the batch came in (an import may list newest first).
        order = sorted(range(len(ids)), key=lambda i: str(payloads[i].get("created_at") or ""))
        for mid, payload in ((ids[i], payloads[i]) for i in order):
            when = _parse_time(payload.get("created_at"))
            if when is None:
                continue
            tail = self._tail
            if tail is not None:
                tail_id, tail_time, tail_app = tail
                try:
                    gap = when - tail_time
                except TypeError:  # naive and aware times: no link
                    gap = window * 2
                if tail_app == payload.get("app_id") and timedelta(0) <= gap <= window and tail_id != mid:
                    payload[PREV] = tail_id
                    if tail_id in index:
                        payloads[index[tail_id]][NEXT] = mid
                    else:
                        try:
                            self._set_payload(tail_id, {NEXT: mid})
                        except Exception:  # the previous point was deleted: no link
                            payload.pop(PREV, None)
            self._tail = (mid, when, payload.get("app_id"))
