"""memory-server: long-term memory for AI assistants over MCP."""

# isort: skip_file

from memory_server import _mem0_guard  # noqa: F401  (must run before mem0 is imported)

import os
from importlib.metadata import PackageNotFoundError, version

# FastMCP keeps session state in py-key-value, which has beartype check every call of its
# own unless told not to; its import on the first tool call takes 0.21 s instead of 0.30.
os.environ.setdefault("PY_KEY_VALUE_DISABLE_BEARTYPE", "true")

try:
    __version__ = version("memory-server")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
