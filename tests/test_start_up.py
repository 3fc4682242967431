"""What a start imports: serving searches loads none of the modules that only writes or options need.

Each of these took 0.05-2 s of every start before it was made lazy (docs/benchmarks.md,
cold start). A fresh interpreter shows what ``create_app`` and a first search import.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Module -> why a plain search on the default (embedded, SQLite, local model) setup needs none of it.
NOT_ON_THE_SEARCH_PATH = {
    "mem0": "only adds and edits go through mem0",
    "qdrant_client": "only a Qdrant server or the old local store uses it",
    "openai": "no OpenAI embedder or LLM is configured",
    "alembic": "the schema is already at the newest revision",
    "fastembed": "the default model runs on ONNX Runtime directly",
    "slack_sdk": "no Slack sync runs",
    "jwt": "AUTH_MODE is not jwt",
}

SCRIPT = """
import sys
from memory_server.api.app import create_app
from memory_server.config import load_settings
from memory_server.services.memories import Caller

settings = load_settings()
app = create_app(settings)
runtime = app.state.runtime
caller = Caller("alice", "claude-desktop")
try:
    if sys.argv[1] == "add":
        runtime.memories.add(caller, "I keep my notes in a paper notebook")
    else:
        found = runtime.memories.search(caller, "where are my notes?", limit=1).results
        assert found and found[0].text == "I keep my notes in a paper notebook", found
        print(" ".join(sorted(m for m in sys.modules if "." not in m)))
        runtime.memories.add(caller, "and my drafts in a text file")  # mem0 loads on demand
        assert "mem0" in sys.modules
        # mem0's default Qdrant config is not imported with it (nor its stand-in kept)
        assert "qdrant_client" not in sys.modules
        assert "mem0.configs.vector_stores.qdrant" not in sys.modules
finally:
    runtime.close()
"""


def _run(tmp_path: Path, model_dir: Path, step: str) -> str:
    env = {
        **os.environ,
        "MEMORY_DATA_DIR": str(tmp_path / "data"),
        "EMBEDDING_MODEL_DIR": str(model_dir),
        "LOG_LEVEL": "WARNING",
        "MAINTENANCE_INTERVAL_MINUTES": "0",
    }
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, step], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_a_search_after_start_imports_nothing_it_does_not_need(tmp_path: Path, model_dir: Path) -> None:
    _run(tmp_path, model_dir, "add")  # creates and migrates the database, stores one memory
    loaded = set(_run(tmp_path, model_dir, "search").split())
    assert {m: why for m, why in NOT_ON_THE_SEARCH_PATH.items() if m in loaded} == {}


WARM_UP = """
import sys, time
from memory_server.api.app import create_app
from memory_server.config import load_settings

runtime = create_app(load_settings()).state.runtime
try:
    assert "mem0" not in sys.modules
    runtime.pool.warm_up(delay=0.1)  # what serve and stdio do, 3 s after start
    deadline = time.monotonic() + 60
    while runtime.pool._parts is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "mem0" in sys.modules and runtime.pool._parts is not None
finally:
    runtime.close()
"""


def test_mem0_is_prepared_in_the_background_after_start(tmp_path: Path, model_dir: Path) -> None:
    """So the first add after a start does not pay for importing mem0."""
    env = {**os.environ, "MEMORY_DATA_DIR": str(tmp_path / "data"), "EMBEDDING_MODEL_DIR": str(model_dir)}
    done = subprocess.run(
        [sys.executable, "-c", WARM_UP], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
