"""With no external provider configured, nothing leaves the machine."""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from memory_server.config import load_settings
from memory_server.runtime import Runtime
from memory_server.services.memories import Caller

_outbound: list[str] = []
_watching = False


def _is_local(host: Any) -> bool:
    if host is None or isinstance(host, bytes | bytearray):
        return True
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False  # a name that needs DNS: outbound


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if not _watching:
        return
    if event == "socket.connect":
        sock, address = args
        if getattr(sock, "family", None) == socket.AF_UNIX or isinstance(address, str | bytes):
            return
        if not _is_local(address[0]):
            _outbound.append(f"connect {address!r}")
    elif event == "socket.getaddrinfo" and not _is_local(args[0]):
        _outbound.append(f"resolve {args[0]!r}")


sys.addaudithook(_hook)


@pytest.fixture
def watch_network() -> Iterator[list[str]]:
    global _watching
    _outbound.clear()
    _watching = True
    try:
        yield _outbound
    finally:
        _watching = False


def test_the_watch_catches_outbound_connections(watch_network: list[str]) -> None:
    sys.audit("socket.connect", socket.socket(), ("203.0.113.9", 443))
    sys.audit("socket.getaddrinfo", "api.openai.com", 443, 0, 0, 0)
    sys.audit("socket.connect", socket.socket(), ("127.0.0.1", 5432))
    assert watch_network == ["connect ('203.0.113.9', 443)", "resolve 'api.openai.com'"]


def test_start_and_full_cycle_make_no_outbound_connection(
    watch_network: list[str], tmp_path: Path, model_dir: Path
) -> None:
    # Everything from settings to the loaded model happens inside the watch.
    settings = load_settings(data_dir=tmp_path / "data", embedding_model_dir=tmp_path / "fresh-model")
    runtime = Runtime.build(settings)
    try:
        service = runtime.memories
        caller = Caller("offline-user", "claude-desktop")
        memory = service.add(caller, "I keep my notes in a paper notebook").results[0]
        assert service.search(caller, "where are my notes?", limit=1).results[0].id == memory.id
        service.list_memories(caller)
        service.get(caller, memory.id)
        service.update(caller, memory.id, "I moved my notes to a text file")
        service.delete(caller, [memory.id])
        service.delete_all(caller)
    finally:
        runtime.close()
    assert watch_network == []
