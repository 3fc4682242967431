"""Structured JSON logs on stderr (stdout belongs to the MCP protocol in stdio mode)."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

_NOISY = ("httpx", "httpcore", "mem0", "qdrant_client", "urllib3", "openai", "fastembed", "onnxruntime")


class _DropExpectedToolErrors(logging.Filter):
    """fastmcp logs every ``ToolError`` at ERROR; ours are answers to bad input, not faults."""

    def filter(self, record: logging.LogRecord) -> bool:
        from fastmcp.exceptions import ToolError

        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, ToolError)


class RedactCredentials(logging.Filter):
    """Masks ``?token=`` values, bearer credentials and API tokens in every record.

    uvicorn's access log prints the query string; the authentication middleware already
    strips ``token`` from it, and this filter is the second lock for anything else.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from memory_server.auth import redact

        try:
            message = record.getMessage()
        except Exception:
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def configure_logging(level: str = "INFO") -> None:
    """Send every log record to stderr as one JSON object per line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    )
    handler.addFilter(_DropExpectedToolErrors())
    handler.addFilter(RedactCredentials())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "fastmcp", "mcp"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    for name in _NOISY:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
