"""memory-server: long-term memory for AI assistants over MCP."""

# isort: skip_file

from memory_server import _mem0_guard  # noqa: F401  (must run before mem0 is imported)

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("memory-server")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
