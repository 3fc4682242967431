"""Neutralise mem0's import-time side effects before anything imports mem0.

mem0 reads ``MEM0_TELEMETRY`` and ``MEM0_DIR`` when it is imported: with telemetry on it
sends PostHog events, fetches a notices file from GitHub and opens a second embedded
Qdrant under ``~/.mem0``. memory-server never wants that, so telemetry is forced off
here, in the one module every entry point imports first, and mem0's directory goes
under the data directory instead of the home directory.
"""

import os
from pathlib import Path

os.environ["MEM0_TELEMETRY"] = "False"
os.environ.setdefault(
    "MEM0_DIR",
    str(Path(os.environ.get("MEMORY_DATA_DIR") or "~/.memory-server").expanduser() / "mem0"),
)
