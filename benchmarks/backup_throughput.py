"""Export and import throughput for one user: N memories, with and without vectors in the file.

Usage: .venv/bin/python benchmarks/backup_throughput.py [--memories 2000]

Fresh temporary data directories (SQLite, embedded Qdrant, local MiniLM), no network.
The source is filled through the bulk path; each import goes into its own empty server.
"""

from __future__ import annotations

import argparse
import platform
import random
import tempfile
import time
import uuid
from pathlib import Path

import memory_server  # noqa: F401  (mem0 telemetry off before anything imports mem0)
from memory_server.config import load_settings
from memory_server.runtime import Runtime
from memory_server.services.bulk import BulkItem
from memory_server.services.memories import Caller

WORDS = [
    *("river", "garden", "piano", "invoice", "meeting", "sister", "flight", "recipe", "bicycle"),
    *("deadline", "library", "coffee", "project", "mountain", "doctor", "budget", "concert"),
    *("harbour", "lesson", "market", "window", "camera", "violin", "ticket"),
]


def sentences(n: int) -> list[str]:
    rng = random.Random(11)
    return [f"Note {i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20))) for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--memories", type=int, default=2000)
    args = parser.parse_args()
    caller = Caller("bench", "benchmark")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = load_settings(data_dir=root / "source", log_level="WARNING")
        source = Runtime.build(settings)
        embedder = source.embedder
        texts = sentences(args.memories)
        items = [BulkItem(str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench:{i}")), t) for i, t in enumerate(texts)]
        source.memories.upsert_many(caller, items)
        files: dict[bool, bytes] = {}
        for with_vectors in (False, True):
            started = time.perf_counter()
            files[with_vectors] = b"".join(
                source.memories.backups.export("bench", include_vectors=with_vectors)
            )
            elapsed = time.perf_counter() - started
            print(
                f"export {'with' if with_vectors else 'without'} vectors: "
                f"{args.memories / elapsed:8.0f} memories/s"
                f"  ({elapsed:.2f} s, {len(files[with_vectors]) / 1e6:.2f} MB)"
            )
        source.close()
        for with_vectors in (False, True):
            target = Runtime.build(
                load_settings(data_dir=root / f"target-{with_vectors}", log_level="WARNING"),
                embedder=embedder,
            )
            started = time.perf_counter()
            report = target.memories.backups.import_file(files[with_vectors])
            elapsed = time.perf_counter() - started
            assert report.added == args.memories, report
            again = time.perf_counter()
            rerun = target.memories.backups.import_file(files[with_vectors])
            resumed = time.perf_counter() - again
            assert rerun.unchanged == args.memories, rerun
            print(
                f"import {'with' if with_vectors else 'without'} vectors: "
                f"{args.memories / elapsed:8.0f} memories/s"
                f"  ({elapsed:.2f} s; re-run with nothing to do: {resumed:.2f} s)"
            )
            target.close()
    print(f"{platform.machine()}, Python {platform.python_version()}, {args.memories} memories, SQLite")


if __name__ == "__main__":
    main()
