"""Validation of user ids and client names, and the Qdrant collection of each user."""

import base64
import re
import uuid

from memory_server.errors import InvalidInput

# Emails and the usual id shapes fit; no whitespace, slashes or control characters.
_USER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SAFE_COLLECTION_ID = re.compile(r"[a-z0-9_-]{1,64}")

COLLECTION_PREFIX = "mem_"


def validate_user_id(value: str) -> str:
    """Return ``value`` if it is a valid user id, else raise ``InvalidInput``."""
    if not isinstance(value, str) or not _USER_ID.fullmatch(value):
        raise InvalidInput(
            "invalid user id: use 1-128 characters from letters, digits and . _ @ + -, "
            "starting with a letter or digit"
        )
    return value


def validate_client_name(value: str) -> str:
    """Return ``value`` if it is a valid MCP client (app) name, else raise ``InvalidInput``."""
    if not isinstance(value, str) or not _CLIENT_NAME.fullmatch(value):
        raise InvalidInput(
            "invalid client name: use 1-64 characters from letters, digits and . _ -, "
            "starting with a letter or digit"
        )
    return value


def validate_memory_id(value: str) -> str:
    """Return the canonical form of a memory id (a UUID), else raise ``InvalidInput``."""
    try:
        return str(uuid.UUID(str(value)))
    except (ValueError, AttributeError, TypeError):
        raise InvalidInput(f"invalid memory id {str(value)[:80]!r}: expected a UUID") from None


def collection_name(user_id: str) -> str:
    """The Qdrant collection that holds one user's memories.

    Ids made only of lowercase letters, digits, ``_`` and ``-`` (64 characters at most)
    map to ``mem_u_<id>``; every other id maps to ``mem_x_<base32 of its UTF-8 bytes>``.
    Both forms are injective and use distinct prefixes, so two users never share a
    collection, and the name is safe as a directory name on case-insensitive file
    systems (embedded Qdrant stores a collection as a directory).
    """
    validate_user_id(user_id)
    if _SAFE_COLLECTION_ID.fullmatch(user_id):
        return f"{COLLECTION_PREFIX}u_{user_id}"
    encoded = base64.b32encode(user_id.encode()).decode().rstrip("=").lower()
    return f"{COLLECTION_PREFIX}x_{encoded}"


def dimension_mismatch(name: str, existing: int, wanted: int) -> str:
    """Advice for a collection whose vectors do not fit the configured embedder."""
    return (
        f"Qdrant collection {name!r} holds {existing}-dimension vectors but the configured embedder "
        f"makes {wanted}-dimension ones. Switch back to the embedder the data was made with, or "
        f"export the memories and import them into a fresh data directory (they are re-embedded)."
    )
