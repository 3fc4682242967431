"""LLM fact extraction through mem0 and the real openai client, against a local fake OpenAI server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from memory_server.config import load_settings
from memory_server.errors import Unavailable
from memory_server.runtime import Runtime
from memory_server.services.memories import Caller
from memory_server.storage.embeddings import FastEmbedEmbedder
from tests.fakes.openai_server import FakeOpenAI, facts_reply
from tests.fakes.server import serve_in_thread


@pytest.fixture
def fake_llm() -> Iterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI(reply=facts_reply("Name is Priya", "Works as a night-shift nurse"))
    with serve_in_thread(fake.app()) as url:
        yield fake, url


@pytest.fixture
def llm_runtime(
    tmp_path: Path, fake_llm: tuple[FakeOpenAI, str], embedder: FastEmbedEmbedder, model_dir: Path
) -> Iterator[Runtime]:
    settings = load_settings(
        data_dir=tmp_path / "data",
        openai_api_key="sk-test-not-real",
        llm_base_url=f"{fake_llm[1]}/v1",
        llm_model="fake-extractor",
        embedding_model_dir=model_dir,
    )
    rt = Runtime.build(settings, embedder=embedder)
    yield rt
    rt.close()


def test_infer_extracts_facts_through_the_llm(llm_runtime: Runtime, fake_llm: tuple[FakeOpenAI, str]) -> None:
    fake, _ = fake_llm
    caller = Caller("priya", "claude-desktop")
    service = llm_runtime.memories
    assert service.llm_enabled

    result = service.add(caller, "Hi! I'm Priya, I work nights as a nurse at St Mary's.")

    assert [(m.text, m.event) for m in result.results] == [
        ("Name is Priya", "ADD"),
        ("Works as a night-shift nurse", "ADD"),
    ]
    [request] = fake.requests
    assert request["headers"]["authorization"] == "Bearer sk-test-not-real"
    assert request["body"]["model"] == "fake-extractor"
    assert "I work nights as a nurse" in str(request["body"]["messages"])
    assert (
        service.search(caller, "what is my job?", limit=1).results[0].text == "Works as a night-shift nurse"
    )
    assert service.list_memories(caller).total == 2
    assert service.get(caller, result.results[0].id).metadata["source_text"].startswith("Hi! I'm Priya")


def test_infer_false_skips_the_llm(llm_runtime: Runtime, fake_llm: tuple[FakeOpenAI, str]) -> None:
    fake, _ = fake_llm
    result = llm_runtime.memories.add(Caller("priya", "cursor"), "verbatim note", infer=False)
    assert result.results[0].text == "verbatim note" and fake.requests == []


def test_repeated_facts_are_not_stored_twice(llm_runtime: Runtime) -> None:
    caller = Caller("priya", "claude-desktop")
    llm_runtime.memories.add(caller, "I'm Priya, a nurse")
    again = llm_runtime.memories.add(caller, "Priya here, still a nurse")
    assert {m.event for m in again.results} <= {"NONE"}
    assert llm_runtime.memories.list_memories(caller).total == 2


def test_llm_failure_is_a_clear_error_and_stores_nothing(
    llm_runtime: Runtime, fake_llm: tuple[FakeOpenAI, str]
) -> None:
    fake, _ = fake_llm
    fake.fail_with = 503
    caller = Caller("priya", "claude-desktop")
    with pytest.raises(Unavailable, match="LLM"):
        llm_runtime.memories.add(caller, "I'm Priya and I like climbing")
    assert llm_runtime.memories.list_memories(caller).total == 0
    store = llm_runtime.pool.get(caller.user_id).store
    assert store.count() == 0


def test_openai_compatible_embedder(tmp_path: Path, fake_llm: tuple[FakeOpenAI, str]) -> None:
    """EMBEDDER_PROVIDER=openai sends texts to the configured endpoint; no local model is loaded."""
    fake, url = fake_llm
    settings = load_settings(
        data_dir=tmp_path / "data",
        embedder_provider="openai",
        embedder_model="fake-embedding",
        embedding_dims=64,
        embedder_base_url=f"{url}/v1",
        openai_api_key="sk-embed",
        llm_provider="none",
    )
    runtime = Runtime.build(settings)
    try:
        caller = Caller("emb-user", "cursor")
        service = runtime.memories
        assert not service.llm_enabled and runtime.embedder.dims == 64
        keep = service.add(caller, "the blue kayak is in the garage").results[0]
        service.add(caller, "dinner with Sam on Thursday")
        assert service.search(caller, "where is the kayak", limit=1).results[0].id == keep.id
        paths = {r["path"] for r in fake.requests}
        assert paths == {"/v1/embeddings"}
        assert all(r["body"]["model"] == "fake-embedding" for r in fake.requests)
        assert not (tmp_path / "data" / "models").exists()
    finally:
        runtime.close()
