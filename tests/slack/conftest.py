"""A fake Slack workspace served over loopback HTTP, and a sync pointed at it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from memory_server.config import Settings, load_settings
from memory_server.runtime import Runtime
from memory_server.schemas import MemoryOut
from memory_server.services.memories import Caller
from memory_server.slack.sync import SlackSync
from tests.fakes.server import serve_in_thread
from tests.fakes.slack_server import TOKEN, FakeSlack

TARGET_USER = "team-memory"
READER = Caller(TARGET_USER, "slack")


@pytest.fixture
def fake_slack() -> FakeSlack:
    """Four channels: two to sync, one archived, one the bot is not in."""
    slack = FakeSlack(page_size=3)
    slack.add_user("U1", "alice", "Alice Liddell")
    slack.add_user("U2", "bob", "Bob Builder")
    slack.add_user("U3", "carol", "Carol Danvers")
    slack.add_channel("C1", "general")
    slack.add_channel("C2", "random")
    slack.add_channel("C3", "old-project", is_archived=True)
    slack.add_channel("C4", "secret", is_member=False)
    slack.post("C1", "U1", "This is ancient history from last year", at=time.time() - 40 * 86400)
    slack.post("C1", "U1", "The quarterly planning meeting moved to Thursday at 10am")
    slack.post("C1", "U2", "I will book the big conference room for the planning meeting")
    slack.post("C1", "U3", "<@U3> has joined the channel", subtype="channel_join")
    slack.post("C1", None, "Deploy 1234 finished", subtype="bot_message", bot_id="B1", username="deploybot")
    parent = slack.post("C1", "U1", "Who owns the database migration?")
    slack.post("C1", "U2", "Carol owns the migration to PostgreSQL", thread_ts=parent)
    slack.post("C1", "U3", "Yes, I will finish the migration by Friday", thread_ts=parent)
    slack.post("C2", "U3", "Our team lunch is at the Thai place on Wednesday")
    slack.post("C2", "U2", "The office wifi password changes every month")
    slack.post("C3", "U1", "Notes from a project that ended")
    slack.post("C4", "U1", "Nobody invited the bot here")
    return slack


@pytest.fixture
def slack_url(fake_slack: FakeSlack) -> Iterator[str]:
    with serve_in_thread(fake_slack.app()) as base:
        yield f"{base}/api/"


@pytest.fixture
def settings(tmp_path: Path, database_url: str, model_dir: Path, slack_url: str) -> Settings:
    return load_settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        embedding_model_dir=model_dir,
        slack_bot_token=TOKEN,
        slack_api_base_url=slack_url,
        slack_memory_user_id=TARGET_USER,
    )


@pytest.fixture
def sync(settings: Settings, runtime: Runtime) -> SlackSync:
    return SlackSync(settings, runtime.memories, runtime.db)


def stored(runtime: Runtime) -> list[MemoryOut]:
    """Every active memory of the Slack target user, oldest first."""
    return sorted(
        runtime.memories.list_memories(READER, limit=500).results, key=lambda m: m.metadata.get("ts", "")
    )


def texts(runtime: Runtime) -> list[str]:
    return [m.text.split("): ", 1)[1] for m in stored(runtime)]
