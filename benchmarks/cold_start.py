"""Cold start: from process start to the first successful search, with N memories stored.

Usage: python benchmarks/cold_start.py --memories 100000 \\
    --config VECTOR_ENGINE=qdrant-local --config VECTOR_ENGINE=edge

Fills a data directory (bulk path, see harness.py), closes it, then starts
``memory-server serve`` as a new process and calls ``search_memory`` over streamable HTTP
until one succeeds. The time covers interpreter start, imports, model load, migrations,
opening the vector store and the first search. Repeated ``--runs`` times.

The floor row starts the no-op FastMCP server of ``noop_app.py`` the same way and times
process start to its first successful call: the interpreter and the transport's own
imports, which any server built on FastMCP pays before it can answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from pathlib import Path

from harness import (
    FLOORS,
    Config,
    MixedEmbedder,
    build_runtime,
    configs,
    fill,
    fill_items,
    machine_line,
    real_embedder,
    serve,
)
from mcp import Client


async def first_search(url: str, tool: str = "search_memory") -> None:
    """Call ``tool`` until it succeeds (for ``search_memory``: with at least one result)."""
    while True:
        with contextlib.suppress(Exception):
            async with Client(url) as client:
                result = await client.call_tool(tool, {"query": "who bought a violin?"})
                if not result.is_error and (tool != "search_memory" or result.structured_content["results"]):
                    return
        await asyncio.sleep(0.02)


def cold_starts(data: Path, config: Config, runs: int, app: str | None = None) -> list[float]:
    times = []
    for _ in range(runs):
        with serve(data, config, app=app) as server:
            asyncio.run(first_search(server.url(), "noop" if app else "search_memory"))
            times.append(time.perf_counter() - server.started)
    return times


def row(label: str, memories: str, times: list[float]) -> str:
    cells = ", ".join(f"{t:.2f}" for t in times)
    return f"| {label} | {memories} | {cells} | {min(times):.2f} |"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--memories", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--config", action="append", help="NAME=VALUE[,NAME=VALUE]; give twice to compare")
    args = parser.parse_args()
    print(machine_line())
    embedder = MixedEmbedder(real_embedder())
    print("| configuration | memories | cold start s (each run) | best s |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        floor = cold_starts(Path(tmp), Config({}), args.runs, app=FLOORS["noop"][1])
    print(row(f"{FLOORS['noop'][0]} (floor)", "-", floor), flush=True)
    for config in configs(args.config):
        with tempfile.TemporaryDirectory() as tmp:
            runtime = build_runtime(Path(tmp), config, embedder)
            fill(runtime, fill_items(embedder, args.memories))
            runtime.close()
            times = cold_starts(Path(tmp), config, args.runs)
        print(row(config.label, str(args.memories), times), flush=True)


if __name__ == "__main__":
    main()
