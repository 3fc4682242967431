"""Bulk ingestion throughput (memories per second) through the batch path of import and Slack sync.

Usage: python benchmarks/bulk.py --memories 3000 \\
    --config VECTOR_ENGINE=qdrant-local --config VECTOR_ENGINE=edge

Every memory is embedded for real (fresh sentences, no cache), in ``upsert_many`` batches
of 256: one embedder call, one vector upsert and one SQL transaction per batch.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

from harness import USER, build_runtime, configs, machine_line, real_embedder, sentences

from memory_server.services.bulk import BulkItem


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--memories", type=int, default=3000)
    parser.add_argument("--config", action="append", help="NAME=VALUE[,NAME=VALUE]; give twice to compare")
    args = parser.parse_args()
    print(machine_line())
    rates = []
    print(f"settings: {args.memories} memories, batches of 256, MiniLM ONNX (2 threads), SQLite, one user")
    print("| configuration | memories | seconds | memories/s |\n|---|---|---|---|")
    for k, config in enumerate(configs(args.config)):
        texts = sentences(args.memories, seed=1000 + k)  # fresh texts: no embedding cache hits
        items = [BulkItem(str(uuid.uuid4()), t) for t in texts]
        with tempfile.TemporaryDirectory() as tmp:
            runtime = build_runtime(Path(tmp), config, real_embedder(config))
            started = time.perf_counter()
            result = runtime.memories.upsert_many(USER, items)
            seconds = time.perf_counter() - started
            runtime.close()
        assert len(result.added) == len(items), result.skipped
        rates.append(len(items) / seconds)
        print(f"| {config.label} | {len(items)} | {seconds:.1f} | {rates[-1]:.0f} |", flush=True)
    if len(rates) == 2:
        print(f"ratio (2nd/1st): {rates[1] / rates[0]:.2f}")


if __name__ == "__main__":
    main()
