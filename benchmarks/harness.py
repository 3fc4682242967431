"""What the benchmarks share: machine line, configurations to compare, filling a store, a server.

A configuration is a list of settings (``NAME=VALUE`` environment variables, e.g.
``VECTOR_ENGINE=qdrant-local``); every benchmark takes ``--config`` once or twice and runs
the same workload against each, in the same run, and prints the ratio.

Filling N memories embeds only 2,000 distinct sentences and makes the rest from pairs of
them (text joined, vectors averaged), so that a 100k fill takes about a minute rather than
the ten that embedding it would; bulk ingestion with real embedding is measured by
``bulk.py``. Everything listens on and talks to 127.0.0.1 only, and stops by itself.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast, get_args

import memory_server  # (mem0 telemetry off before anything imports mem0)

os.environ.setdefault("FASTMCP_SHOW_SERVER_BANNER", "false")

import numpy as np  # noqa: E402

from memory_server.config import load_settings  # noqa: E402
from memory_server.runtime import Runtime  # noqa: E402
from memory_server.services.bulk import BulkItem  # noqa: E402
from memory_server.services.memories import Caller  # noqa: E402
from memory_server.storage.embeddings import FastEmbedEmbedder, Precision, provision_minilm  # noqa: E402

MODEL_DIR = Path(os.environ.get("BENCH_MODEL_DIR", Path.home() / ".cache" / "memory-server-bench" / "model"))
USER = Caller("bench-user", "bench")
# The floors (noop_app.py): tool name -> (row label, app factory for ``serve``).
FLOORS = {
    "noop": ("no-op FastMCP tool", "noop_app:create"),
    "embed": ("FastMCP tool embedding its text", "noop_app:create_embedding"),
}
PEOPLE = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jun", "Kofi", "Lena"]
VERBS = ["visited", "cooked", "bought", "painted", "repaired", "photographed", "studied", "sold", "planted"]
THINGS = ["a red bicycle", "the old piano", "sourdough bread", "a vintage camera", "orchids", "a sailboat"]
THINGS += ["the garden shed", "a chess set", "wool socks", "a telescope", "olive trees", "a violin"]
PLACES = ["in Lisbon", "near the river", "at the market", "in Kyoto", "at home", "in the mountains"]
PLACES += ["at the office", "in Nairobi", "by the lake", "in Montreal"]
WHEN = [
    "last Monday",
    "in spring",
    "every weekend",
    "two years ago",
    "yesterday",
    "after work",
    "in December",
]


@dataclass(frozen=True)
class Config:
    """Settings to run a workload under, as environment variables."""

    env: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> Config:
        pairs = [p for p in text.split(",") if p.strip()]
        return cls(dict(p.strip().split("=", 1) for p in pairs))

    @property
    def label(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.env.items()) or "defaults"


def configs(values: Sequence[str] | None) -> list[Config]:
    return [Config.parse(v) for v in values] if values else [Config({})]


def machine_line() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()[0]
    return (
        f"machine: {platform.machine()}, {os.cpu_count()} cores ({model}), Python "
        f"{platform.python_version()}; memory-server {memory_server.__version__}; "
        f"load avg {load:.2f} at start"
    )


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))] * 1000


def latency_cells(values: Sequence[float]) -> str:
    return f"{len(values)} | {pct(values, 50):.1f} | {pct(values, 95):.1f} | {pct(values, 99):.1f}"


def sentences(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        text = (
            f"{rng.choice(PEOPLE)} {rng.choice(VERBS)} {rng.choice(THINGS)} {rng.choice(PLACES)} "
            f"{rng.choice(WHEN)} (note {len(out)})"
        )
        out[text] = None
    return list(out)


def queries(n: int, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    return [f"who {rng.choice(VERBS)} {rng.choice(THINGS)} {rng.choice(PLACES)}?" for _ in range(n)]


_EMBEDDERS: dict[str, FastEmbedEmbedder] = {}


def real_embedder(config: Config | None = None) -> FastEmbedEmbedder:
    """The local model, loaded once per precision (``EMBEDDING_PRECISION`` in ``config``, default int8)."""
    env = config.env if config is not None else {}
    precision = env.get("EMBEDDING_PRECISION") or os.environ.get("EMBEDDING_PRECISION") or "int8"
    if precision not in get_args(Precision):
        raise SystemExit(
            f"EMBEDDING_PRECISION must be one of {', '.join(get_args(Precision))}, not {precision!r}"
        )
    if precision not in _EMBEDDERS:
        provision_minilm(MODEL_DIR)
        _EMBEDDERS[precision] = FastEmbedEmbedder(
            MODEL_DIR,
            "sentence-transformers/all-MiniLM-L6-v2",
            threads=2,
            precision=cast(Precision, precision),
        )
    return _EMBEDDERS[precision]


class MixedEmbedder:
    """The real model, plus precomputed vectors for fill texts (see the module docstring)."""

    def __init__(self, real: FastEmbedEmbedder) -> None:
        self.real = real
        self.name = real.name
        self.dims = real.dims
        self.known: dict[str, list[float]] = {}

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        unknown = [t for t in texts if t not in self.known]
        if unknown:
            for text, vector in zip(unknown, self.real.embed(unknown), strict=True):
                self.known[text] = vector
        return [self.known[t] for t in texts]

    def embed_one(self, text: str) -> list[float]:
        return self.known.get(text) or self.real.embed_one(text)


def fill_items(embedder: MixedEmbedder, n: int, base: int = 2000) -> list[BulkItem]:
    """``n`` distinct memories; beyond ``base`` they are pairs of base sentences."""
    texts = sentences(min(n, base))
    vectors = np.asarray(embedder.embed(texts), dtype=np.float32)
    items = [BulkItem(str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench:{i}")), t) for i, t in enumerate(texts)]
    rng = np.random.default_rng(11)
    i = len(items)
    while len(items) < n:
        a, b = rng.integers(0, len(texts), size=2)
        text = f"{texts[a]}; also {texts[b]} [{i}]"
        mixed = vectors[a] + vectors[b]
        embedder.known[text] = (mixed / np.linalg.norm(mixed)).tolist()
        items.append(BulkItem(str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench:{i}")), text))
        i += 1
    return items


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def build_runtime(data_dir: Path, config: Config, embedder: Any) -> Runtime:
    with environment({**config.env, "LOG_LEVEL": "WARNING"}):
        settings = load_settings(data_dir=data_dir, embedding_model_dir=MODEL_DIR)
    return Runtime.build(settings, embedder=embedder)


def fill(runtime: Runtime, items: Sequence[BulkItem], batch: int = 1000) -> float:
    """Store ``items`` through the bulk path, then wait for any index build; return seconds."""
    started = time.perf_counter()
    for start in range(0, len(items), batch):
        runtime.memories.upsert_many(USER, items[start : start + batch])
    runtime.vectors.wait_indexed()
    return time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    started: float

    def url(self, user: str = USER.user_id) -> str:
        return f"http://127.0.0.1:{self.port}/mcp/{USER.client_name}/http/{user}"

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")


@contextlib.contextmanager
def serve(data_dir: Path, config: Config, app: str | None = None) -> Iterator[Server]:
    """``memory-server serve`` (or ``app``, a module:callable factory) in a child process."""
    port = free_port()
    env = {
        **{
            k: v for k, v in os.environ.items() if not k.startswith(("MEMORY_", "QDRANT_", "LLM_", "OPENAI_"))
        },
        **config.env,
        "MEMORY_DATA_DIR": str(data_dir),
        "EMBEDDING_MODEL_DIR": str(MODEL_DIR),
        "PORT": str(port),
        "LOG_LEVEL": "WARNING",
        "MAINTENANCE_INTERVAL_MINUTES": "0",
        "FASTMCP_SHOW_SERVER_BANNER": "false",
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
    }
    if app is None:
        command = [sys.executable, "-m", "memory_server.cli", "serve"]
    else:
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            app,
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited: {process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start within 120 s")
            time.sleep(0.01)
        yield Server(process, port, started)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
