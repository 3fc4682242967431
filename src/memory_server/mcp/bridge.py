"""Several local stdio clients on one data directory, without fighting over the embedded store.

Embedded Qdrant lets one process open a data directory. So ``memory-server stdio`` on the
embedded store does not open it: it finds the local ``memory-server serve`` of that data
directory (``server.json`` there names its port), starting one in the background when none
runs, and relays MCP between its stdin/stdout and the server's streamable HTTP endpoint for
its user and client. Claude Desktop, Claude Code and Cursor can then all run at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from filelock import FileLock

from memory_server.errors import ConfigurationError

log = logging.getLogger(__name__)

SERVER_FILE = "server.json"
START_TIMEOUT_S = 90.0


def server_file(data_dir: Path) -> Path:
    return data_dir / SERVER_FILE


def announce(data_dir: Path, host: str, port: int) -> None:
    """Written by ``serve`` once it listens, so stdio bridges can find it."""
    reachable = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    path = server_file(data_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "url": f"http://{reachable}:{port}"}))
    tmp.replace(path)


def withdraw(data_dir: Path) -> None:
    """Removed by ``serve`` at shutdown (only if it is still this process's)."""
    path = server_file(data_dir)
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()


def find_local_server(data_dir: Path) -> str | None:
    """The base URL of the running server of ``data_dir``, if one answers."""
    try:
        url = str(json.loads(server_file(data_dir).read_text())["url"])
    except (OSError, ValueError, KeyError):
        return None
    import httpx  # here: the server imports this module, and only stdio clients ask

    try:
        if httpx.get(f"{url}/health", timeout=3).status_code in (200, 503):
            return url
    except httpx.HTTPError:
        return None
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_local_server(data_dir: Path) -> str:
    """Find the data directory's server, or start one in the background; returns its URL.

    A lock file makes concurrent stdio processes start at most one server between them.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(data_dir / "stdio-start.lock"), timeout=START_TIMEOUT_S):
        url = find_local_server(data_dir)
        if url is not None:
            return url
        port = _free_port()
        log_path = data_dir / "serve.log"
        env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "MEMORY_DATA_DIR": str(data_dir)}
        with log_path.open("ab") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "memory_server.cli", "serve"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
                start_new_session=True,  # outlives this stdio client: other clients share it
            )
        log.info("started memory-server serve in the background (pid %d, port %d)", process.pid, port)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            url = find_local_server(data_dir)
            if url is not None:
                return url
            if process.poll() is not None:
                raise ConfigurationError(f"the background server exited at start; see {log_path}")
            time.sleep(0.2)
        raise ConfigurationError(f"the background server did not start in time; see {log_path}")


async def run_bridge(url: str, user_id: str, client_name: str, token: str | None = None) -> None:
    """Relay MCP over stdio to the server's streamable HTTP endpoint for this user and client.

    When the local server requires authentication, ``token`` (MEMORY_SERVER_TOKEN) is sent
    as the ``token`` query parameter, which the server strips before logging.
    """
    from urllib.parse import quote

    from fastmcp.server.server import create_proxy

    target = f"{url}/mcp/{client_name}/http/{user_id}"
    if token:
        target += f"?token={quote(token)}"
    proxy = create_proxy(target, name="memory-server")
    await proxy.run_stdio_async(show_banner=False)
