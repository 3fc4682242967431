"""mem0 ``Memory`` instances, one per user, sharing one embedder, LLM and Qdrant client.

``Memory.__init__`` builds its own embedder, vector store, LLM client and history
database from a config. We build those once per process and hand them to a
``UserMemory`` per user instead, held in a bounded LRU pool.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from datetime import datetime
from pathlib import Path
from typing import Any

import mem0.utils.spacy_models as spacy_models
from mem0 import Memory
from mem0.configs.base import MemoryConfig
from mem0.embeddings.base import EmbeddingBase
from mem0.memory.storage import SQLiteManager
from mem0.utils.factory import LlmFactory
from mem0.utils.lemmatization import lemmatize_for_bm25

from memory_server.config import ProvidersConfig
from memory_server.storage.edge import EdgeCollection, EdgeVectorStore
from memory_server.storage.embeddings import Embedder
from memory_server.storage.vectors import UserCollection, VectorStore

VectorCollection = UserCollection | EdgeCollection

log = logging.getLogger(__name__)

# mem0 would download spaCy's en_core_web_sm on first use if spaCy were installed. Our
# lexical retrieval does not come from spaCy, so mark its loaders as failed up front.
spacy_models._load_failed_full = True
spacy_models._load_failed_lemma = True

# Never called: mem0 insists on an LLM client even when inference is off.
_NO_LLM = {
    "provider": "openai",
    "config": {"api_key": "inference-disabled", "openai_base_url": "http://127.0.0.1:9/v1"},
}


class Mem0Embedder(EmbeddingBase):  # type: ignore[misc]
    """mem0's embedding interface over our shared embedder."""

    def __init__(self, embedder: Embedder) -> None:
        super().__init__(None)
        self.embedder = embedder
        self.config.embedding_dims = embedder.dims

    def embed(self, text: str, memory_action: str | None = None) -> list[float]:
        return self.embedder.embed_one(text)

    def embed_batch(self, texts: list[str], memory_action: str = "add") -> list[list[float]]:
        return self.embedder.embed(texts)


class UserMemory(Memory):  # type: ignore[misc]
    """mem0's ``Memory`` bound to one user's collection, built from shared parts."""

    def __init__(
        self,
        config: MemoryConfig,
        embedder: Mem0Embedder,
        store: VectorCollection,
        llm: Any,
        history: SQLiteManager,
    ) -> None:
        # Same attributes as Memory.__init__, without building a second copy of each part.
        self.config = config
        self.embedding_model = embedder
        self.vector_store = store
        self.llm = llm
        self.db = history
        self.collection_name = store.collection_name
        self.api_version = config.version
        self.custom_instructions = config.custom_instructions
        self.reranker = None
        self._entity_store = None

    @property
    def store(self) -> VectorCollection:
        store: VectorCollection = self.vector_store
        return store


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
        llm_section: dict[str, Any] = (
            {"provider": providers.llm.provider, "config": providers.llm.config}
            if self.llm_enabled
            else _NO_LLM
        )
        if llm_section["provider"] == "openai" and not llm_section["config"].get("api_key"):
            # OpenAI-compatible servers such as Ollama or vLLM take any key.
            llm_section = {**llm_section, "config": {**llm_section["config"], "api_key": "not-needed"}}
        history_path.parent.mkdir(parents=True, exist_ok=True)
        self.config = MemoryConfig(
            llm=llm_section,
            history_db_path=str(history_path),
        )
        self.llm = LlmFactory.create(self.config.llm.provider, self.config.llm.config)
        self.history = SQLiteManager(str(history_path))
        with self.history._lock:
            # mem0 commits a history row on every add, and SQLite's default rollback
            # journal syncs twice per commit (~2.8 ms of each add here). WAL with NORMAL
            # sync is as safe against a crash of this process; the history is mem0's
            # own audit trail, not the memory itself (that is in SQL and Qdrant).
            self.history.connection.execute("PRAGMA journal_mode=WAL")
            self.history.connection.execute("PRAGMA synchronous=NORMAL")
        self._size = size
        self._items: OrderedDict[str, UserMemory] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, user_id: str) -> UserMemory:
        """The mem0 memory of ``user_id`` (its collection is created on first use)."""
        with self._lock:
            memory = self._items.get(user_id)
            if memory is not None:
                self._items.move_to_end(user_id)
                return memory
        store = self.vectors.open_collection(user_id)
        memory = UserMemory(self.config, self.embedder, store, self.llm, self.history)
        with self._lock:
            memory = self._items.setdefault(user_id, memory)
            self._items.move_to_end(user_id)
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return memory

    def close(self) -> None:
        with self._lock:
            self._items.clear()
        try:
            self.history.close()
        except Exception:  # closing twice or on a broken file is harmless at shutdown
            log.debug("history db close failed", exc_info=True)


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
        "text_lemmatized": lemmatize_for_bm25(text),
        "created_at": created_at.isoformat(),
        "updated_at": updated_at.isoformat(),
    }
