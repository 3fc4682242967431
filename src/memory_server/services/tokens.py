"""API tokens: create (shown once), list, revoke, and check a presented token.

A token is ``ms_`` followed by 32 random bytes (URL-safe base64). Only its SHA-256 is
stored, with the first characters as a display prefix; a database leak therefore gives
no usable token. Checks are cached in-process for ``CACHE_SECONDS`` so that every
request does not hit the database; a revocation made in this process takes effect at
once, one made elsewhere (the CLI, another replica) within ``CACHE_SECONDS``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import BaseModel
from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from memory_server.errors import InvalidInput, NotFound, Unavailable
from memory_server.identity import validate_client_name, validate_user_id
from memory_server.storage.database import Database
from memory_server.storage.models import ApiToken, User, utcnow

TOKEN_PREFIX = "ms_"
DISPLAY_CHARS = 11  # "ms_" and 8 random characters: enough to tell tokens apart, useless to guess
CACHE_SECONDS = 5.0
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class Principal:
    """Who a credential speaks for: a user, optionally only as one app, maybe an admin."""

    user_id: str
    app: str | None = None
    is_admin: bool = False
    key: str = ""  # stable per credential: the rate limit bucket ("token:<id>", "jwt:<sub>")


class TokenInfo(BaseModel):
    """A token as listed: never the token itself."""

    id: str
    prefix: str
    user_id: str
    app: str | None
    name: str | None
    is_admin: bool
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    status: str


def parse_duration(value: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``2w`` or ``45s`` as a time span."""
    match = _DURATION.match(value)
    if not match or int(match.group(1)) <= 0:
        raise InvalidInput(f"invalid duration {value[:40]!r}: use a number and s, m, h, d or w, e.g. 30d")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def hash_token(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


class TokenService:
    """Token lifecycle over the database; thread-safe."""

    def __init__(self, db: Database, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.clock = clock
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._lock = threading.Lock()

    def create(
        self,
        user_id: str,
        app: str | None = None,
        expires_in: timedelta | None = None,
        is_admin: bool = False,
        name: str | None = None,
    ) -> tuple[TokenInfo, str]:
        """A new token for ``user_id``: its listing, and the token (shown once, never stored)."""
        validate_user_id(user_id)
        if app is not None:
            validate_client_name(app)
        if name is not None and len(name) > 255:
            raise InvalidInput("the token name is over 255 characters")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = self.clock()
        row = ApiToken(
            app_name=app,
            name=name,
            token_hash=hash_token(token),
            prefix=token[:DISPLAY_CHARS],
            is_admin=is_admin,
            created_at=now,
            expires_at=now + expires_in if expires_in is not None else None,
        )
        for _attempt in range(3):
            try:
                with self.db.session() as session:
                    user_pk = session.scalar(select(User.id).where(User.user_id == user_id))
                    if user_pk is None:
                        user = User(user_id=user_id)
                        session.add(user)
                        session.flush()
                        user_pk = user.id
                    row.user_id = user_pk
                    session.add(row)
                    session.flush()
                    return self._info(row, user_id), token
            except IntegrityError:
                continue  # the user was created by another request at the same moment
        raise Unavailable("could not store the token; try again")

    def list_tokens(self, user_id: str | None = None) -> list[TokenInfo]:
        """Every token (or one user's), newest first."""
        query = select(ApiToken, User.user_id).join(User, User.id == ApiToken.user_id)
        if user_id is not None:
            query = query.where(User.user_id == user_id)
        with self.db.session() as session:
            rows = session.execute(query.order_by(ApiToken.created_at.desc())).all()
            return [self._info(token, owner) for token, owner in rows]

    def revoke(self, id_or_prefix: str) -> TokenInfo:
        """Revoke one token, named by its id or its display prefix (which must be unambiguous)."""
        now = self.clock()
        with self.db.session() as session:
            rows = session.execute(
                select(ApiToken, User.user_id)
                .join(User, User.id == ApiToken.user_id)
                .where(or_(ApiToken.id == id_or_prefix, ApiToken.prefix == id_or_prefix))
            ).all()
            if not rows:
                raise NotFound(f"no token with id or prefix {id_or_prefix[:40]!r}")
            if len(rows) > 1:
                raise InvalidInput(f"{id_or_prefix[:40]!r} matches {len(rows)} tokens: use the token id")
            token, owner = rows[0]
            if token.revoked_at is None:
                session.execute(update(ApiToken).where(ApiToken.id == token.id).values(revoked_at=now))
                token.revoked_at = now
            info = self._info(token, owner)
        with self._lock:
            self._cache.clear()  # takes effect in this process at once
        return info

    def authenticate(self, token: str) -> Principal | None:
        """The principal of a valid token; None if it is unknown, expired or revoked."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 100:
            return None
        digest = hash_token(token)
        now_mono = time.monotonic()
        with self._lock:
            cached = self._cache.get(digest)
        if cached is not None and cached[0] > now_mono:
            return cached[1]
        principal = self._lookup(digest)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now_mono + CACHE_SECONDS, principal)
        return principal

    def _lookup(self, digest: str) -> Principal | None:
        now = self.clock()
        with self.db.session() as session:
            row = session.execute(
                select(ApiToken, User.user_id)
                .join(User, User.id == ApiToken.user_id)
                .where(ApiToken.token_hash == digest)
            ).first()
            if row is None:
                return None
            token, owner = row
            if token.revoked_at is not None or (token.expires_at is not None and token.expires_at <= now):
                return None
            session.execute(update(ApiToken).where(ApiToken.id == token.id).values(last_used_at=now))
            return Principal(owner, token.app_name, token.is_admin, f"token:{token.id}")

    def _info(self, token: ApiToken, owner: str) -> TokenInfo:
        now = self.clock()
        if token.revoked_at is not None:
            status = "revoked"
        elif token.expires_at is not None and token.expires_at <= now:
            status = "expired"
        else:
            status = "active"
        return TokenInfo(
            id=token.id,
            prefix=token.prefix,
            user_id=owner,
            app=token.app_name,
            name=token.name,
            is_admin=token.is_admin,
            created_at=token.created_at,
            expires_at=token.expires_at,
            last_used_at=token.last_used_at,
            revoked_at=token.revoked_at,
            status=status,
        )
