"""Retrieval quality on the LoCoMo dev split: recall@5, recall@10 and MRR of the evidence turns.

Usage:
  python benchmarks/locomo_recall.py [--data ../shared/data/locomo/locomo_dev.json] \\
      --config SEARCH_MODE=dense --config SEARCH_MODE=hybrid

Each conversation becomes one user; every dialogue turn is stored verbatim as one memory
("Speaker: text", timed from its session's date, through the bulk path); every question
of categories 1-4 is asked through ``MemoryService.search`` (limit 10). Recall@k is the
share of a question's evidence turns among the first k results, averaged over questions;
MRR uses the first evidence turn found. No LLM. The data set is CC BY-NC 4.0: it is read
from the shared folder, never copied into the repository.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from harness import MixedEmbedder, build_runtime, configs, machine_line, real_embedder

from memory_server.services.bulk import BulkItem
from memory_server.services.memories import Caller

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "locomo" / "locomo_dev.json"


def session_time(text: str) -> datetime:
    return datetime.strptime(text.strip(), "%I:%M %p on %d %B, %Y").replace(tzinfo=UTC)


def load(path: Path) -> list[tuple[list[BulkItem], dict[str, str], list[tuple[str, list[str]]]]]:
    conversations = []
    for sample in json.loads(path.read_text()):
        conv = sample["conversation"]
        items, dia_of = [], {}
        i = 1
        while f"session_{i}" in conv:
            start = session_time(conv[f"session_{i}_date_time"])
            for j, turn in enumerate(conv[f"session_{i}"]):
                mid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"locomo:{sample['sample_id']}:{turn['dia_id']}"))
                text = f"{turn['speaker']}: {turn['text']}"
                items.append(BulkItem(mid, text, created_at=start + timedelta(seconds=30 * j)))
                dia_of[mid] = turn["dia_id"]
            i += 1
        qa = [
            (q["question"], q["evidence"])
            for q in sample["qa"]
            if q["category"] in (1, 2, 3, 4) and q["evidence"]
        ]
        conversations.append((items, dia_of, qa))
    return conversations


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--config", action="append", help="NAME=VALUE[,NAME=VALUE]; repeat to compare")
    args = parser.parse_args()
    print(machine_line())
    data = load(args.data)
    print(f"{sum(len(c[0]) for c in data)} turns, {sum(len(c[2]) for c in data)} questions (categories 1-4)")
    print("| configuration | recall@5 | recall@10 | MRR |\n|---|---|---|---|")
    for config in configs(args.config):
        r5 = r10 = mrr = 0.0
        n = 0
        with tempfile.TemporaryDirectory() as tmp:
            runtime = build_runtime(Path(tmp), config, MixedEmbedder(real_embedder(config)))
            for c, (items, dia_of, qa) in enumerate(data):
                user = Caller(f"locomo-{c}", "locomo")
                runtime.memories.upsert_many(user, items)
                for question, evidence in qa:
                    found = runtime.memories.search(user, question, limit=10).results
                    got = [dia_of.get(m.id) for m in found]
                    gold = set(evidence)
                    r5 += len(gold & set(got[:5])) / len(gold)
                    r10 += len(gold & set(got)) / len(gold)
                    mrr += next((1 / (k + 1) for k, d in enumerate(got) if d in gold), 0.0)
                    n += 1
            runtime.close()
        print(f"| {config.label} | {r5 / n:.3f} | {r10 / n:.3f} | {mrr / n:.3f} |", flush=True)


if __name__ == "__main__":
    main()
