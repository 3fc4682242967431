"""Settings, config.json expansion, collection names and start-up checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memory_server.config import expand_variables, load_providers, load_settings
from memory_server.errors import ConfigurationError, InvalidInput
from memory_server.identity import collection_name, validate_client_name, validate_user_id
from memory_server.runtime import Runtime
from memory_server.services.memories import Caller
from memory_server.storage.embeddings import FastEmbedEmbedder


def test_defaults_are_embedded_and_local(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'memory.db'}"
    assert (settings.host, settings.port, settings.user_id) == ("127.0.0.1", 8765, "default-user")
    providers = load_providers(settings, environ={})
    assert providers.embedder.provider == "fastembed"
    assert providers.vector_store.config == {}  # no URL: embedded Qdrant
    assert not providers.llm_enabled


def test_environment_and_dotenv_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("PORT=9001\nUSER_ID=from-dotenv\nLOG_LEVEL=debug\n")
    monkeypatch.setenv("PORT", "9002")
    settings = load_settings()
    assert (settings.port, settings.user_id, settings.log_level) == (9002, "from-dotenv", "DEBUG")


def test_postgres_urls_use_psycopg(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, database_url="postgresql://u:p@db:5432/mem")
    assert settings.resolved_database_url == "postgresql+psycopg://u:p@db:5432/mem"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"port": 70000}, "port"),
        ({"database_url": "mysql://x"}, "DATABASE_URL must start with"),
        ({"qdrant_api_key": "k"}, "QDRANT_API_KEY is set but QDRANT_URL is not"),
        ({"user_id": "has space"}, "invalid user id"),
        ({"log_level": "loud"}, "log_level"),
        ({"duplicate_threshold": 2}, "duplicate_threshold"),
    ],
)
def test_invalid_settings_fail_with_a_sentence(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_settings(**overrides)


def test_variable_expansion() -> None:
    env = {"A": "1", "EMPTY": ""}
    raw = {"x": "${A}", "y": "pre-${B:-dflt}-post", "z": ["${EMPTY:-fallback}"], "n": 5}
    assert expand_variables(raw, env) == {"x": "1", "y": "pre-dflt-post", "z": ["fallback"], "n": 5}
    with pytest.raises(ConfigurationError, match=r"llm\.api_key uses \$\{MISSING\} but MISSING is not set"):
        expand_variables({"llm": {"api_key": "${MISSING}"}}, env)


def test_config_file_selects_providers(tmp_path: Path) -> None:
    config = {
        "llm": {"provider": "openai", "config": {"api_key": "${OPENAI_API_KEY}", "model": "gpt-4o-mini"}},
        "embedder": {"provider": "fastembed", "config": {}},
        "vector_store": {"provider": "qdrant", "config": {"url": "${QDRANT_URL:-}"}},
    }
    path = tmp_path / "custom.json"
    path.write_text(json.dumps(config))
    settings = load_settings(config_file=path, openai_api_key="sk-from-settings")
    providers = load_providers(settings, environ={})
    assert providers.llm.config["api_key"] == "sk-from-settings" and providers.llm_enabled
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY is not set"):
        load_providers(load_settings(config_file=path), environ={})
    path.write_text("{not json")
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        load_providers(settings, environ={})


def test_unknown_providers_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="embedder.provider 'word2vec' is not supported"):
        load_providers(load_settings(embedder_provider="word2vec"), environ={})


def test_collection_names_are_distinct_and_safe() -> None:
    ids = ["alice", "Alice", "ALICE", "bob@example.com", "a.b", "a_b", "x" * 128, "u_alice", "mem_u_alice"]
    names = [collection_name(i) for i in ids]
    assert len(set(names)) == len(ids)
    assert collection_name("alice") == "mem_u_alice"
    assert all(n.startswith("mem_") and len(n) < 255 and n == n.lower() for n in names)
    assert all(set(n) <= set("abcdefghijklmnopqrstuvwxyz0123456789_-") for n in names)


@pytest.mark.parametrize("bad", ["", " alice", "a/b", "a b", "x" * 129, "-lead", "é", "a\x00"])
def test_bad_user_ids_are_refused(bad: str) -> None:
    with pytest.raises(InvalidInput):
        validate_user_id(bad)


@pytest.mark.parametrize("bad", ["", "a@b", "x" * 65, "a/b"])
def test_bad_client_names_are_refused(bad: str) -> None:
    with pytest.raises(InvalidInput):
        validate_client_name(bad)


def test_embedder_dimension_mismatch_fails_at_start_up(
    tmp_path: Path, embedder: FastEmbedEmbedder, model_dir: Path
) -> None:
    settings = load_settings(data_dir=tmp_path / "data", embedding_model_dir=model_dir)
    runtime = Runtime.build(settings, embedder=embedder)
    runtime.memories.add(Caller("default-user", "cli"), "a 384-dimension memory")
    runtime.close()

    other = load_settings(
        data_dir=tmp_path / "data",
        embedder_provider="openai",
        embedding_dims=1536,
        embedder_base_url="http://127.0.0.1:9/v1",
    )
    with pytest.raises(
        ConfigurationError, match="holds 384-dimension vectors but the configured embedder makes 1536"
    ):
        Runtime.build(other)
    # the failed start released the embedded store: the original configuration opens again
    Runtime.build(settings, embedder=embedder).close()


def test_concurrent_migrations_on_one_database(database_url: str) -> None:
    """Replicas starting together all migrate the same database without error."""
    import concurrent.futures

    from sqlalchemy import inspect

    from memory_server.storage.database import make_engine, migrate

    engines = [make_engine(database_url) for _ in range(3)]
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
            list(pool.map(migrate, engines))
        assert {"memories", "users", "apps", "alembic_version"} <= set(inspect(engines[0]).get_table_names())
    finally:
        for engine in engines:
            engine.dispose()
