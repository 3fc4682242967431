"""The local model gives fastembed's vectors without importing fastembed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from fastembed import TextEmbedding

from memory_server.storage.embeddings import FastEmbedEmbedder
from memory_server.storage.minilm import MODEL_NAME, MiniLM

TEXTS = [
    "I keep my notes in a paper notebook",
    "",
    "   ",
    "Ünïcödé, emoji 🎻 and CJK 日本語のテキスト",
    "who bought a violin?",
    "Dara repaired the old piano in Kyoto after work (note 17); also Ben sold orchids by the lake",
    " ".join(["a long memory that goes on"] * 200),  # past the 512-token limit: truncated
    *[f"short note {i}" + " with more words" * (i % 7) for i in range(90)],  # two batches of 64
]


def test_vectors_match_fastembed(model_dir: Path) -> None:
    fastembed = TextEmbedding(MODEL_NAME, specific_model_path=str(model_dir), local_files_only=True)
    reference = np.array(list(fastembed.embed(TEXTS, batch_size=64)))
    ours = np.array(list(MiniLM(model_dir).embed(TEXTS, batch_size=64)))
    assert ours.shape == reference.shape == (len(TEXTS), 384)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_embedder_loads_without_fastembed(model_dir: Path) -> None:
    code = (
        "import sys; from pathlib import Path\n"
        "from memory_server.storage.embeddings import FastEmbedEmbedder\n"
        f"e = FastEmbedEmbedder(Path({str(model_dir)!r}), {MODEL_NAME!r})\n"
        "assert e.dims == 384, e.dims\n"
        "assert 'fastembed' not in sys.modules, 'fastembed was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_other_models_still_go_through_fastembed(model_dir: Path, tmp_path: Path) -> None:
    """Another model name is fastembed's to run: it knows that model's pooling (here CLS, not mean)."""
    other = tmp_path / "bge"
    shutil.copytree(model_dir, other)
    shutil.copyfile(other / "model.onnx", other / "model_optimized.onnx")  # the file name bge ships
    embedder = FastEmbedEmbedder(other, "BAAI/bge-small-en-v1.5")
    assert isinstance(embedder._model, TextEmbedding)
    minilm = FastEmbedEmbedder(model_dir, MODEL_NAME)
    assert not np.allclose(embedder.embed_one(TEXTS[0]), minilm.embed_one(TEXTS[0]), atol=1e-3)
