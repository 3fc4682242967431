"""Moving vectors from the old embedded format (qdrant-client local mode) to the edge engine.

Runs at start-up (and from ``memory-server migrate``) when ``$MEMORY_DATA_DIR/qdrant``
holds collections and the embedded engine is in use. Points keep their ids, vectors and
payloads; BM25 vectors and conversation links are added on the way. The old directory is
renamed to ``qdrant.migrated`` afterwards, never deleted, so a failed or interrupted
migration can simply run again (an upsert of the same ids changes nothing).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from memory_server.errors import ConfigurationError
from memory_server.identity import COLLECTION_PREFIX, dimension_mismatch
from memory_server.storage.edge import EdgeCollection, EdgeVectorStore

log = logging.getLogger(__name__)

_PAGE = 1000


def _has_collections(path: Path) -> bool:
    collections = path / "collection"
    return collections.is_dir() and any(p.name.startswith(COLLECTION_PREFIX) for p in collections.iterdir())


def migrate_local_to_edge(old: Path, edge: EdgeVectorStore) -> int:
    """Copy every collection of the local-mode store at ``old`` into ``edge``; return the points moved."""
    if not _has_collections(old):
        return 0
    from qdrant_client import QdrantClient

    from memory_server.storage.vectors import _vector_size

    try:
        client = QdrantClient(path=str(old))
    except RuntimeError as exc:
        raise ConfigurationError(
            f"the old embedded Qdrant store in {old} is in use by another process; stop it and start again"
        ) from exc
    moved = 0
    try:
        for description in client.get_collections().collections:
            name = description.name
            if not name.startswith(COLLECTION_PREFIX):
                continue
            size = _vector_size(client.get_collection(name))
            if size is not None and size != edge.dims:
                raise ConfigurationError(dimension_mismatch(name, size, edge.dims))
            moved += _copy(client, name, edge)
    finally:
        client.close()
    old.rename(old.with_name(old.name + ".migrated"))
    log.warning("migrated %d vectors from %s to the embedded engine in %s", moved, old, edge.path)
    return moved


def _copy(client: Any, name: str, edge: EdgeVectorStore) -> int:
    from memory_server.storage.vectors import _dense_vector

    records: list[Any] = []
    offset = None
    while True:
        page, offset = client.scroll(
            collection_name=name, limit=_PAGE, offset=offset, with_payload=True, with_vectors=True
        )
        records.extend(page)
        if offset is None:
            break
    # Oldest first, so that conversation links form as they would have at write time.
    records.sort(key=lambda r: str((r.payload or {}).get("created_at") or ""))
    owner = next((str((r.payload or {}).get("user_id")) for r in records if r.payload), "")
    collection = EdgeCollection(edge, owner, name=name)
    for start in range(0, len(records), _PAGE):
        chunk = records[start : start + _PAGE]
        collection.insert(
            vectors=[_dense_vector(r.vector) or [] for r in chunk],
            payloads=[dict(r.payload or {}) for r in chunk],
            ids=[str(r.id) for r in chunk],
        )
    return len(records)
