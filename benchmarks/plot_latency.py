"""Plot search latency against collection size from ``latency.py --json`` output (PNG).

Usage: python benchmarks/plot_latency.py results.json docs/search_latency.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from harness import pct  # noqa: E402


def main() -> None:
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    data = json.loads(source.read_text())
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for run in data["runs"]:
        for op in ("MCP search", "in-process search"):
            series.setdefault((run["config"], op), []).append((run["memories"], pct(run[op], 95)))
    for (config, op), points in sorted(series.items()):
        points.sort()
        style = "-o" if op.startswith("MCP") else "--s"
        ax.plot([p[0] for p in points], [p[1] for p in points], style, label=f"{op}, {config}")
    ax.axhline(pct(data["floor"], 95), color="grey", linestyle=":", label="no-op MCP tool (floor)")
    if "embedding_floor" in data:  # files written before the embedding floor existed lack it
        ax.axhline(
            pct(data["embedding_floor"], 95),
            color="grey",
            linestyle="--",
            label="MCP tool that embeds its text",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("memories in the user's collection")
    ax.set_ylabel("search latency p95 (ms)")
    ax.set_title("Search latency against collection size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax.text(0.01, -0.2, data["machine"][:110], transform=ax.transAxes, fontsize=6)
    fig.tight_layout()
    fig.savefig(target)


if __name__ == "__main__":
    main()
