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
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
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
    """The model loaded from ``model_dir`` (``onnx_file`` and the tokenizer files)."""

    def __init__(self, model_dir: Path, threads: int | None = None, onnx_file: str = "model.onnx") -> None:
        self.path = model_dir / onnx_file
        self.threads = threads or 1
        self.tokenizer = load_tokenizer(model_dir)
        self.session = self._session(threads)
        self._inputs = {node.name for node in self.session.get_inputs()}
        # embed_each: the session above while it is free, else one of up to `threads`
        # single-threaded sessions, made the first time two texts run at once.
        self._lone_busy = False
        self._spare: list[ort.InferenceSession] = []
        self._made = 0
        self._turn = threading.Condition()
        self._workers: ThreadPoolExecutor | None = None

    def _session(self, threads: int | None) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The intra-op threads spin while a run goes on (fast), and stop when it returns:
        # left spinning, the second thread kept a core busy ~25 ms after every query, under
        # the ranking and SQL that follow it (search p95 in one process 13-18 -> 10-12 ms;
        # one MCP client 46 -> 64 calls/s, fifty 55 -> 64; docs/benchmarks.md, sixth pass).
        # Turning spinning off altogether made the embedding itself slower instead.
        options.add_session_config_entry("session.force_spinning_stop", "1")
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = threads
        return ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def embed_each(self, texts: Sequence[str]) -> list[np.ndarray]:
        """One vector per text, each text run alone: its vector never depends on its neighbours.

        The int8 model quantises its activations per run, over the whole batch (padding
        and other texts included), so a batched text's vector would shift with its
        company. Alone, a text gets the same vector every time. Throughput comes from
        running texts side by side instead: one single-threaded session per core beats
        batches of 64 (no padding either), and a lone text gets the multi-threaded session.
        """
        if len(texts) <= 1 or self.threads == 1:
            return [self._alone(text) for text in texts]
        if self._workers is None:
            with self._turn:
                if self._workers is None:
                    self._workers = ThreadPoolExecutor(self.threads, thread_name_prefix="embed")
        return list(self._workers.map(self._alone, texts))

    def _alone(self, text: str) -> np.ndarray:
        with self._turn:
            while True:
                if not self._lone_busy and self._made == len(self._spare):  # nothing else running
                    self._lone_busy = True
                    session = self.session
                    break
                if self._spare:
                    session = self._spare.pop()
                    break
                if self._made < self.threads:
                    self._made += 1
                    session = None  # made outside the lock
                    break
                self._turn.wait()
        try:
            if session is None:
                session = self._session(1)
            vector: np.ndarray = self._run(session, [text])[0]
            return vector
        finally:
            with self._turn:
                if session is self.session:
                    self._lone_busy = False
                elif session is not None:
                    self._spare.append(session)
                else:  # making the session failed
                    self._made -= 1
                self._turn.notify_all()

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> Iterator[np.ndarray]:
        """One unit-length float32 vector per text, batch by batch."""
        for start in range(0, len(texts), batch_size):
            yield from self._batch(list(texts[start : start + batch_size]))

    def _batch(self, texts: list[str]) -> np.ndarray:
        return self._run(self.session, texts)

    def _run(self, session: ort.InferenceSession, texts: list[str]) -> np.ndarray:
        encoded = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        feed = {"input_ids": ids}
        if "attention_mask" in self._inputs:
            feed["attention_mask"] = mask
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        tokens = session.run(None, feed)[0]
        # Mean over the real tokens, summed in float64; then unit length; then back to float32.
        summed = np.sum(tokens, axis=1, where=mask[:, :, np.newaxis].astype(bool), dtype=np.float64)
        pooled = summed / np.maximum(np.sum(mask, axis=1, keepdims=True), 1e-9)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return np.asarray(pooled / norms).astype(tokens.dtype, copy=False)
