"""Prometheus metrics: MCP tool calls, HTTP requests, errors and stored memories."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

TOOL_CALLS = Counter(
    "memory_server_mcp_tool_calls_total", "MCP tool calls by tool and outcome", ["tool", "outcome"]
)
TOOL_LATENCY = Histogram(
    "memory_server_mcp_tool_duration_seconds", "MCP tool call latency", ["tool"], buckets=_BUCKETS
)
HTTP_REQUESTS = Counter(
    "memory_server_http_requests_total", "HTTP requests by route and status", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "memory_server_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=_BUCKETS,
)
ERRORS = Counter("memory_server_errors_total", "Errors answered to clients, by kind", ["kind"])
MEMORIES_ADDED = Counter("memory_server_memories_added_total", "Memories stored since start")


class StoredMemoriesCollector(Collector):
    """``memory_server_memories``: memories in the database by state, read at scrape time."""

    def __init__(self, count_by_state: Callable[[], dict[str, int]]) -> None:
        self._count = count_by_state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("memory_server_memories", "Memories stored, by state", labels=["state"])
        for state, count in sorted(self._count().items()):
            family.add_metric([state], count)
        yield family


def register_stored_memories(
    count_by_state: Callable[[], dict[str, int]], registry: CollectorRegistry = REGISTRY
) -> Callable[[], None]:
    """Register the stored-memories gauge; returns a function that unregisters it."""
    collector = StoredMemoriesCollector(count_by_state)
    registry.register(collector)
    return lambda: registry.unregister(collector)
