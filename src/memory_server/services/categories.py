"""Assigning categories to memories, off the request path.

With an LLM configured (any mem0 provider: OpenAI or an OpenAI-compatible server) the
LLM picks from the known categories and may propose a new one. Without one, each memory
gets the categories whose descriptions are nearest to it in embedding space. Work runs on
one background thread; a failure leaves the memory uncategorised (never lost), and the
maintenance job's sweep picks it up again.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from memory_server.storage.database import Database
from memory_server.storage.embeddings import Embedder
from memory_server.storage.models import Category, Memory, MemoryCategory, MemoryState

log = logging.getLogger(__name__)

_NAME = re.compile(r"[a-z][a-z0-9_-]{1,31}")
MAX_PER_MEMORY = 3

PROMPT = """You sort a user's memories into categories.
Known categories (name: meaning):
{categories}

For each memory below give 1 to {most} category names. Prefer known categories; only when none
fits, propose one new short lowercase name (a single word). Answer with JSON only:
{{"categories": {{"<memory id>": ["name", ...], ...}}}}

Memories:
{memories}"""


class Categorizer:
    """Queues memory ids and categorises them on a background thread."""

    def __init__(
        self,
        db: Database,
        embedder: Embedder,
        llm: Any | None,
        min_score: float = 0.15,
        second_within: float = 0.04,
    ) -> None:
        self.db = db
        self.embedder = embedder
        self.llm = llm
        self.min_score = min_score
        self.second_within = second_within
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="categorize")
        self._pending: set[Future[None]] = set()
        self._queued: set[str] = set()
        self._scheduled = False
        self._lock = threading.Lock()
        self._category_vectors: tuple[tuple[str, ...], np.ndarray, np.ndarray] | None = None

    def enqueue(self, memory_ids: list[str]) -> None:
        """Categorise these memories soon; returns at once.

        Ids queued while a batch runs are taken together by the next one: under a stream
        of adds that is one read and one write transaction per batch, not per memory.
        """
        if not memory_ids:
            return
        with self._lock:
            self._queued.update(memory_ids)
            if self._scheduled:
                return
            self._scheduled = True
        try:
            future = self._executor.submit(self._run_queued)
        except RuntimeError:  # shutting down: the sweep will catch up later
            with self._lock:
                self._scheduled = False
            return
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._done)

    def _run_queued(self) -> None:
        with self._lock:
            batch, self._queued, self._scheduled = list(self._queued), set(), False
        for start in range(0, len(batch), 500):
            self._run(batch[start : start + 500])

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)

    def drain(self, timeout: float = 30) -> None:
        """Wait for queued work (tests, CLI)."""
        with self._lock:
            pending = list(self._pending)
        for future in pending:
            future.result(timeout=timeout)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _run(self, memory_ids: list[str]) -> None:
        try:
            self.categorize(memory_ids)
        except Exception:
            log.exception(
                "categorising %d memories failed; the maintenance sweep will retry", len(memory_ids)
            )

    def sweep(self, limit: int = 500) -> int:
        """Categorise up to ``limit`` live memories that have no category yet; returns how many."""
        with self.db.session() as session:
            ids = list(
                session.scalars(
                    select(Memory.id)
                    .where(
                        Memory.state != MemoryState.deleted.value,
                        ~Memory.id.in_(select(MemoryCategory.memory_id)),
                    )
                    .limit(limit)
                )
            )
        if ids:
            self.categorize(ids)
        return len(ids)

    def categorize(self, memory_ids: Sequence[str]) -> None:
        """Assign categories to the given memories (those already categorised are skipped)."""
        with self.db.session() as session:
            rows = session.execute(
                select(Memory.id, Memory.content).where(
                    Memory.id.in_(list(memory_ids)),
                    Memory.state != MemoryState.deleted.value,
                    ~Memory.id.in_(select(MemoryCategory.memory_id)),
                )
            ).all()
            categories = {c.name: (c.id, c.description or "") for c in session.scalars(select(Category))}
        if not rows:
            return
        texts = {memory_id: content for memory_id, content in rows}
        chosen = (
            self._by_llm(texts, categories) if self.llm is not None else self._by_embedding(texts, categories)
        )
        self._store(chosen, categories)

    def _by_embedding(
        self, texts: dict[str, str], categories: dict[str, tuple[str, str]]
    ) -> dict[str, list[str]]:
        """Categories whose name or one of whose description phrases is nearest to each memory.

        A category is scored by its best phrase: descriptions list several topics, and an
        average over all of them matches nothing well.
        """
        names = tuple(sorted(categories))
        if self._category_vectors is None or self._category_vectors[0] != names:
            phrases: list[str] = []
            owners: list[int] = []
            for index, name in enumerate(names):
                for phrase in [name, *re.split(r",|\band\b", categories[name][1])]:
                    if phrase.strip():
                        phrases.append(phrase.strip())
                        owners.append(index)
            matrix = np.asarray(self.embedder.embed(phrases), dtype=np.float32)
            self._category_vectors = (names, matrix, np.asarray(owners))
        _, matrix, owners_array = self._category_vectors
        ids = list(texts)
        vectors = np.asarray(self.embedder.embed([texts[i] for i in ids]), dtype=np.float32)
        phrase_scores = vectors @ matrix.T
        scores = np.full((len(ids), len(names)), -1.0, dtype=np.float32)
        np.maximum.at(scores.T, owners_array, phrase_scores.T)
        chosen: dict[str, list[str]] = {}
        for row, memory_id in enumerate(ids):
            order = np.argsort(-scores[row])
            best = float(scores[row][order[0]])
            picks: list[str] = []
            if best >= self.min_score:
                picks = [
                    names[j]
                    for j in order[:MAX_PER_MEMORY]
                    if float(scores[row][j]) >= best - self.second_within
                ]
            chosen[memory_id] = picks
        return chosen

    def _by_llm(self, texts: dict[str, str], categories: dict[str, tuple[str, str]]) -> dict[str, list[str]]:
        listing = "\n".join(f"- {name}: {desc}" for name, (_, desc) in sorted(categories.items()))
        memories = "\n".join(f"- {mid}: {text[:500]}" for mid, text in texts.items())
        response = self.llm.generate_response(  # type: ignore[union-attr]
            messages=[
                {
                    "role": "user",
                    "content": PROMPT.format(categories=listing, most=MAX_PER_MEMORY, memories=memories),
                }
            ],
            response_format={"type": "json_object"},
        )
        try:
            answer = json.loads(_strip_fences(str(response))).get("categories", {})
        except (ValueError, AttributeError):
            log.warning("the LLM's category answer was not JSON; falling back to embeddings")
            return self._by_embedding(texts, categories)
        chosen: dict[str, list[str]] = {}
        for memory_id in texts:
            names = answer.get(memory_id) or []
            if isinstance(names, str):
                names = [names]
            clean = [
                n.strip().lower() for n in names if isinstance(n, str) and _NAME.fullmatch(n.strip().lower())
            ]
            chosen[memory_id] = list(dict.fromkeys(clean))[:MAX_PER_MEMORY]
        return chosen

    def _store(self, chosen: dict[str, list[str]], categories: dict[str, tuple[str, str]]) -> None:
        ids = {name: category_id for name, (category_id, _) in categories.items()}
        for name in {n for names in chosen.values() for n in names} - set(ids):
            ids[name] = self._create_category(name)
        rows = [
            {"memory_id": memory_id, "category_id": ids[name]}
            for memory_id, names in chosen.items()
            for name in names
        ]
        if not rows:
            return
        try:
            with self.db.session() as session:
                session.execute(insert(MemoryCategory), rows)
        except IntegrityError:
            # A memory was deleted meanwhile, or categorised twice: store what still fits, one by one.
            for row in rows:
                try:
                    with self.db.session() as session:
                        session.execute(insert(MemoryCategory), [row])
                except IntegrityError:
                    continue

    def _create_category(self, name: str) -> str:
        try:
            with self.db.session() as session:
                category = Category(name=name, description="proposed by the LLM")
                session.add(category)
                session.flush()
                return category.id
        except IntegrityError:
            with self.db.session() as session:
                found = session.scalar(select(Category.id).where(Category.name == name))
                assert found is not None
                return found


def _strip_fences(text: str) -> str:
    text = text.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    return text
