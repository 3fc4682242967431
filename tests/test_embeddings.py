"""The local model gives fastembed's vectors without importing fastembed; its int8 twin stays close."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastembed import TextEmbedding

from memory_server.errors import ConfigurationError
from memory_server.storage.embeddings import MINILM_INT8_FILE, FastEmbedEmbedder, provision_minilm
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


def test_int8_model_multiplies_in_integers(model_dir: Path) -> None:
    """Every product with a weight matrix is integer; none is left in float32."""
    graph = onnx.load(str(model_dir / MINILM_INT8_FILE)).graph
    weights = {init.name for init in graph.initializer}
    ops = [node.op_type for node in graph.node]
    assert ops.count("MatMulInteger") >= 36  # 6 layers x (q, k, v, out, up, down)
    float_products = [n.name for n in graph.node if n.op_type == "MatMul" and weights & set(n.input)]
    assert float_products == []


def test_int8_vectors_stay_close_to_float32(model_dir: Path) -> None:
    texts = [t for t in TEXTS if t.strip() and len(t) < 500]  # (the 512-token text would pad every other)
    float32 = np.array(list(MiniLM(model_dir).embed(texts)))
    int8 = np.array(list(MiniLM(model_dir, onnx_file=MINILM_INT8_FILE).embed(texts)))
    assert int8.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)
    assert np.abs(int8 - float32).max() > 1e-4  # a different computation, not the same file twice
    cosines = np.sum(int8 * float32, axis=1)
    assert cosines.min() >= 0.97, cosines.min()
    # Each int8 vector's nearest float32 vector is its own text's.
    nearest = np.argmax(int8 @ float32.T, axis=1)
    distinct = [i for i, t in enumerate(texts) if texts.index(t) == i]
    assert [nearest[i] for i in distinct] == distinct


def test_embedder_precision_picks_the_model_file(model_dir: Path) -> None:
    assert FastEmbedEmbedder(model_dir, MODEL_NAME)._model.path.name == MINILM_INT8_FILE
    assert FastEmbedEmbedder(model_dir, MODEL_NAME, precision="float32")._model.path.name == "model.onnx"


def test_provisioning_derives_the_int8_model_for_an_older_install(model_dir: Path, tmp_path: Path) -> None:
    """A model folder set up before the int8 model existed gets it, the same bytes, at the next start."""
    older = tmp_path / "older"
    shutil.copytree(model_dir, older)
    (older / MINILM_INT8_FILE).unlink()
    with pytest.raises(ConfigurationError, match="memory-server setup"):
        FastEmbedEmbedder(older, MODEL_NAME)
    provision_minilm(older)
    assert (older / MINILM_INT8_FILE).read_bytes() == (model_dir / MINILM_INT8_FILE).read_bytes()
    assert [p.name for p in older.iterdir() if p.name.startswith(".")] == []  # no work files left


def test_model_threads_stop_spinning_when_a_run_returns(model_dir: Path) -> None:
    """ONNX Runtime's intra-op threads spin between runs unless told to stop: with them
    spinning, a query left a core busy (~40 ms of CPU in the 100 ms after it) under the
    ranking and SQL work of the same request."""
    minilm = MiniLM(model_dir, threads=2)
    minilm.embed_each(["warm up the session"])
    idle_cpu = []
    for _ in range(3):
        minilm.embed_each(["who bought a violin at the market?"])
        started = time.process_time()
        time.sleep(0.1)
        idle_cpu.append(time.process_time() - started)
    assert min(idle_cpu) < 0.01, idle_cpu
