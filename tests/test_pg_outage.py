"""PostgreSQL stopped under a running server, then started again: fast, clear failures, then recovery.

The test runs its own PostgreSQL instance (initdb in a temp dir, own port) so that stopping it
disturbs nothing else.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastmcp import Client

from memory_server.api.app import create_app
from memory_server.config import load_settings
from memory_server.mcp.identity import PROCESS_IDENTITY
from memory_server.mcp.server import build_mcp
from memory_server.runtime import Runtime
from memory_server.services.memories import Caller
from memory_server.storage.embeddings import FastEmbedEmbedder
from tests.fakes.server import free_port

pytestmark = pytest.mark.postgres
PG_BIN = Path("/usr/lib/postgresql/15/bin")


class Postgres:
    def __init__(self, root: Path) -> None:
        self.data = root / "pgdata"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=60
        )

    def init(self) -> None:
        self.data.mkdir(parents=True)
        shutil.chown(self.data, "postgres", "postgres")
        self._run(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"
        )

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data}"
        log = str(self.data.parent / "postgres.log")  # the server must not hold our pipes open
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", log, "-o", options, "-w", "-t", "30", "start"
        )

    def stop(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    if os.geteuid() != 0 or not (PG_BIN / "initdb").is_file():
        if os.environ.get("CI"):
            pytest.fail("the outage test needs root and PostgreSQL 15's binaries under CI")
        pytest.skip("needs root and PostgreSQL 15's binaries to run a private instance")
    # Not under pytest's tmp dir: the postgres user cannot enter root's private temp tree.
    root = Path(tempfile.mkdtemp(prefix="memory-server-pg-outage-"))
    shutil.chown(root, "postgres", "postgres")
    pg = Postgres(root)
    try:
        pg.init()
        pg.start()
        yield pg
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            pg.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def app_client(
    postgres: Postgres, tmp_path: Path, embedder: FastEmbedEmbedder, model_dir: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    settings = load_settings(
        data_dir=tmp_path / "data", database_url=postgres.url, embedding_model_dir=model_dir
    )
    runtime = Runtime.build(settings, embedder=embedder)
    app = create_app(settings, runtime)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        yield client, runtime
    runtime.close()


async def test_outage_fails_fast_and_recovers_without_restart(
    postgres: Postgres, app_client: tuple[httpx.AsyncClient, Runtime]
) -> None:
    http, runtime = app_client
    headers = {"X-User-Id": "olga"}
    stored = (
        await http.post("/api/v1/memories", json={"text": "The boat is moored at pier 4"}, headers=headers)
    ).json()
    memory_id = stored["results"][0]["id"]

    postgres.stop()
    started = time.monotonic()
    down = await http.get("/api/v1/memories", headers=headers)
    elapsed = time.monotonic() - started
    assert down.status_code == 503 and down.json()["error"]["code"] == "unavailable"
    assert "database" in down.json()["error"]["message"]
    assert elapsed < 10  # the pool's connect timeout bounds it: a bound, not a speed target
    health = await http.get("/health")
    assert health.status_code == 503
    assert health.json()["components"]["database"]["status"] == "down"
    assert health.json()["components"]["vector_store"]["status"] == "ok"
    token = PROCESS_IDENTITY.set(Caller("olga", "claude-desktop"))
    try:
        async with Client(build_mcp(runtime.memories)) as mcp:
            result = await mcp.call_tool("search_memory", {"query": "boat"}, raise_on_error=False)
    finally:
        PROCESS_IDENTITY.reset(token)
    assert result.is_error and "database is unavailable" in str(result.content[0].text)

    postgres.start()  # same server object: no restart of memory-server
    assert (await http.get("/health")).status_code == 200
    back = await http.get(f"/api/v1/memories/{memory_id}", headers=headers)
    assert back.status_code == 200 and back.json()["text"] == "The boat is moored at pier 4"
    again = await http.post("/api/v1/memories", json={"text": "Fuel is in the blue can"}, headers=headers)
    assert again.status_code == 200
