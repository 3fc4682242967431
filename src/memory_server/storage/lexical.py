"""BM25 sparse vectors, computed locally by Qdrant's own tokenizer (no model download).

The same encoder feeds the embedded engine and a Qdrant server, so lexical scores agree
on both. Stored as a sparse vector named ``bm25`` with Qdrant's IDF modifier: documents
carry term frequencies, the engine applies IDF over the collection at query time.
"""

from __future__ import annotations

import threading

from qdrant_edge import Bm25, Bm25Config

SPARSE_NAME = "bm25"
# Memories are sentences, not documents: ~20 tokens, not BM25's default 256. The LoCoMo
# dev split scores the same either way (0.56 recall@5), so we keep what fits the data.
_AVERAGE_TOKENS = 256.0


class LexicalEncoder:
    """English BM25 (stemming, stop words) as (indices, values) pairs."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _model(self) -> Bm25:
        model: Bm25 | None = getattr(self._local, "model", None)
        if model is None:
            model = Bm25(Bm25Config(language="english", avg_len=_AVERAGE_TOKENS))
            self._local.model = model
        return model

    def document(self, text: str) -> tuple[list[int], list[float]]:
        """Term weights of a stored memory."""
        vector = self._model().embed_document(text)
        return list(vector.indices), list(vector.values)

    def query(self, text: str) -> tuple[list[int], list[float]]:
        """Terms of a query (each weighs 1; IDF is applied by the engine)."""
        vector = self._model().embed_query(text)
        return list(vector.indices), list(vector.values)


ENCODER = LexicalEncoder()
