"""A real ``memory-server serve`` with AUTH_MODE=token: tokens from the CLI, MCP over streamable HTTP
with a Bearer header and over SSE with ``?token=``, and no credential in the server's log."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from .conftest import _stop, child_env, free_port, register_log, server_command

pytestmark = pytest.mark.acceptance


@dataclass
class AuthServer:
    url: str
    alice: str
    bob: str
    log: Path


def create_token(env: dict[str, str], user: str, cwd: Path) -> str:
    done = subprocess.run(
        [*server_command(), "token", "create", "--user", user, "--name", f"{user}-laptop"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=True,
    )
    token = done.stdout.strip()
    assert token.startswith("ms_") and token not in done.stderr
    return token


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory, acceptance_model_dir: Path) -> Iterator[AuthServer]:
    root = tmp_path_factory.mktemp("auth-server")
    port = free_port()
    env = child_env(root / "data", acceptance_model_dir, PORT=str(port), AUTH_MODE="token", LOG_LEVEL="INFO")
    alice, bob = (
        create_token(env, "alice", root),
        create_token(env, "bob", root),
    )  # before the server opens the store
    log = root / "serve.log"
    register_log(log)
    with log.open("wb") as sink:
        process = subprocess.Popen([*server_command(), "serve"], env=env, stdout=sink, stderr=sink, cwd=root)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            _stop(process)
            pytest.fail(f"server did not start: {log.read_text()[-3000:]}")
        time.sleep(0.2)
    yield AuthServer(url, alice, bob, log)
    _stop(process)


async def test_bearer_header_over_streamable_http(auth_server: AuthServer) -> None:
    url = f"{auth_server.url}/mcp/cursor/http/alice"
    headers = {"Authorization": f"Bearer {auth_server.alice}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,  # the client the mcp SDK is built on
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        added = await client.call_tool("add_memories", {"text": "Alice keeps her bike in shed 3"})
        assert not added.is_error
        found = await client.call_tool("search_memory", {"query": "where is the bike?"})
        assert found.structured_content["results"][0]["text"] == "Alice keeps her bike in shed 3"

    # no credential, a wrong one, or bob's token on alice's path: refused before any tool runs
    assert httpx.post(url, json={}).status_code == 401
    assert httpx.post(url, json={}, headers={"Authorization": "Bearer ms_not-a-token"}).status_code == 401
    assert httpx.post(url, json={}, headers={"Authorization": f"Bearer {auth_server.bob}"}).status_code == 403


async def test_query_token_over_sse_and_no_credential_in_the_log(auth_server: AuthServer) -> None:
    url = f"{auth_server.url}/mcp/claude-desktop/sse/bob?token={auth_server.bob}"
    async with Client(sse_client(url)) as client:
        added = await client.call_tool("add_memories", {"text": "Bob's allotment is plot 17"})
        assert not added.is_error
        listed = await client.call_tool("list_memories", {})
        assert [m["text"] for m in listed.structured_content["results"]] == ["Bob's allotment is plot 17"]
    rest = httpx.get(
        f"{auth_server.url}/api/v1/memories",
        headers={"Authorization": f"Bearer {auth_server.bob}", "X-User-Id": "alice"},
    )
    assert rest.status_code == 403
    time.sleep(0.5)  # let the server flush its access log lines
    log = auth_server.log.read_text()
    assert "token=" in log or "GET /mcp/claude-desktop/sse/bob" in log  # the requests were logged...
    assert auth_server.bob not in log and auth_server.alice not in log  # ...without the credentials
