"""Fixtures for the acceptance tests: a real ``memory-server serve`` process and real MCP clients.

Nothing here imports the server into the test process except to provision the embedding
model; every check goes through a socket or a pipe, as a user's MCP client would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

# Settings the server reads from the environment: none of the developer's may reach a child.
_SERVER_VARS = re.compile(
    r"^(MEMORY_|DATABASE_URL$|QDRANT_|USER_ID$|DEFAULT_APP_ID$|OPENAI_|LLM_|EMBEDDER_|EMBEDDING_|"
    r"LOG_LEVEL$|HOST$|PORT$|MAX_MEMORY_BYTES$|DUPLICATE_THRESHOLD$|SEARCH_MIN_SCORE$|FASTMCP_)"
)
STARTUP_TIMEOUT_S = 60.0
EXPECTED_TOOLS = {
    "add_memories",
    "search_memory",
    "list_memories",
    "get_memory",
    "update_memory",
    "delete_memories",
    "delete_all_memories",
}

# Log files of the child processes started in this session, attached to failing tests' reports.
_CHILD_LOGS: list[Path] = []


def server_command() -> list[str]:
    """The ``memory-server`` console script next to this interpreter, else ``python -m``."""
    script = Path(sys.executable).with_name("memory-server")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "memory_server.cli"]


def child_env(data_dir: Path, model_dir: Path, **extra: str) -> dict[str, str]:
    """A clean environment for a server process: only the settings the test chooses."""
    env = {k: v for k, v in os.environ.items() if not _SERVER_VARS.match(k)}
    env.update(
        MEMORY_DATA_DIR=str(data_dir),
        EMBEDDING_MODEL_DIR=str(model_dir),
        HOST="127.0.0.1",
        LOG_LEVEL="WARNING",
        FASTMCP_SHOW_SERVER_BANNER="false",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def register_log(path: Path) -> None:
    _CHILD_LOGS.append(path)


def _tail(path: Path, limit: int = 6000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return text[-limit:] if text else "<empty>"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed and _CHILD_LOGS:
        for path in _CHILD_LOGS:
            report.sections.append((f"child process log {path.name}", _tail(path)))
    return report


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running ``memory-server serve`` process."""

    base_url: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    def mcp_url(self, client: str, transport: str, user: str) -> str:
        return f"{self.base_url}/mcp/{client}/{transport}/{user}"

    def log(self) -> str:
        return _tail(self.log_path, 20000)


@pytest.fixture(scope="session")
def acceptance_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The MiniLM model, copied offline from installed packages once per session."""
    from memory_server.storage.embeddings import provision_minilm

    return Path(provision_minilm(tmp_path_factory.mktemp("acceptance-model") / "minilm"))


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, acceptance_model_dir: Path) -> Iterator[Server]:
    """One real HTTP server (REST + MCP over SSE and streamable HTTP) for the whole session."""
    root = tmp_path_factory.mktemp("http-server")
    data_dir, workdir = root / "data", root / "cwd"
    workdir.mkdir()
    log_path = root / "serve.log"
    register_log(log_path)
    port = free_port()
    env = child_env(data_dir, acceptance_model_dir, PORT=str(port))
    base_url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*server_command(), "serve", "--port", str(port)],
            env=env,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"memory-server serve exited with {process.returncode}:\n{_tail(log_path)}")
            try:
                if httpx.get(f"{base_url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"memory-server serve was not healthy after {STARTUP_TIMEOUT_S:.0f} s:\n{_tail(log_path)}"
                )
            time.sleep(0.2)
        yield Server(base_url=base_url, data_dir=data_dir, log_path=log_path, process=process)
    finally:
        _stop(process)


@pytest.fixture
def user_id() -> str:
    """A user no other test touches."""
    return f"user-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def other_user_id() -> str:
    return f"other-{uuid.uuid4().hex[:12]}"


# ------------------------------------------------------------------ MCP Inspector CLI

INSPECTOR_PACKAGE = "@modelcontextprotocol/inspector@2.12.0"


@dataclass
class InspectorRun:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        try:
            return json.loads(self.stdout)
        except json.JSONDecodeError:
            raise AssertionError(
                f"Inspector stdout is not JSON (rc={self.returncode}):\n{self.stdout}\nstderr:\n{self.stderr}"
            ) from None


class Inspector:
    """Runs ``npx -y @modelcontextprotocol/inspector --cli`` with a private catalog and home."""

    def __init__(self, npx: str, home: Path) -> None:
        self.npx, self.home = npx, home
        self.first_call = True

    def __call__(self, url: str, transport: str, method: str, *args: str) -> InspectorRun:
        env = {k: v for k, v in os.environ.items() if not _SERVER_VARS.match(k)}
        # Inspector state (catalog, client config) goes to a private directory, not ~/.mcp-inspector.
        env.update(
            MCP_CATALOG_PATH=str(self.home / "mcp.json"),
            MCP_CLIENT_CONFIG_PATH=str(self.home / "client.json"),
        )
        command = [
            self.npx,
            "-y",
            INSPECTOR_PACKAGE,
            "--cli",
            "--transport",
            transport,
            "--server-url",
            url,
            "--method",
            method,
            "--format",
            "json",
            "-q",
            *args,
        ]
        timeout = 300 if self.first_call else 120
        self.first_call = False
        completed = subprocess.run(
            command, env=env, cwd=self.home, capture_output=True, text=True, timeout=timeout, check=False
        )
        return InspectorRun(completed.returncode, completed.stdout, completed.stderr)


@pytest.fixture(scope="session")
def inspector(tmp_path_factory: pytest.TempPathFactory) -> Inspector:
    npx = shutil.which("npx")
    if npx is None:
        if os.environ.get("CI"):
            pytest.fail("npx is required under CI for the MCP Inspector tests (install Node.js)")
        pytest.skip("npx not found: install Node.js to run the MCP Inspector CLI tests")
    return Inspector(npx, tmp_path_factory.mktemp("inspector"))
