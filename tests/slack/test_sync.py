"""The Slack sync against a fake Slack Web API over loopback HTTP, real SQL, Qdrant and embedder."""

from __future__ import annotations

import asyncio
import time

import pytest

from memory_server.runtime import Runtime
from memory_server.slack.sync import SlackSync, message_memory_id
from tests.fakes.slack_server import TEAM_ID, FakeSlack
from tests.slack.conftest import READER, stored, texts

FIRST_SYNC = [
    "The quarterly planning meeting moved to Thursday at 10am",
    "I will book the big conference room for the planning meeting",
    "Who owns the database migration?",
    "Carol owns the migration to PostgreSQL",
    "Yes, I will finish the migration by Friday",
    "Our team lunch is at the Thai place on Wednesday",
    "The office wifi password changes every month",
]


def channel_state(sync: SlackSync, channel_id: str) -> dict[str, object]:
    return {s.channel_id: s for s in sync.statuses()}[channel_id].model_dump()


async def test_first_sync_backfills_messages_threads_and_metadata(
    sync: SlackSync, runtime: Runtime, fake_slack: FakeSlack
) -> None:
    report = await sync.run()

    assert report.status == "ok", report
    by_channel = {c.channel_name: c for c in report.channels}
    assert by_channel["general"].added == 5 and by_channel["random"].added == 2
    assert by_channel["old-project"].status == "archived" and "secret" not in by_channel  # not a member
    # no ancient message (before SLACK_BACKFILL_DAYS), no join notice, no bot message
    assert sorted(texts(runtime)) == sorted(FIRST_SYNC)
    memories = stored(runtime)
    assert {m.app for m in memories} == {"slack"}
    reply = next(m for m in memories if "Carol owns" in m.text)
    assert reply.text.startswith("Bob Builder in #general, in a thread (")
    parent_ts = next(m for m in memories if "Who owns" in m.text).metadata["ts"]
    meta = reply.metadata
    assert meta["team"] == TEAM_ID and meta["channel_id"] == "C1" and meta["channel_name"] == "general"
    assert meta["author_id"] == "U2" and meta["author_name"] == "Bob Builder"
    assert meta["thread_ts"] == parent_ts and meta["ts"] != parent_ts
    assert meta["permalink"] == (
        f"https://fake-team.slack.com/archives/C1/p{meta['ts'].replace('.', '')}?thread_ts={parent_ts}&cid=C1"
    )
    assert reply.id == message_memory_id(TEAM_ID, "C1", meta["ts"])
    assert reply.created_at.timestamp() == pytest.approx(float(meta["ts"]), abs=1e-3)
    # user names are looked up once each
    assert fake_slack.count("users.info") == 3
    general = channel_state(sync, "C1")
    assert general["status"] == "ok" and general["last_added"] == 5 and general["total_added"] == 5
    assert general["cursor_ts"] == parent_ts  # the newest top-level message (replies are not in history)
    assert general["last_error"] is None and general["stored_messages"] == 5


async def test_incremental_sync_adds_only_new_messages(
    sync: SlackSync, runtime: Runtime, fake_slack: FakeSlack
) -> None:
    await sync.run()
    again = await sync.run()
    assert again.status == "ok" and sum(c.added + c.updated + c.deleted for c in again.channels) == 0

    fake_slack.post("C2", "U1", "Remember to water the office plants on Monday")
    third = await sync.run()
    assert [(c.channel_name, c.added) for c in third.channels if c.added] == [("random", 1)]
    assert len(stored(runtime)) == len(FIRST_SYNC) + 1
    # later runs ask Slack only for history after the cursor (or the thread window, if older)
    history = [
        c for c in fake_slack.calls if c.method == "conversations.history" and c.params["channel"] == "C2"
    ]
    assert float(history[-1].params["oldest"]) > float(history[0].params["oldest"])


