"""mem0's ``Memory`` built from the parts one process shares: embedder, LLM client, history.

``Memory.__init__`` builds its own embedder, vector store, LLM client and history database
from a config; ``SharedMemory`` takes ours instead. This module imports mem0 (0.5 s here,
without the Qdrant client its default config would import, see below; the OpenAI SDK is
imported only if an LLM is configured), so only writes that go through mem0 import it:
see ``mem0_pool.UserMemory``.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from memory_server.config import ProvidersConfig

# Importing mem0 builds a default ``MemoryConfig()`` (the default argument of
# ``Memory.__init__``), whose default vector store config, Qdrant's, imports qdrant-client:
# 1.3 s of CPU and ~40 MB of a server's RSS for a client nothing here uses (mem0 works on our stores, and
# our configs name no Qdrant provider, see ``_UNUSED_STORE``). While mem0 imports, a
# stand-in answers for that one config module; it is gone afterwards.
_QDRANT_CONFIG = "mem0.configs.vector_stores.qdrant"


class _DefaultArgumentOnly(BaseModel):
    model_config = ConfigDict(extra="allow")


if "mem0.memory.main" not in sys.modules and _QDRANT_CONFIG not in sys.modules:
    _stand_in = types.ModuleType(_QDRANT_CONFIG)
    _stand_in.QdrantConfig = _DefaultArgumentOnly  # type: ignore[attr-defined]
    sys.modules[_QDRANT_CONFIG] = _stand_in
    try:
        import mem0.memory.main  # noqa: F401
    finally:
        if sys.modules.get(_QDRANT_CONFIG) is _stand_in:
            del sys.modules[_QDRANT_CONFIG]

import mem0.utils.spacy_models as spacy_models  # noqa: E402
from mem0 import Memory  # noqa: E402
from mem0.configs.base import MemoryConfig  # noqa: E402
from mem0.memory.storage import SQLiteManager  # noqa: E402
from mem0.utils.factory import LlmFactory  # noqa: E402
from mem0.utils.lemmatization import lemmatize_for_bm25  # noqa: E402

# mem0 would download spaCy's en_core_web_sm on first use if spaCy were installed. Our
# lexical retrieval does not come from spaCy, so mark its loaders as failed up front.
spacy_models._load_failed_full = True
spacy_models._load_failed_lemma = True

__all__ = ["SharedMemory", "SharedParts", "lemmatize_for_bm25"]

# mem0's config must name a vector store; ``SharedMemory`` hands it ours instead, so
# this one is never built (FAISS's config class imports nothing; FAISS is not installed,
# so a mem0 code path that did build it would fail loudly, not open a store of its own).
_UNUSED_STORE = {"provider": "faiss", "config": {"path": "/nonexistent/memory-server-unused"}}

# Never called: mem0 insists on an LLM client even when inference is off.
_NO_LLM = {
    "provider": "openai",
    "config": {"api_key": "inference-disabled", "openai_base_url": "http://127.0.0.1:9/v1"},
}


def build_llm(config: MemoryConfig) -> Any:
    """mem0's LLM client for ``config`` (imports the provider's SDK)."""
    return LlmFactory.create(config.llm.provider, config.llm.config)


class _UnusedLLM:
    """Stands in for the LLM client while inference is off: mem0 holds one, never calls it.

    Built for real only if something does reach for it, so that the OpenAI SDK (a second
    to import) stays unloaded.
    """

    def __init__(self, config: MemoryConfig) -> None:
        self._config = config
        self._client: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._client is None:
            self._client = build_llm(self._config)
        return getattr(self._client, name)


@dataclass
class SharedParts:
    """What every user's ``SharedMemory`` of one process uses: config, LLM client, history."""

    config: MemoryConfig
    llm: Any
    history: SQLiteManager

    @classmethod
    def build(cls, providers: ProvidersConfig, history_path: Path) -> SharedParts:
        llm_section: dict[str, Any] = (
            {"provider": providers.llm.provider, "config": providers.llm.config}
            if providers.llm_enabled
            else _NO_LLM
        )
        if llm_section["provider"] == "openai" and not llm_section["config"].get("api_key"):
            # OpenAI-compatible servers such as Ollama or vLLM take any key.
            llm_section = {**llm_section, "config": {**llm_section["config"], "api_key": "not-needed"}}
        history_path.parent.mkdir(parents=True, exist_ok=True)
        config = MemoryConfig(llm=llm_section, history_db_path=str(history_path), vector_store=_UNUSED_STORE)
        llm = build_llm(config) if providers.llm_enabled else _UnusedLLM(config)
        history = SQLiteManager(str(history_path))
        with history._lock:
            # mem0 commits a history row on every add, and SQLite's default rollback
            # journal syncs twice per commit (~2.8 ms of each add here). WAL with NORMAL
            # sync is as safe against a crash of this process; the history is mem0's
            # own audit trail, not the memory itself (that is in SQL and Qdrant).
            history.connection.execute("PRAGMA journal_mode=WAL")
            history.connection.execute("PRAGMA synchronous=NORMAL")
        return cls(config, llm, history)


class SharedMemory(Memory):  # type: ignore[misc]
    """mem0's ``Memory`` on one user's collection, built from shared parts."""

    def __init__(self, parts: SharedParts, embedder: Any, store: Any) -> None:
        # Same attributes as Memory.__init__, without building a second copy of each part.
        self.config = parts.config
        self.embedding_model = embedder
        self.vector_store = store
        self.llm = parts.llm
        self.db = parts.history
        self.collection_name = store.collection_name
        self.api_version = parts.config.version
        self.custom_instructions = parts.config.custom_instructions
        self.reranker = None
        self._entity_store = None
