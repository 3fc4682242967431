"""Health, metrics, docs and path validation of the HTTP app (in-process ASGI)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from memory_server.api.app import create_app
from memory_server.config import Settings
from memory_server.runtime import Runtime

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
async def http(runtime: Runtime, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, runtime)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        yield client


async def test_health_reports_each_component(http: httpx.AsyncClient) -> None:
    response = await http.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["version"]
    assert body["components"] == {n: {"status": "ok"} for n in ("database", "vector_store", "embedder")}


async def test_health_is_503_and_names_the_component_that_is_down(
    http: httpx.AsyncClient, runtime: Runtime
) -> None:
    runtime.vectors.close()
    response = await http.get("/health")
    assert response.status_code == 503
    components = response.json()["components"]
    assert components["vector_store"]["status"] == "down"
    assert components["database"]["status"] == "ok" and components["embedder"]["status"] == "ok"


async def test_metrics_are_prometheus_text(http: httpx.AsyncClient) -> None:
    await http.get("/health")
    response = await http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'memory_server_http_requests_total{method="GET",route="/health",status="200"}' in text
    assert "memory_server_memories" in text and "memory_server_mcp_tool_duration_seconds" in text


async def test_docs_and_openapi(http: httpx.AsyncClient) -> None:
    assert (await http.get("/docs")).status_code == 200
    assert (await http.get("/openapi.json")).json()["info"]["title"] == "memory-server"


@pytest.mark.parametrize(
    "path", ["/mcp/cursor/http/has%20space", "/mcp/bad@client/http/alice", "/mcp/cursor/sse/" + "u" * 129]
)
async def test_bad_mcp_path_is_400_json(http: httpx.AsyncClient, path: str) -> None:
    response = await http.post(path, json={})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_input"