async def test_new_reply_to_a_thread_older_than_the_cursor(
    sync: SlackSync, runtime: Runtime, fake_slack: FakeSlack
) -> None:
    # The thread's parent is 3 days old; only threads active in the last day are watched.
    narrow = SlackSync(
        sync.settings.model_copy(update={"slack_thread_window_days": 1.0}), runtime.memories, runtime.db
    )
    parent = fake_slack.post("C2", "U1", "Which laptop should the new hire get?", at=time.time() - 3 * 86400)
    fake_slack.post("C2", "U2", "A 14 inch one with 32 GB of memory", thread_ts=parent, at=time.time() - 3600)
    await narrow.run()
    fake_slack.post("C2", "U3", "Order it before the end of the month", thread_ts=parent)

    report = await narrow.run()
    assert [(c.channel_name, c.added) for c in report.channels if c.added] == [("random", 1)]
    # the parent is older than both the cursor and the window: history did not return it
    last_history = [c for c in fake_slack.calls if c.method == "conversations.history"][-1]
    assert float(last_history.params["oldest"]) > float(parent)
    assert "Order it before the end of the month" in texts(runtime)


async def test_edited_message_updates_its_memory(
    sync: SlackSync, runtime: Runtime, fake_slack: FakeSlack
) -> None:
    await sync.run()
    ts = next(ts for ts, m in fake_slack.channels["C2"].messages.items() if "Thai place" in m["text"])
    fake_slack.edit("C2", ts, "Our team lunch moved to the Italian place on Thursday")

    report = await sync.run()
    assert [(c.channel_name, c.updated) for c in report.channels if c.updated] == [("random", 1)]
    memory = runtime.memories.get(READER, message_memory_id(TEAM_ID, "C2", ts))
    assert memory.text.endswith("Our team lunch moved to the Italian place on Thursday")
    hits = runtime.memories.search(READER, "where is the team lunch?", limit=1).results
    assert hits[0].id == memory.id and "Italian" in hits[0].text
    assert len(stored(runtime)) == len(FIRST_SYNC)


async def test_deleted_messages_delete_their_memories(
    sync: SlackSync, runtime: Runtime, fake_slack: FakeSlack
) -> None:
    await sync.run()
    general = fake_slack.channels["C1"].messages
    gone = next(ts for ts, m in general.items() if "conference room" in m["text"])
    reply = next(ts for ts, m in general.items() if "Carol owns" in m["text"])
    parent = next(ts for ts, m in general.items() if "Who owns" in m["text"])
    fake_slack.delete("C1", gone)  # vanishes from history
    fake_slack.delete("C1", reply)  # vanishes from its thread
    fake_slack.delete("C1", parent)  # becomes a tombstone (its thread still has a reply)
    # Slack may also report a deletion as a message_deleted event in history
    wifi = next(ts for ts, m in fake_slack.channels["C2"].messages.items() if "wifi" in m["text"])
    fake_slack.delete("C2", wifi)
    fake_slack.post("C2", None, "", subtype="message_deleted", deleted_ts=wifi, hidden=True)

    report = await sync.run()
    assert {c.channel_name: c.deleted for c in report.channels if c.deleted} == {"general": 3, "random": 1}
    assert sorted(texts(runtime)) == sorted(
        t
        for t in FIRST_SYNC
        if not any(k in t for k in ("conference room", "Carol owns", "Who owns", "wifi"))
    )
    assert channel_state(sync, "C1")["total_deleted"] == 3
    assert (await sync.run()).status == "ok"  # nothing left to delete, nothing re-added


async def test_rate_limit_is_honoured(sync: SlackSync, runtime: Runtime, fake_slack: FakeSlack) -> None:
    fake_slack.rate_limit("conversations.history", retry_after=1, times=2)
    fake_slack.rate_limit("users.info", retry_after=1)

    report = await sync.run()

    assert report.status == "ok"
    assert fake_slack.early_requests == 0  # never came back before Retry-After had passed
    limited = [c for c in fake_slack.calls if c.status == 429]
    assert [c.method for c in limited] == ["conversations.history", "conversations.history", "users.info"]
    assert sorted(texts(runtime)) == sorted(FIRST_SYNC)


async def test_invalid_token_is_recorded_and_retried_next_run(
    sync: SlackSync, runtime: Runtime, fake_slack: FakeSlack
) -> None:
    fake_slack.token = "xoxb-another-token"
    report = await sync.run()
    assert report.status == "error" and "SLACK_BOT_TOKEN" in (report.error or "")
    workspace = channel_state(sync, "*")
    assert workspace["status"] == "error" and "the Slack token is invalid" in str(workspace["last_error"])
    assert stored(runtime) == []

    fake_slack.token = sync.settings.slack_bot_token.get_secret_value()  # type: ignore[union-attr]
    assert (await sync.run()).status == "ok"
    assert channel_state(sync, "*")["last_error"] is None and len(stored(runtime)) == len(FIRST_SYNC)


