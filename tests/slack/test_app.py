"""The Slack sync inside the server (scheduler, REST), through MCP search, and from the CLI."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastmcp import Client
from typer.testing import CliRunner

from memory_server.api.app import create_app
from memory_server.cli import app as cli_app
from memory_server.config import Settings
from memory_server.mcp.identity import PROCESS_IDENTITY
from memory_server.mcp.server import build_mcp
from memory_server.runtime import Runtime
from memory_server.services.memories import Caller
from memory_server.slack.sync import SlackSync
from tests.fakes.slack_server import TOKEN, FakeSlack
from tests.slack.conftest import TARGET_USER, stored, texts

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


async def wait_for(condition: Any, what: str, timeout: float = 60) -> None:
    """Poll ``condition`` until true; fail (not a timing assertion: a generous deadline) if never."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


@sqlite_only
async def test_scheduler_runs_the_sync_on_its_interval(
    settings: Settings, runtime: Runtime, fake_slack: FakeSlack
) -> None:
    fast = settings.model_copy(update={"slack_sync_interval_minutes": 0.02})  # every 1.2 s
    app = create_app(fast, runtime)
    async with app.router.lifespan_context(app):
        job = app.state.scheduler.get_job("slack-sync")
        assert job.max_instances == 1 and job.coalesce is True
        assert job.trigger.interval.total_seconds() == pytest.approx(1.2)
        await wait_for(lambda: len(stored(runtime)) == 7, "the first scheduled run")
        fake_slack.post("C2", "U1", "The fire drill is on Tuesday at noon")
        await wait_for(
            lambda: "The fire drill is on Tuesday at noon" in texts(runtime), "a later scheduled run"
        )
        assert fake_slack.count("auth.test") >= 2
    assert app.state.scheduler.running is False


@sqlite_only
async def test_scheduler_has_no_slack_job_without_a_token(settings: Settings, runtime: Runtime) -> None:
    app = create_app(settings.model_copy(update={"slack_bot_token": None}), runtime)
    async with app.router.lifespan_context(app):
        assert app.state.scheduler.get_job("slack-sync") is None


@pytest.fixture
async def http(settings: Settings, runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, runtime)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        yield client


@sqlite_only
async def test_rest_trigger_status_and_409_while_running(
    http: httpx.AsyncClient, fake_slack: FakeSlack
) -> None:
    gate = fake_slack.hold("auth.test")
    started = await http.post("/api/v1/slack/sync")
    assert started.status_code == 202 and started.json() == {"status": "started"}
    again = await http.post("/api/v1/slack/sync")
    assert again.status_code == 409
    assert (
        again.json()["error"]["code"] == "conflict" and "already running" in again.json()["error"]["message"]
    )
    assert (await http.get("/api/v1/slack/status")).json()["running"] is True
    gate.set()

    async def finished() -> dict[str, Any]:
        while True:
            body: dict[str, Any] = (await http.get("/api/v1/slack/status")).json()
            if not body["running"]:
                return body
            await asyncio.sleep(0.05)

    body = await asyncio.wait_for(finished(), 60)
    assert body["enabled"] is True and body["target_user"] == TARGET_USER and body["interval_minutes"] == 30
    assert body["last_run"]["status"] == "ok"
    channels = {c["channel_id"]: c for c in body["channels"]}
    assert channels["C1"]["stored_messages"] == 5 and channels["C1"]["status"] == "ok"
    assert channels["C3"]["status"] == "archived" and channels["*"]["last_error"] is None


@sqlite_only
async def test_rest_when_the_sync_is_off(settings: Settings, runtime: Runtime) -> None:
    app = create_app(settings.model_copy(update={"slack_bot_token": None}), runtime)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        assert (await client.get("/api/v1/slack/status")).json()["enabled"] is False
        refused = await client.post("/api/v1/slack/sync")
        assert refused.status_code == 409 and "SLACK_BOT_TOKEN" in refused.json()["error"]["message"]


@sqlite_only
async def test_synced_messages_are_found_by_search_memory_through_mcp(
    sync: SlackSync, runtime: Runtime
) -> None:
    assert (await sync.run()).status == "ok"
    token = PROCESS_IDENTITY.set(Caller(TARGET_USER, "claude-desktop"))
    try:
        async with Client(build_mcp(runtime.memories)) as client:
            result = await client.call_tool(
                "search_memory", {"query": "who is doing the database migration?"}
            )
    finally:
        PROCESS_IDENTITY.reset(token)
    assert not result.is_error and isinstance(result.structured_content, dict)
    top = result.structured_content["results"][0]
    assert top["app"] == "slack" and "migration" in top["text"]
    assert top["metadata"]["channel_name"] == "general" and top["metadata"]["permalink"].startswith(
        "https://"
    )


def test_cli_sync_and_status(
    tmp_path: Path, model_dir: Path, slack_url: str, fake_slack: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {
        "MEMORY_DATA_DIR": str(tmp_path / "cli-data"),
        "EMBEDDING_MODEL_DIR": str(model_dir),
        "SLACK_BOT_TOKEN": TOKEN,
        "SLACK_API_BASE_URL": slack_url,
        "SLACK_MEMORY_USER_ID": TARGET_USER,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()

    synced = runner.invoke(cli_app, ["slack", "sync", "--channel", "random", "--since", "2020-01-01"])
    assert synced.exit_code == 0, synced.output
    assert "#random" in synced.stdout and "ok" in synced.stdout and "general" not in synced.stdout

    failed = runner.invoke(cli_app, ["slack", "sync", "--channel", "secret"])
    assert failed.exit_code == 1 and "/invite" in failed.stdout

    status = runner.invoke(cli_app, ["slack", "status"])
    assert status.exit_code == 0, status.output
    assert "#random" in status.stdout and "#secret" in status.stdout and "not_in_channel" not in status.stdout
    assert "every 30 minutes" in status.stdout and TARGET_USER in status.stdout


def test_cli_sync_refuses_without_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMORY_DATA_DIR", str(tmp_path / "cli-data"))
    result = CliRunner().invoke(cli_app, ["slack", "sync"])
    assert result.exit_code == 2 and "SLACK_BOT_TOKEN" in result.stderr
