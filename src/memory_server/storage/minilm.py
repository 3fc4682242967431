"""all-MiniLM-L6-v2 run by ONNX Runtime and the tokenizers library directly.

fastembed runs this model in four steps: tokenise with the model's own tokenizer files
(truncated at the tokenizer's limit, padded to the longest text of a batch), run the ONNX
graph, average the token vectors under the attention mask, and scale to unit length. This
module takes the same steps without importing fastembed, whose package also imports its
image models and the Hugging Face Hub client: 0.4 s of every start of the server.
tests/test_embeddings.py holds its vectors to fastembed's.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import AddedToken, Tokenizer

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def _json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text())) if path.is_file() else {}


def _limit(value: Any) -> int | None:
    valid = isinstance(value, int) and not isinstance(value, bool) and 0 < value <= sys.maxsize
    return value if valid else None


def load_tokenizer(model_dir: Path) -> Tokenizer:
    """The model's tokenizer, truncating and padding as fastembed sets it up."""
    config = _json(model_dir / "tokenizer_config.json")
    model_config = _json(model_dir / "config.json")
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    limits = [n for n in (_limit(config.get("model_max_length")), _limit(config.get("max_length"))) if n]
    if not limits:
        raise ValueError(f"no usable model_max_length in {model_dir / 'tokenizer_config.json'}")
    truncation = tokenizer.truncation or {}
    tokenizer.enable_truncation(
        max_length=min(limits),
        direction=config.get("truncation_side") or truncation.get("direction", "right"),
    )
    for value in _json(model_dir / "special_tokens_map.json").values():
        for token in value if isinstance(value, list) else [value]:
            tokenizer.add_special_tokens([AddedToken(**token) if isinstance(token, dict) else token])
    padding = tokenizer.padding or {}
    pad_token = padding.get("pad_token") or config.get("pad_token")
    pad_id = padding.get("pad_id", model_config.get("pad_token_id"))
    if pad_id is None and pad_token is not None:
        pad_id = tokenizer.token_to_id(pad_token)
    if pad_token is None or pad_id is None:
        raise ValueError(f"no pad token in the tokenizer files of {model_dir}")
    tokenizer.enable_padding(
        direction=config.get("padding_side") or padding.get("direction", "right"),
        pad_id=pad_id,
        pad_type_id=padding.get("pad_type_id", 0),
        pad_token=pad_token,
        pad_to_multiple_of=padding.get("pad_to_multiple_of"),
        length=None,
    )
    return tokenizer


class MiniLM:
    """The model loaded from ``model_dir`` (``model.onnx`` and the tokenizer files)."""

    def __init__(self, model_dir: Path, threads: int | None = None) -> None:
        self.tokenizer = load_tokenizer(model_dir)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {node.name for node in self.session.get_inputs()}

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> Iterator[np.ndarray]:
        """One unit-length float32 vector per text, batch by batch."""
        for start in range(0, len(texts), batch_size):
            yield from self._batch(list(texts[start : start + batch_size]))

    def _batch(self, texts: list[str]) -> np.ndarray:
        encoded = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        feed = {"input_ids": ids}
        if "attention_mask" in self._inputs:
            feed["attention_mask"] = mask
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        tokens = self.session.run(None, feed)[0]
        # Mean over the real tokens, summed in float64; then unit length; then back to float32.
        summed = np.sum(tokens, axis=1, where=mask[:, :, np.newaxis].astype(bool), dtype=np.float64)
        pooled = summed / np.maximum(np.sum(mask, axis=1, keepdims=True), 1e-9)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return np.asarray(pooled / norms).astype(tokens.dtype, copy=False)
