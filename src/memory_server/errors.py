"""Domain errors raised by the service layer.

Every adapter maps these the same way: REST turns ``status`` into the HTTP status and
``code`` into the JSON error code; MCP tools turn the message into a ``ToolError``.
Messages are written for the person or model that made the call and never carry
internal details (stack traces, SQL, secrets).
"""


class MemoryServerError(Exception):
    """Base class of every error the service layer raises on purpose."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(MemoryServerError):
    """The caller sent something we cannot accept (empty text, bad id, bad limit)."""

    status = 400
    code = "invalid_input"


class NotFound(MemoryServerError):
    """The thing asked for does not exist for this user."""

    status = 404
    code = "not_found"


class Unauthorized(MemoryServerError):
    """No credential, or one that is unknown, expired, revoked or badly signed."""

    status = 401
    code = "unauthorized"


class Forbidden(MemoryServerError):
    """The caller may not do this (paused app, identity mismatch)."""

    status = 403
    code = "forbidden"


class Conflict(MemoryServerError):
    """The request conflicts with the current state."""

    status = 409
    code = "conflict"


class PayloadTooLarge(InvalidInput):
    """A text or body is over the configured size limit."""

    status = 413
    code = "payload_too_large"


class RateLimited(MemoryServerError):
    """Too many requests with one credential; ``retry_after`` says when to try again (seconds)."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(MemoryServerError):
    """A backing component (database, vector store, embedder, LLM) is down."""

    status = 503
    code = "unavailable"


class ConfigurationError(Exception):
    """Start-up configuration is invalid; the message says how to fix it."""
