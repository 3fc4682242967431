"""Every MCP tool, HTTP route, CLI command and setting is documented."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastmcp import Client

from memory_server.api.app import create_app
from memory_server.cli import app as cli_app
from memory_server.config import Settings
from memory_server.mcp.server import build_mcp
from memory_server.runtime import Runtime

ROOT = Path(__file__).resolve().parents[1]


def documentation() -> str:
    return "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])


def test_every_setting_is_documented() -> None:
    docs = documentation()
    missing = []
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        env_names = getattr(alias, "choices", [name.upper()])
        if not any(f"`{env}`" in docs for env in env_names):
            missing.append(env_names[0])
    assert missing == []


def test_every_cli_command_is_documented() -> None:
    docs = documentation()
    commands = [c.name or (c.callback.__name__ if c.callback else "") for c in cli_app.registered_commands]
    assert commands and [c for c in commands if f"memory-server {c}" not in docs] == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_every_mcp_tool_is_documented(runtime: Runtime) -> None:
    docs = documentation()
    async with Client(build_mcp(runtime.memories)) as client:
        names = [t.name for t in await client.list_tools()]
    assert names and [n for n in names if f"`{n}(" not in docs] == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_http_route_is_documented(runtime: Runtime, settings: Settings) -> None:
    docs = documentation()
    app = create_app(settings, runtime)
    paths = {getattr(r, "path", "") for r in app.routes} - {
        "/openapi.json",
        "/docs/oauth2-redirect",
        "/redoc",
    }
    assert paths and sorted(p for p in paths if f"`{p}" not in docs and f"GET {p}`" not in docs) == []
