"""Cold start: from process start to the first successful search, with N memories stored.

Usage: python benchmarks/cold_start.py --memories 100000 \\
    --config VECTOR_ENGINE=qdrant-local --config VECTOR_ENGINE=edge

Fills a data directory (bulk path, see harness.py), closes it, then starts
``memory-server serve`` as a new process and calls ``search_memory`` over streamable HTTP
until one succeeds. The time covers interpreter start, imports, model load, migrations,
opening the vector store and the first search. Repeated ``--runs`` times.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from pathlib import Path

from harness import (
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


async def first_search(url: str) -> None:
    while True:
        with contextlib.suppress(Exception):
            async with Client(url) as client:
                result = await client.call_tool("search_memory", {"query": "who bought a violin?"})
                if not result.is_error and result.structured_content["results"]:  # type: ignore[index]
                    return
        await asyncio.sleep(0.02)


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
    for config in configs(args.config):
        with tempfile.TemporaryDirectory() as tmp:
            runtime = build_runtime(Path(tmp), config, embedder)
            fill(runtime, fill_items(embedder, args.memories))
            runtime.close()
            times = []
            for _ in range(args.runs):
                with serve(Path(tmp), config) as server:
                    asyncio.run(first_search(server.url()))
                    times.append(time.perf_counter() - server.started)
        cells = ", ".join(f"{t:.2f}" for t in times)
        print(f"| {config.label} | {args.memories} | {cells} | {min(times):.2f} |", flush=True)


if __name__ == "__main__":
    main()
