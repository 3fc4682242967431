"""N concurrent MCP clients doing mixed add/search over streamable HTTP for a fixed time.

Usage: python benchmarks/concurrency.py --clients 1 10 50 --seconds 20 --memories 10000 [--config ...]

Each client is an official ``mcp`` SDK session of its own; it loops: 1 add (no LLM) for
every 4 searches, until the time is up. The same harness drives a no-op FastMCP tool in the
same run, so the ratio shows what the memory server keeps of the transport's throughput.
Reports calls/s, latency percentiles, errors and the server's RSS at the start and end.
Loopback only; bounded by ``--seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from harness import (
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
    url: str, k: int, until: float, noop: bool, times: list[float], errors: list[str]
) -> None:
    qs = queries(200, seed=k)
    async with Client(url) as client:
        i = 0
        while time.monotonic() < until:
            if noop:
                name, arguments = "noop", {"query": qs[i % len(qs)]}
            elif i % 5 == 4:
                name, arguments = (
                    "add_memories",
                    {"text": f"client {k} note {i}: {qs[i % len(qs)]}", "infer": False},
                )
            else:
                name, arguments = "search_memory", {"query": qs[i % len(qs)], "limit": 10}
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
    server: Server, clients: int, seconds: float, noop: bool
) -> tuple[list[float], list[str], float]:
    times: list[float] = []
    errors: list[str] = []
    until = time.monotonic() + seconds
    started = time.perf_counter()
    await asyncio.gather(*(client_loop(server.url(), k, until, noop, times, errors) for k in range(clients)))
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
    targets: list[tuple[str, Config | None]] = [("no-op FastMCP tool", None)]
    targets += [(c.label, c) for c in configs(args.config)]
    for label, config in targets:
        with tempfile.TemporaryDirectory() as tmp:
            if config is not None:
                runtime = build_runtime(Path(tmp), config, embedder)
                fill(runtime, fill_items(embedder, args.memories))
                runtime.close()
            app = "noop_app:create" if config is None else None
            with serve(Path(tmp), config or Config({}), app=app) as server:
                for clients in args.clients:
                    rss0 = server.rss_mb()
                    times, errors, wall = asyncio.run(load(server, clients, args.seconds, config is None))
                    print(
                        f"| {label} | {clients} | {len(times) / wall:.0f} | {latency_cells(times)} "
                        f"| {len(errors)} | {rss0:.0f} -> {server.rss_mb():.0f} |",
                        flush=True,
                    )
                    if errors:
                        print(f"  first error: {errors[0]}")


if __name__ == "__main__":
    main()
