"""Builds every long-lived part of the server from one ``Settings`` object."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from memory_server.config import ProvidersConfig, Settings, load_providers
from memory_server.services.access import AccessRecorder
from memory_server.services.apps import AppService
from memory_server.services.base import ActorCache
from memory_server.services.categories import Categorizer
from memory_server.services.doctor import Doctor
from memory_server.services.lifecycle import LifecycleService, MaintenancePolicy, MaintenanceReport
from memory_server.services.memories import Limits, MemoryService
from memory_server.services.tokens import TokenService
from memory_server.storage.database import Database, make_engine, migrate
from memory_server.storage.edge import EdgeVectorStore
from memory_server.storage.embeddings import Embedder, create_embedder
from memory_server.storage.mem0_pool import MemoryPool
from memory_server.storage.migration import migrate_local_to_edge
from memory_server.storage.models import utcnow
from memory_server.storage.ranking import RankingConfig

if TYPE_CHECKING:  # qdrant-client takes a second to import: only a Qdrant server needs it
    from memory_server.storage.vectors import VectorStore

log = logging.getLogger(__name__)


def ranking_config(settings: Settings) -> RankingConfig:
    """The search ranking chosen by settings."""
    return RankingConfig(
        mode=settings.search_mode,
        dense_weight=settings.search_dense_weight,
        context_weight=settings.search_context_weight,
    )


def open_vector_store(
    settings: Settings, providers: ProvidersConfig, dims: int
) -> VectorStore | EdgeVectorStore:
    """A Qdrant server if configured, else the embedded engine (migrating old local-mode data)."""
    store_config = providers.vector_store.config
    ranking = ranking_config(settings)
    if store_config.get("url") or settings.vector_engine == "qdrant-local":
        from memory_server.storage.vectors import VectorStore

        return VectorStore(
            dims,
            path=settings.data_dir / "qdrant",
            url=store_config.get("url"),
            api_key=store_config.get("api_key"),
            ranking=ranking,
        )
    edge = EdgeVectorStore(
        dims,
        settings.data_dir / "edge",
        ranking,
        settings.vector_index_threshold,
        max_open=settings.vector_max_open_collections,
    )
    try:
        migrate_local_to_edge(settings.data_dir / "qdrant", edge)
    except BaseException:
        edge.close()
        raise
    return edge


@dataclass
class Runtime:
    """The database, embedder, vector store, mem0 pool and service of one process."""

    settings: Settings
    providers: ProvidersConfig
    db: Database
    embedder: Embedder
    vectors: VectorStore | EdgeVectorStore
    pool: MemoryPool
    memories: MemoryService
    lifecycle: LifecycleService
    apps: AppService
    categorizer: Categorizer
    policy: MaintenancePolicy
    tokens: TokenService

    @classmethod
    def build(
        cls,
        settings: Settings,
        embedder: Embedder | None = None,
        run_migrations: bool = True,
        clock: Callable[[], datetime] = utcnow,
    ) -> Runtime:
        """Connect, migrate and check everything; raise ``ConfigurationError`` with advice if wrong.

        ``embedder`` lets tests share one loaded model across many runtimes; ``clock`` lets
        them control time (lifecycle rules).
        """
        providers = load_providers(settings)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(make_engine(settings.resolved_database_url))
        try:
            if run_migrations:
                migrate(db.engine)
            if embedder is None:
                embedder = create_embedder(settings, providers.embedder)
            vectors = open_vector_store(settings, providers, embedder.dims)
        except BaseException:
            db.dispose()
            raise
        try:
            vectors.check_dimensions(settings.user_id)
            pool = MemoryPool(
                providers,
                embedder,
                vectors,
                settings.data_dir / "mem0" / "history.db",
                settings.memory_pool_size,
            )
        except BaseException:
            vectors.close()
            db.dispose()
            raise
        limits = Limits(
            max_memory_bytes=settings.max_memory_bytes,
            duplicate_threshold=settings.duplicate_threshold,
            search_min_score=settings.search_min_score,
            short_term_ttl=timedelta(days=settings.short_term_ttl_days),
        )
        categorizer = Categorizer(db, embedder, pool.llm if pool.llm_enabled else None)
        access = AccessRecorder(db, interval=settings.access_log_flush_seconds)
        actors = ActorCache()
        policy = MaintenancePolicy(
            archive_after=timedelta(days=settings.archive_after_days),
            archive_max_importance=settings.archive_max_importance,
            archive_max_access_count=settings.archive_max_access_count,
            promote_access_count=settings.promote_access_count,
        )
        return cls(
            settings,
            providers,
            db,
            embedder,
            vectors,
            pool,
            MemoryService(
                db, pool, limits, clock, after_add=categorizer.enqueue, access=access, actors=actors
            ),
            LifecycleService(db, pool, limits, clock, access=access, actors=actors),
            AppService(db, pool, limits, clock, access=access, actors=actors),
            categorizer,
            policy,
            TokenService(db, clock),
        )

    def doctor(self) -> Doctor:
        """The SQL/vector drift checker over this runtime's stores."""
        return Doctor(self.db, self.pool, self.memories.limits, self.memories.clock)

    def maintain(self) -> tuple[MaintenanceReport, int]:
        """One maintenance pass: lifecycle rules, then categorise what is still uncategorised."""
        report = self.lifecycle.run_maintenance(self.policy)
        return report, self.categorizer.sweep()

    def close(self) -> None:
        """Release files and connections (the embedded Qdrant lock above all)."""
        self.categorizer.close()
        self.memories.access.close()
        self.pool.close()
        self.vectors.close()
        self.db.dispose()
