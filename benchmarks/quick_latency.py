"""Add and search latency at N memories for one user: in-process and through MCP streamable HTTP.

Usage: .venv/bin/python benchmarks/quick_latency.py [--memories 1000] [--queries 200]

Runs against a fresh temporary data directory (SQLite, embedded Qdrant, local MiniLM).
Loopback only; stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

import memory_server  # noqa: F401  (mem0 telemetry off before anything imports mem0)

os.environ.setdefault("FASTMCP_SHOW_SERVER_BANNER", "false")

import uvicorn  # noqa: E402
from mcp import Client  # noqa: E402

from memory_server.api.app import create_app  # noqa: E402
from memory_server.config import load_settings  # noqa: E402
from memory_server.runtime import Runtime  # noqa: E402
from memory_server.services.memories import Caller  # noqa: E402

PEOPLE = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jun", "Kofi", "Lena"]
VERBS = ["visited", "cooked", "bought", "painted", "repaired", "photographed", "studied", "sold", "planted"]
THINGS = [
    "a red bicycle",
    "the old piano",
    "sourdough bread",
    "a vintage camera",
    "orchids",
    "a sailboat",
    "the garden shed",
    "a chess set",
    "wool socks",
    "a telescope",
    "olive trees",
    "a violin",
]
PLACES = [
    "in Lisbon",
    "near the river",
    "at the market",
    "in Kyoto",
    "at home",
    "in the mountains",
    "at the office",
    "in Nairobi",
    "by the lake",
    "in Montreal",
]
WHEN = [
    "last Monday",
    "in spring",
    "every weekend",
    "two years ago",
    "yesterday",
    "on her birthday",
    "after work",
    "in December",
]


def sentences(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < n:
        out.add(
            f"{rng.choice(PEOPLE)} {rng.choice(VERBS)} {rng.choice(THINGS)} {rng.choice(PLACES)} "
            f"{rng.choice(WHEN)} (note {len(out)})"
        )
    return list(out)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))] * 1000


def row(name: str, values: list[float]) -> str:
    return (
        f"| {name} | {len(values)} | {pct(values, 50):.1f} | {pct(values, 95):.1f} | {pct(values, 99):.1f} |"
    )


async def through_mcp(
    url: str, adds: list[str], queries: list[str]
) -> tuple[list[float], list[float], list[float]]:
    add_t, search_t, noop_t = [], [], []
    async with Client(url) as client:
        for _ in range(20):  # warm up
            await client.call_tool("list_memories", {"limit": 1})
        for text in adds:
            started = time.perf_counter()
            result = await client.call_tool("add_memories", {"text": text})
            add_t.append(time.perf_counter() - started)
            assert not result.is_error
        for query in queries:
            started = time.perf_counter()
            result = await client.call_tool("search_memory", {"query": query, "limit": 10})
            search_t.append(time.perf_counter() - started)
            assert not result.is_error
        for _ in queries:
            started = time.perf_counter()
            await client.list_tools()
            noop_t.append(time.perf_counter() - started)
    return add_t, search_t, noop_t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--memories", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(data_dir=Path(tmp), log_level="WARNING")
        runtime = Runtime.build(settings)
        service = runtime.memories
        caller = Caller("bench-user", "bench")
        texts = sentences(args.memories + args.queries)
        fill, extra = texts[: args.memories], texts[args.memories :]

        add_times: list[float] = []
        for text in fill:
            started = time.perf_counter()
            service.add(caller, text, infer=False)
            add_times.append(time.perf_counter() - started)
        stored = service.list_memories(caller, limit=1).total
        rng = random.Random(3)
        queries = [
            f"who {rng.choice(VERBS)} {rng.choice(THINGS)} {rng.choice(PLACES)}?" for _ in range(args.queries)
        ]
        search_times: list[float] = []
        for query in queries:
            started = time.perf_counter()
            service.search(caller, query, limit=10)
            search_times.append(time.perf_counter() - started)

        app = create_app(settings, runtime)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}/mcp/bench/http/bench-user"
        mcp_add, mcp_search, mcp_noop = asyncio.run(through_mcp(url, extra[: args.queries], queries))
        server.should_exit = True
        thread.join(timeout=10)

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"memory-server {memory_server.__version__}; {stored} memories stored for one user "
        "(SQLite, embedded Qdrant, MiniLM int8 ONNX, no LLM)"
    )
    print("| operation | n | p50 ms | p95 ms | p99 ms |\n|---|---|---|---|---|")
    print(row(f"add, in-process (0 -> {args.memories} memories)", add_times))
    print(row(f"search, in-process (at {stored})", search_times))
    print(row(f"add, MCP streamable HTTP (at ~{stored})", mcp_add))
    print(row(f"search, MCP streamable HTTP (at ~{stored + len(mcp_add)})", mcp_search))
    print(row("tools/list round trip, MCP streamable HTTP (floor)", mcp_noop))
    print(f"mean in-process search: {statistics.mean(search_times) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
