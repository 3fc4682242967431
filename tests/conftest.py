"""Shared fixtures: a clean environment, the real embedding model, real SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

import memory_server  # noqa: F401  (sets MEM0_TELEMETRY=False before mem0 loads)
from memory_server.config import Settings, load_settings
from memory_server.runtime import Runtime
from memory_server.services.memories import Caller, MemoryService
from memory_server.storage.embeddings import FastEmbedEmbedder, provision_minilm

# Environment variables the server reads; none of a developer's may leak into a test.
_OUR_VARS = re.compile(
    r"^(MEMORY_|DATABASE_URL$|QDRANT_|USER_ID$|DEFAULT_APP_ID$|OPENAI_|LLM_|EMBEDDER_|EMBEDDING_|"
    r"LOG_LEVEL$|HOST$|PORT$|MAX_MEMORY_BYTES$|DUPLICATE_THRESHOLD$|SEARCH_MIN_SCORE$|SLACK_)"
)
# Captured before any test strips the environment.
_PG_ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://memtest:memtest@127.0.0.1:5432/postgres")
_PG_REQUIRED = bool(os.environ.get("CI")) or bool(os.environ.get("REQUIRE_POSTGRES"))


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Strip our settings from the environment and run in an empty directory (no stray .env)."""
    for name in list(os.environ):
        if _OUR_VARS.match(name):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The MiniLM ONNX model, provisioned offline once per test session."""
    return provision_minilm(tmp_path_factory.mktemp("model") / "all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def embedder(model_dir: Path) -> FastEmbedEmbedder:
    """The real embedding model, loaded once and shared (it is stateless)."""
    return FastEmbedEmbedder(model_dir, "sentence-transformers/all-MiniLM-L6-v2", threads=2)


def _pg_admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(_PG_ADMIN_URL, autocommit=True, connect_timeout=3)


@pytest.fixture(scope="session")
def postgres_available() -> bool:
    try:
        with _pg_admin():
            return True
    except psycopg.OperationalError as exc:
        if _PG_REQUIRED:
            pytest.fail(f"PostgreSQL is required under CI but unreachable at TEST_DATABASE_URL: {exc}")
        return False


@contextlib.contextmanager
def _fresh_postgres_database() -> Iterator[str]:
    name = f"memtest_{uuid.uuid4().hex[:12]}"
    with _pg_admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield (
            make_url(_PG_ADMIN_URL)
            .set(drivername="postgresql+psycopg", database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        with _pg_admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def postgres_url(postgres_available: bool) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    if not postgres_available:
        pytest.skip("PostgreSQL not reachable: run scripts/postgres-for-tests, or set TEST_DATABASE_URL")
    with _fresh_postgres_database() as url:
        yield url


@pytest.fixture
def second_database_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """Another empty database on the same backend as ``database_url`` (a second server's)."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'second.db'}"
        return
    with _fresh_postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test that uses it runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'memory.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def settings(tmp_path: Path, database_url: str, model_dir: Path) -> Settings:
    return load_settings(data_dir=tmp_path / "data", database_url=database_url, embedding_model_dir=model_dir)


@pytest.fixture
def runtime(settings: Settings, embedder: FastEmbedEmbedder) -> Iterator[Runtime]:
    """Migrated database, embedded Qdrant in a temp dir, real embedder: the whole back end."""
    rt = Runtime.build(settings, embedder=embedder)
    yield rt
    rt.close()


@pytest.fixture
def service(runtime: Runtime) -> MemoryService:
    return runtime.memories


@pytest.fixture
def alice() -> Caller:
    return Caller(user_id="alice", client_name="claude-desktop")


@pytest.fixture
def bob() -> Caller:
    return Caller(user_id="bob@example.com", client_name="cursor")
