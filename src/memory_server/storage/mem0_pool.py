"""Per-user memories: each user's vector collection, and mem0's ``Memory`` over it for writes.

``Memory.__init__`` builds its own embedder, vector store, LLM client and history
database from a config. We build those once per process and hand them to a
``UserMemory`` per user instead, held in a bounded LRU pool.

mem0 takes seconds to import (``storage/mem0_memory.py`` says why) and only adds and edits
go through it: searches use the collection directly. So mem0 is imported, and its shared
parts built, on the first write that needs it, not at start-up; with an LLM configured the
categoriser needs the client at once, and start-up builds them.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memory_server.config import ProvidersConfig
from memory_server.storage.edge import EdgeCollection, EdgeVectorStore
from memory_server.storage.embeddings import Embedder

if TYPE_CHECKING:
    from memory_server.storage.mem0_memory import SharedMemory, SharedParts
    from memory_server.storage.vectors import UserCollection, VectorStore

    VectorCollection = UserCollection | EdgeCollection

log = logging.getLogger(__name__)


class Mem0Embedder:
    """mem0's embedding interface (``embed``, ``embed_batch``) over our shared embedder."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder

    def embed(self, text: str, memory_action: str | None = None) -> list[float]:
        return self.embedder.embed_one(text)

    def embed_batch(self, texts: list[str], memory_action: str = "add") -> list[list[float]]:
        return self.embedder.embed(texts)


class UserMemory:
    """One user's memory: their collection (``store``), and mem0's ``Memory`` for writes."""

    def __init__(self, pool: MemoryPool, store: VectorCollection) -> None:
        self._pool = pool
        self._store = store
        self._mem0: SharedMemory | None = None

    @property
    def store(self) -> VectorCollection:
        return self._store

    @property
    def mem0(self) -> SharedMemory:
        """mem0's ``Memory`` over this user's collection (mem0 is imported on first use)."""
        if self._mem0 is None:
            from memory_server.storage.mem0_memory import SharedMemory

            self._mem0 = SharedMemory(self._pool.parts, self._pool.embedder, self._store)
        return self._mem0

    def add(self, messages: Any, **kwargs: Any) -> Any:
        """mem0's ``Memory.add``."""
        return self.mem0.add(messages, **kwargs)

    def update(self, memory_id: str, **kwargs: Any) -> Any:
        """mem0's ``Memory.update``."""
        return self.mem0.update(memory_id, **kwargs)


class MemoryPool:
    """A bounded LRU pool of per-user ``UserMemory`` objects."""

    def __init__(
        self,
        providers: ProvidersConfig,
        embedder: Embedder,
        vectors: VectorStore | EdgeVectorStore,
        history_path: Path,
        size: int,
    ) -> None:
        self.providers = providers
        self.llm_enabled = providers.llm_enabled
        self.embedder = Mem0Embedder(embedder)
        self.vectors = vectors
        self.history_path = history_path
        self._parts: SharedParts | None = None
        self._size = size
        self._items: OrderedDict[str, UserMemory] = OrderedDict()
        self._lock = threading.Lock()
        self._parts_lock = threading.Lock()

    @property
    def parts(self) -> SharedParts:
        """mem0's config, LLM client and history database, built on first use."""
        with self._parts_lock:
            if self._parts is None:
                from memory_server.storage.mem0_memory import SharedParts

                self._parts = SharedParts.build(self.providers, self.history_path)
            return self._parts

    def warm_up(self, delay: float = 3.0) -> None:
        """Build mem0's parts on a background thread ``delay`` seconds from now.

        Start-up leaves mem0 out (0.5 s of imports); without this, the first add after a
        start would pay for it (0.5 s). The delay keeps it away from the first
        searches, which a client usually sends right after connecting.
        """
        timer = threading.Timer(delay, self._warm)
        timer.daemon = True
        timer.start()

    def _warm(self) -> None:
        try:
            self.parts  # noqa: B018 (builds them)
        except Exception:  # the first add will try again, and say what is wrong
            log.warning("preparing mem0 in the background failed", exc_info=True)

    @property
    def llm(self) -> Any:
        """mem0's LLM client (of the configured provider when inference is on)."""
        return self.parts.llm

    def get(self, user_id: str) -> UserMemory:
        """The memory of ``user_id`` (its collection is created on first use)."""
        with self._lock:
            memory = self._items.get(user_id)
            if memory is not None:
                self._items.move_to_end(user_id)
                return memory
        store = self.vectors.open_collection(user_id)
        memory = UserMemory(self, store)
        with self._lock:
            memory = self._items.setdefault(user_id, memory)
            self._items.move_to_end(user_id)
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return memory

    def close(self) -> None:
        with self._lock:
            self._items.clear()
        with self._parts_lock:
            parts, self._parts = self._parts, None
        if parts is None:
            return
        try:
            parts.history.close()
        except Exception:  # closing twice or on a broken file is harmless at shutdown
            log.debug("history db close failed", exc_info=True)


def _lemmatize(text: str) -> str:
    from memory_server.storage.mem0_memory import lemmatize_for_bm25

    return str(lemmatize_for_bm25(text))


def mem0_payload(
    user_id: str, app_id: str, text: str, created_at: datetime, updated_at: datetime
) -> dict[str, Any]:
    """The Qdrant payload mem0 writes for a memory, for points we write in bulk ourselves.

    Same keys as ``Memory._create_memory`` (with ``infer=False``), so mem0 reads bulk-written
    points exactly like its own.
    """
    return {
        "user_id": user_id,
        "app_id": app_id,
        "role": "user",
        "data": text,
        "hash": hashlib.md5(text.encode()).hexdigest(),
        "text_lemmatized": _lemmatize(text),
        "created_at": created_at.isoformat(),
        "updated_at": updated_at.isoformat(),
    }
