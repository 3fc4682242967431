"""N concurrent MCP clients doing mixed add/search over streamable HTTP for a fixed time.

Usage: python benchmarks/concurrency.py --clients 1 10 50 --seconds 20 --memories 10000 [--config ...]

Each client is an official ``mcp`` SDK session of its own; it loops: 1 add (no LLM) for
every 4 searches, until the time is up. The same harness drives two floors in the same run:
a no-op FastMCP tool (the transport), so the ratio shows what the memory server keeps of
the transport's throughput, and a tool that only embeds each text with the server's model
(``noop_app.create_embedding``), what any server that embeds every query and memory on
these cores can keep at most.
Reports calls/s, latency percentiles, errors and the server's RSS at the start and end.
Loopback only; bounded by ``--seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import (
    FLOORS,
    Config,
    MixedEmbedder,
    Server,
    build_runtime,
    configs,
    fill,
    fill_items,
    latency_cells,
    machine_line,
    queries,
    real_embedder,
    serve,
)
from mcp import Client


async def client_loop(
    url: str, k: int, until: float, floor: str | None, times: list[float], errors: list[str]
) -> None:
    """One client's calls; ``floor`` names the floor app's tool (None: the memory server)."""
    qs = queries(200, seed=k)
    async with Client(url) as client:
        i = 0
        while time.monotonic() < until:
            # Past its first 200 calls a client adds a suffix, so no text is an embedding-cache hit.
            query = qs[i % len(qs)] + (f" ({i // len(qs)})" if i >= len(qs) else "")
            text = query if i % 5 != 4 else f"client {k} note {i}: {query}"
            arguments: dict[str, Any]
            if floor is not None:
                name, arguments = floor, {"query": text}
            elif i % 5 == 4:
                name, arguments = "add_memories", {"text": text, "infer": False}
            else:
                name, arguments = "search_memory", {"query": text, "limit": 10}
            started = time.perf_counter()
            try:
                result = await client.call_tool(name, arguments)
                if result.is_error:
                    errors.append(str(result.content)[:200])
            except Exception as exc:  # counted, not fatal: the run measures errors
                errors.append(repr(exc)[:200])
            times.append(time.perf_counter() - started)
            i += 1


async def load(
    server: Server, clients: int, seconds: float, floor: str | None
) -> tuple[list[float], list[str], float]:
    times: list[float] = []
    errors: list[str] = []
    until = time.monotonic() + seconds
    started = time.perf_counter()
    await asyncio.gather(*(client_loop(server.url(), k, until, floor, times, errors) for k in range(clients)))
    return times, errors, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--memories", type=int, default=10_000)
    parser.add_argument("--config", action="append", help="NAME=VALUE[,NAME=VALUE]; give twice to compare")
    args = parser.parse_args()
    print(machine_line())
    print(
        f"settings: {args.seconds:.0f} s per row, 4 searches : 1 add, {args.memories} memories stored first"
    )
    print("| server | clients | calls/s | n | p50 ms | p95 ms | p99 ms | errors | RSS MB start -> end |")
    print("|---|---|---|---|---|---|---|---|---|")
    embedder = MixedEmbedder(real_embedder())
    # (label, floor tool or None for the memory server, configuration)
    targets: list[tuple[str, str | None, Config | None]] = [
        (label, tool, None) for tool, (label, _) in FLOORS.items()
    ]
    targets += [(c.label, None, c) for c in configs(args.config)]
    for label, floor, config in targets:
        with tempfile.TemporaryDirectory() as tmp:
            if config is not None:
                runtime = build_runtime(Path(tmp), config, embedder)
                fill(runtime, fill_items(embedder, args.memories))
                runtime.close()
            app = FLOORS[floor][1] if floor is not None else None
            with serve(Path(tmp), config or Config({}), app=app) as server:
                for clients in args.clients:
                    rss0 = server.rss_mb()
                    times, errors, wall = asyncio.run(load(server, clients, args.seconds, floor))
                    print(
                        f"| {label} | {clients} | {len(times) / wall:.0f} | {latency_cells(times)} "
                        f"| {len(errors)} | {rss0:.0f} -> {server.rss_mb():.0f} |",
                        flush=True,
                    )
                    if errors:
                        print(f"  first error: {errors[0]}")


if __name__ == "__main__":
    main()
