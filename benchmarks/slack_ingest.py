"""Slack ingestion throughput: a synthetic workspace synced in batches vs one message at a time.

Usage: .venv/bin/python benchmarks/slack_ingest.py [--messages 5000] [--single 1000]

Builds a synthetic workspace (4 channels, 12 people, 10% of messages as thread replies)
on the tests' fake Slack Web API (real HTTP on loopback), then:

- batched: ``memory-server``'s Slack sync end to end (slack-sdk, paginated history and
  replies, ``MemoryService.upsert_many``), into a fresh data directory;
- one at a time: the same memory texts through ``MemoryService.add`` (infer off), one
  call per message, into another fresh data directory (``--single`` of them; the rate is
  per message, so a sample is enough).

SQLite, embedded Qdrant, MiniLM int8 ONNX, no LLM. Loopback only; stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import random
import socket
import sys
import tempfile
import time
from pathlib import Path

import memory_server  # noqa: F401  (mem0 telemetry off before anything imports mem0)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakes.server import free_port  # noqa: E402
from tests.fakes.slack_server import TOKEN, FakeSlack  # noqa: E402

from memory_server.config import load_settings  # noqa: E402
from memory_server.runtime import Runtime  # noqa: E402
from memory_server.services.memories import Caller  # noqa: E402
from memory_server.slack.sync import SlackSync  # noqa: E402

PEOPLE = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jun", "Kofi", "Lena"]
TOPICS = ["the release", "the budget", "the offsite", "customer Acme", "the new hire", "the outage",
          "the roadmap", "the design review", "the database migration", "the holiday rota"]  # fmt: skip
SAYS = ["I think we should postpone", "Can someone own", "I finished the notes on", "Reminder about",
        "I have questions about", "Great progress on", "We need a decision on",
        "I updated the doc for"]  # fmt: skip
WHEN = ["today", "tomorrow", "on Monday", "next week", "before Friday", "this sprint", "by end of month"]


def workspace(messages: int, seed: int = 11) -> FakeSlack:
    rng = random.Random(seed)
    slack = FakeSlack(page_size=200)
    for i, name in enumerate(PEOPLE):
        slack.add_user(f"U{i}", name.lower(), name)
    channels = ["C1", "C2", "C3", "C4"]
    for i, channel in enumerate(channels):
        slack.add_channel(channel, ["general", "engineering", "product", "random"][i])
    start = time.time() - 20 * 86400
    parents: list[tuple[str, str]] = []
    for n in range(messages):
        channel = rng.choice(channels)
        text = f"{rng.choice(SAYS)} {rng.choice(TOPICS)} {rng.choice(WHEN)} (item {n})"
        user = f"U{rng.randrange(len(PEOPLE))}"
        at = start + n * (20 * 86400 / messages)
        if parents and rng.random() < 0.1:
            channel, parent = rng.choice(parents[-50:])
            slack.post(channel, user, text, thread_ts=parent, at=at)
        else:
            parents.append((channel, slack.post(channel, user, text, at=at)))
    return slack


def serve_fake(slack: FakeSlack, port: int) -> None:
    import uvicorn

    uvicorn.run(slack.app(), host="127.0.0.1", port=port, log_level="warning")


def wait_for_port(port: int) -> None:
    for _ in range(400):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("the fake Slack server did not start")


def batched(slack_url: str, data_dir: Path) -> tuple[float, int]:
    settings = load_settings(
        data_dir=data_dir, log_level="WARNING", slack_bot_token=TOKEN, slack_api_base_url=slack_url,
        slack_backfill_days=30, slack_memory_user_id="bench-user",
    )  # fmt: skip
    runtime = Runtime.build(settings)
    try:
        runtime.embedder.embed_one("warm up")
        sync = SlackSync(settings, runtime.memories, runtime.db)
        started = time.perf_counter()
        report = asyncio.run(sync.run())
        elapsed = time.perf_counter() - started
        assert report.status == "ok", report
        return elapsed, sum(c.added for c in report.channels)
    finally:
        runtime.close()


def one_at_a_time(texts: list[str], data_dir: Path) -> tuple[float, int]:
    runtime = Runtime.build(load_settings(data_dir=data_dir, log_level="WARNING"))
    try:
        runtime.embedder.embed_one("warm up")
        caller = Caller("bench-user", "slack")
        started = time.perf_counter()
        for text in texts:
            runtime.memories.add(caller, text, infer=False)
        elapsed = time.perf_counter() - started
        return elapsed, runtime.memories.list_memories(caller, limit=1).total
    finally:
        runtime.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--single", type=int, default=1000, help="messages for the one-at-a-time run")
    args = parser.parse_args()

    slack = workspace(args.messages)
    # The fake Slack runs in its own process, so it does not compete for this one's GIL.
    port = free_port()
    server = multiprocessing.get_context("fork").Process(target=serve_fake, args=(slack, port), daemon=True)
    server.start()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            wait_for_port(port)
            batch_s, stored = batched(f"http://127.0.0.1:{port}/api/", Path(tmp) / "batched")
        finally:
            server.terminate()
        # the texts the sync stores, built the same way, one add() each
        names = {u["id"]: u["profile"]["display_name"] for u in slack.users.values()}
        texts = [
            f"{names[m['user']]} in #{c.name} ({time.strftime('%Y-%m-%d %H:%M', time.gmtime(float(ts)))}"
            f" UTC): {m['text']}"
            for c in slack.channels.values()
            for ts, m in sorted(c.messages.items())
        ][: args.single]
        single_s, singles = one_at_a_time(texts, Path(tmp) / "single")

    batch_rate, single_rate = stored / batch_s, len(texts) / single_s
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"memory-server {memory_server.__version__}; {args.messages} synthetic Slack messages "
        "(SQLite, embedded Qdrant, MiniLM int8 ONNX, no LLM)"
    )
    print("| path | messages | seconds | messages/s |\n|---|---|---|---|")
    print(f"| Slack sync, batched (`upsert_many`), end to end over HTTP | {stored} | {batch_s:.1f} | "
          f"{batch_rate:.0f} |")  # fmt: skip
    print(f"| one at a time (`MemoryService.add`), {len(texts)} calls | {singles} stored | {single_s:.1f} | "
          f"{len(texts) / single_s:.0f} |")  # fmt: skip
    print(f"speed-up: {batch_rate / single_rate:.1f}x")


if __name__ == "__main__":
    main()
