"""Soak: N concurrent MCP clients doing mixed add/search over streamable HTTP against a real
``memory-server serve`` process, sampling the server's RSS and open file descriptors.

Usage: .venv/bin/python benchmarks/soak.py --clients 50 --seconds 300

Passes (exit 0) when there were no errors, the file descriptors came back to their level
before the load (no leaked sessions or sockets), and RSS over the second half of the run
grew by less than --rss-slack-mb. Loopback only; bounded by --seconds; stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from mcp import Client

import memory_server
from memory_server.storage.embeddings import provision_minilm

WORDS = ["sailing", "pottery", "chess", "jazz", "orchids", "marathon", "sourdough", "telescope", "violin"]
PLACES = ["Lisbon", "Oslo", "Kyoto", "Lima", "Perth", "Quebec", "Hanoi", "Tbilisi", "Porto"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_targets(pid: int) -> list[str]:
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return sorted(found)


async def client_loop(url: str, k: int, until: float, latencies: list[float], errors: list[str]) -> int:
    calls = 0
    async with Client(url) as client:
        while time.monotonic() < until:
            i = calls
            if i % 5 == 4:
                topic, place = WORDS[(k + i) % 9], PLACES[i % 9]
                text = f"client {k} call {i}: {topic} club in {place} met {k * 1000 + i} times"
                name, arguments = "add_memories", {"text": text, "infer": False}
            else:
                name, arguments = (
                    "search_memory",
                    {"query": f"{WORDS[i % 9]} in {PLACES[k % 9]}", "limit": 10},
                )
            started = time.perf_counter()
            try:
                result = await client.call_tool(name, arguments)
                if result.is_error:
                    errors.append(f"{name}: {str(result.content)[:200]}")
            except Exception as exc:  # counted: the soak measures errors
                errors.append(f"{name}: {exc!r}"[:200])
            latencies.append(time.perf_counter() - started)
            calls += 1
    return calls


async def sample(pid: int, until: float, every: float, samples: list[tuple[float, float, int]]) -> None:
    start = time.monotonic()
    while time.monotonic() < until:
        samples.append((time.monotonic() - start, rss_mb(pid), fd_count(pid)))
        await asyncio.sleep(every)


async def warm_up(base: str, clients: int, seconds: float = 5.0) -> None:
    """The same load for a few seconds first, so every user's collection and the connection pools
    are open before the file-descriptor baseline is taken (opening them is not a leak)."""
    until = time.monotonic() + seconds
    await asyncio.gather(*(client_loop(url_for(base, k), k, until, [], []) for k in range(clients)))


def url_for(base: str, k: int) -> str:
    return f"{base}/mcp/soak-{k % 5}/http/soak-user-{k % 10}"


async def run(args: argparse.Namespace, base: str, pid: int) -> int:
    await warm_up(base, args.clients)
    fds_before = fd_count(pid)
    targets_before = fd_targets(pid)
    latencies: list[float] = []
    errors: list[str] = []
    samples: list[tuple[float, float, int]] = []
    until = time.monotonic() + args.seconds
    sampler = asyncio.create_task(sample(pid, until, args.sample_every, samples))
    calls = await asyncio.gather(
        *(
            client_loop(f"{base}/mcp/soak-{k % 5}/http/soak-user-{k % 10}", k, until, latencies, errors)
            for k in range(args.clients)
        )
    )
    await sampler
    await asyncio.sleep(2)  # let closed sessions be reaped
    fds_after = fd_count(pid)
    if os.environ.get("SOAK_DEBUG"):
        extra = list(fd_targets(pid))
        for t in targets_before:
            if t in extra:
                extra.remove(t)
        print("new fds:", extra)
    half = [s for s in samples if s[0] >= args.seconds / 2]
    growth = (half[-1][1] - half[0][1]) if len(half) >= 2 else 0.0
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q / 100 * (len(ordered) - 1)))] * 1000 if ordered else 0.0

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"memory-server {memory_server.__version__}; {args.clients} clients, {args.seconds} s, "
        "1 add : 4 searches, SQLite + embedded store, MiniLM, no LLM"
    )
    print(
        "| calls | calls/s | errors | p50 ms | p95 ms | p99 ms | RSS start -> end MB "
        "| RSS growth, 2nd half MB | fds before / after |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {sum(calls)} | {sum(calls) / args.seconds:.1f} | {len(errors)} | {pct(50):.1f} | {pct(95):.1f} | "
        f"{pct(99):.1f} | {samples[0][1]:.0f} -> {samples[-1][1]:.0f} | {growth:+.1f} "
        f"| {fds_before} / {fds_after} |"
    )
    print(
        "RSS samples (s, MB): "
        + ", ".join(f"{t:.0f}:{r:.0f}" for t, r, _ in samples[:: max(1, len(samples) // 12)])
    )
    if errors:
        print("first errors:", *errors[:5], sep="\n  ")
    ok = not errors and fds_after <= fds_before + 5 and growth < args.rss_slack_mb
    print(
        "PASS" if ok else "FAIL",
        f"(median latency {statistics.median(latencies) * 1000:.1f} ms)" if latencies else "",
    )
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=300)
    parser.add_argument("--sample-every", type=float, default=5.0)
    parser.add_argument("--rss-slack-mb", type=float, default=40.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        model = provision_minilm(Path(tmp) / "model")
        port = free_port()
        env = {
            **os.environ,
            "MEMORY_DATA_DIR": str(data),
            "EMBEDDING_MODEL_DIR": str(model),
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "LOG_LEVEL": "WARNING",
            "FASTMCP_SHOW_SERVER_BANNER": "false",
        }
        log = open(Path(tmp) / "serve.log", "wb")  # noqa: SIM115
        server = subprocess.Popen(
            [sys.executable, "-m", "memory_server.cli", "serve"], env=env, stdout=log, stderr=log
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit("server did not start")
                time.sleep(0.3)
            code = asyncio.run(run(args, base, server.pid))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
            log.close()
    sys.exit(code)


if __name__ == "__main__":
    main()