async def test_slack_down_is_recorded(sync: SlackSync, fake_slack: FakeSlack) -> None:
    fake_slack.fail_with = 503
    report = await sync.run()
    assert report.status == "error" and "HTTP 503" in (report.error or "")
    assert fake_slack.count("auth.test") == 0 and len(fake_slack.calls) == 3  # two retries, then gave up


async def test_unreadable_and_unknown_channels_are_reported_per_channel(
    sync: SlackSync, runtime: Runtime
) -> None:
    chosen = SlackSync(
        sync.settings.model_copy(update={"slack_channels": "#random, secret, C3, no-such-channel"}),
        runtime.memories,
        runtime.db,
    )
    report = await chosen.run()

    outcome = {c.channel_name: (c.status, c.error) for c in report.channels}
    assert outcome["random"] == ("ok", None)
    assert outcome["old-project"] == ("archived", None)
    assert outcome["secret"][0] == "error" and "/invite" in str(outcome["secret"][1])
    assert outcome["no-such-channel"][0] == "error" and "SLACK_CHANNELS" in str(outcome["no-such-channel"][1])
    assert report.status == "error"
    assert sorted(texts(runtime)) == sorted(FIRST_SYNC[5:])  # random's messages were still stored
    assert "/invite" in str(channel_state(chosen, "C4")["last_error"])


async def test_interrupted_sync_resumes_after_restart_without_duplicates(
    sync: SlackSync, runtime: Runtime, fake_slack: FakeSlack
) -> None:
    # Small batches; Carol is first looked up for general's thread replies, after three
    # batches of history are stored: stop the sync there, as Ctrl-C or a crash would.
    small = SlackSync(sync.settings, runtime.memories, runtime.db, batch_size=2)
    gate = fake_slack.hold("users.info", user="U3")
    task = asyncio.create_task(small.run())
    await asyncio.to_thread(fake_slack.entered["users.info"].wait, 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.set()
    half = {m.id for m in stored(runtime)}
    assert sorted(m.text.split("): ", 1)[1] for m in stored(runtime)) == sorted(FIRST_SYNC[:3])
    parent_ts = next(ts for ts, m in fake_slack.channels["C1"].messages.items() if "Who owns" in m["text"])
    assert channel_state(sync, "C1")["cursor_ts"] == parent_ts  # the newest stored history batch

    runtime.close()  # restart: a new process opens the same database and Qdrant directory
    restarted = Runtime.build(sync.settings, embedder=runtime.embedder)
    try:
        report = await SlackSync(sync.settings, restarted.memories, restarted.db).run()
        assert report.status == "ok"
        assert sorted(texts(restarted)) == sorted(FIRST_SYNC)
        ids = [m.id for m in stored(restarted)]
        assert len(ids) == len(set(ids)) == len(FIRST_SYNC) and half <= set(ids)
        assert sum(c.added for c in report.channels) == len(FIRST_SYNC) - len(half)
    finally:
        restarted.close()


async def test_a_second_run_while_one_is_running_is_skipped(sync: SlackSync, fake_slack: FakeSlack) -> None:
    gate = fake_slack.hold("auth.test")
    first = asyncio.create_task(sync.run())
    await asyncio.to_thread(fake_slack.entered["auth.test"].wait, 30)
    assert sync.running
    second = await sync.run()
    assert second.status == "busy"
    gate.set()
    assert (await first).status == "ok" and not sync.running


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_two_replicas_on_postgresql_never_sync_at_once(
    sync: SlackSync, runtime: Runtime, fake_slack: FakeSlack
) -> None:
    replica = SlackSync(sync.settings, runtime.memories, runtime.db)  # another server, same database
    gate = fake_slack.hold("auth.test")
    first = asyncio.create_task(sync.run())
    await asyncio.to_thread(fake_slack.entered["auth.test"].wait, 30)

    skipped = await replica.run()
    assert skipped.status == "busy" and "another server" in (skipped.error or "")
    gate.set()
    assert (await first).status == "ok"
    assert len(stored(runtime)) == len(FIRST_SYNC)
    assert (await replica.run()).status == "ok"  # the lock was released
    assert len(stored(runtime)) == len(FIRST_SYNC)
