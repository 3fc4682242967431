"""Add and search latency (p50/p95/p99) at N memories, in-process and through MCP streamable HTTP.

Usage:
  python benchmarks/latency.py --memories 1000 10000 100000 \\
      --config VECTOR_ENGINE=qdrant-local --config VECTOR_ENGINE=edge [--json out.json]

Each configuration gets the same workload on a fresh data directory: fill to N memories
(bulk path), then ``--queries`` searches and adds in-process (service layer), then the same
through a ``memory-server serve`` child process with the official ``mcp`` client. A no-op
FastMCP tool served the same way gives the transport's floor, and a tool that only embeds
its text with the server's model (``noop_app.create_embedding``) the floor of any search or
add that embeds its text on the server. With two configurations it prints the second's
p50/p95 over the first's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from harness import (
    FLOORS,
    USER,
    Config,
    MixedEmbedder,
    build_runtime,
    configs,
    fill,
    fill_items,
    latency_cells,
    machine_line,
    pct,
    queries,
    real_embedder,
    sentences,
    serve,
)
from mcp import Client

Timings = dict[str, list[float]]


async def mcp_calls(url: str, adds: list[str], searches: list[str], tool: str | None = None) -> Timings:
    out: Timings = {"add": [], "search": []}
    async with Client(url) as client:
        for _ in range(10):  # warm up the session and the server
            await client.call_tool(tool or "search_memory", {"query": "warm up", "limit": 10})
        if tool is not None:
            for query in searches:
                started = time.perf_counter()
                await client.call_tool(tool, {"query": query, "limit": 10})
                out["search"].append(time.perf_counter() - started)
            return out
        for text in adds:
            started = time.perf_counter()
            result = await client.call_tool("add_memories", {"text": text, "infer": False})
            out["add"].append(time.perf_counter() - started)
            assert not result.is_error, result
        for query in searches:
            started = time.perf_counter()
            result = await client.call_tool("search_memory", {"query": query, "limit": 10})
            out["search"].append(time.perf_counter() - started)
            assert not result.is_error, result
    return out


def run_one(config: Config, n: int, n_queries: int, embedder: MixedEmbedder) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        runtime = build_runtime(data, config, embedder)
        fill_seconds = fill(runtime, fill_items(embedder, n))
        fresh = [f"{s} (fresh)" for s in sentences(3 * n_queries, seed=99)]
        qs = queries(n_queries)
        embedder.real.forget()  # the last run's queries and adds must not be cache hits here
        result: dict[str, object] = {"config": config.label, "memories": n, "fill_s": fill_seconds}
        search_t, add_t = [], []
        for query in qs:
            started = time.perf_counter()
            runtime.memories.search(USER, query, limit=10)
            search_t.append(time.perf_counter() - started)
        for text in fresh[:n_queries]:
            started = time.perf_counter()
            runtime.memories.add(USER, text, infer=False)
            add_t.append(time.perf_counter() - started)
        runtime.close()
        result["in-process search"], result["in-process add"] = search_t, add_t
        with serve(data, config) as server:
            mcp = asyncio.run(
                mcp_calls(server.url(), fresh[n_queries : 2 * n_queries], [q + " " for q in qs])
            )
        result["MCP search"], result["MCP add"] = mcp["search"], mcp["add"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--memories", type=int, nargs="+", default=[1000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--config", action="append", help="NAME=VALUE[,NAME=VALUE]; give twice to compare")
    parser.add_argument("--json", type=Path, help="write the raw timings here (for plot_latency.py)")
    args = parser.parse_args()
    print(machine_line())
    embedder = MixedEmbedder(real_embedder())
    runs = []
    floors: dict[str, list[float]] = {}
    for tool, (_, app) in FLOORS.items():
        with tempfile.TemporaryDirectory() as tmp, serve(Path(tmp), Config({}), app=app) as server:
            floors[tool] = asyncio.run(mcp_calls(server.url(), [], queries(args.queries), tool=tool))[
                "search"
            ]
    floor = floors["noop"]
    for n in args.memories:
        for config in configs(args.config):
            if "EMBEDDING_PRECISION" in config.env:
                embedder = MixedEmbedder(real_embedder(config))
            runs.append(run_one(config, n, args.queries, embedder))
            print(f"  filled {n} for {config.label} in {runs[-1]['fill_s']:.0f} s", flush=True)
    ops = ["in-process search", "in-process add", "MCP search", "MCP add"]
    print(f"settings: {args.queries} queries and adds per size; MiniLM int8 ONNX, SQLite, no LLM, one user")
    print(
        "| memories | configuration | operation | n | p50 ms | p95 ms | p99 ms |\n"
        "|---|---|---|---|---|---|---|"
    )
    for tool, (label, _) in FLOORS.items():
        print(f"| - | {label} (floor) | MCP call | {latency_cells(floors[tool])} |")
    for run in runs:
        for op in ops:
            print(f"| {run['memories']} | {run['config']} | {op} | {latency_cells(run[op])} |")  # type: ignore[arg-type]
    by_size: dict[int, list[dict[str, object]]] = {}
    for run in runs:
        by_size.setdefault(int(run["memories"]), []).append(run)  # type: ignore[call-overload]
    if len(configs(args.config)) == 2:
        print("\n| memories | operation | p50 ratio (2nd/1st) | p95 ratio |\n|---|---|---|---|")
        for n, (a, b) in ((n, pair) for n, pair in by_size.items() if len(pair) == 2):
            for op in ops:
                ta, tb = a[op], b[op]
                print(f"| {n} | {op} | {pct(tb, 50) / pct(ta, 50):.2f} | {pct(tb, 95) / pct(ta, 95):.2f} |")  # type: ignore[arg-type]
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": machine_line(), "floor": floor, "embedding_floor": floors["embed"], "runs": runs}
            )
        )


if __name__ == "__main__":
    main()
