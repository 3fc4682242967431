"""Who a request's credential speaks for: API tokens (``AUTH_MODE=token``) or JWTs (``jwt``).

One ``Authenticator`` serves REST, SSE and streamable HTTP alike (the HTTP middleware
calls it once per request). The credential is ``Authorization: Bearer <credential>``
or, for MCP clients that cannot send headers, a ``token`` query parameter. Messages
never repeat a credential.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

import anyio

from memory_server.config import Settings
from memory_server.errors import InvalidInput, Unauthorized, Unavailable
from memory_server.identity import validate_user_id
from memory_server.services.tokens import Principal, TokenService

if TYPE_CHECKING:  # PyJWT (with cryptography) is imported only when AUTH_MODE=jwt: 0.05 s
    import jwt

# Keys of the ASGI scope where the HTTP middleware leaves its findings for the adapters.
PRINCIPAL_KEY = "memory_server.principal"
QUERY_TOKEN_KEY = "memory_server.query_token"
QUERY_PARAMETER = "token"

_QUERY_TOKEN = re.compile(r"(?i)([?&]token=)[^&#\s\"']*")
_BARE_TOKEN = re.compile(r"ms_[A-Za-z0-9_-]{16,}")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',]+")


def redact(text: str) -> str:
    """``text`` with every ``token=`` query value, bearer credential and API token masked."""
    text = _QUERY_TOKEN.sub(r"\1[redacted]", text)
    text = _BEARER.sub(r"\1[redacted]", text)
    return _BARE_TOKEN.sub("ms_[redacted]", text)


def credential_of(scope: MutableMapping[str, Any]) -> tuple[str | None, bool]:
    """The request's credential and whether it came from the query string.

    The ``token`` query parameter is removed from ``scope`` (in place) so that nothing
    downstream, access log included, sees it. A non-Bearer ``Authorization`` header is
    an error rather than being ignored.
    """
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, credential = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() != "bearer" or not credential.strip():
                raise Unauthorized("use Authorization: Bearer <token>")
            return credential.strip(), False
    raw = scope.get("query_string", b"")
    if b"token=" not in raw:
        return None, False
    pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
    found = [v for k, v in pairs if k == QUERY_PARAMETER]
    if not found:
        return None, False
    scope["query_string"] = urlencode([(k, v) for k, v in pairs if k != QUERY_PARAMETER]).encode()
    return found[-1], True


class Authenticator:
    """Checks credentials for the configured ``AUTH_MODE``."""

    def __init__(self, settings: Settings, tokens: TokenService) -> None:
        self.mode = settings.auth_mode_resolved
        self.settings = settings
        self.tokens = tokens
        self._jwks: jwt.PyJWKClient | None = None
        if self.mode == "jwt" and settings.jwt_jwks_url:
            import jwt

            self._jwks = jwt.PyJWKClient(settings.jwt_jwks_url, cache_keys=True, lifespan=300, timeout=10)

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    async def authenticate(self, credential: str) -> Principal:
        """The principal of ``credential``; ``Unauthorized`` if it is not valid."""
        if self.mode == "token":
            principal = await anyio.to_thread.run_sync(self.tokens.authenticate, credential)
            if principal is None:
                raise Unauthorized("the token is unknown, expired or revoked")
            return principal
        return await anyio.to_thread.run_sync(self.verify_jwt, credential)

    def verify_jwt(self, credential: str) -> Principal:
        """Check a JWT's signature, expiry, audience and issuer, then map its claims to a user."""
        import jwt

        s = self.settings
        try:
            if self._jwks is not None:
                key: Any = self._jwks.get_signing_key_from_jwt(credential).key
            else:
                assert s.jwt_secret is not None
                key = s.jwt_secret.get_secret_value()
            claims: dict[str, Any] = jwt.decode(
                credential,
                key,
                algorithms=s.jwt_algorithm_list,
                audience=s.jwt_audience,
                issuer=s.jwt_issuer,
                options={"require": ["exp"], "verify_aud": s.jwt_audience is not None},
            )
        except jwt.PyJWKClientConnectionError:
            raise Unavailable("cannot fetch the signing keys from JWT_JWKS_URL; try again later") from None
        except (jwt.PyJWTError, ValueError) as exc:
            raise Unauthorized(f"the JWT is not valid: {type(exc).__name__}") from None
        subject = claims.get(s.jwt_user_claim)
        try:
            user_id = validate_user_id(subject) if isinstance(subject, str) else ""
        except InvalidInput:
            user_id = ""
        if not user_id:
            raise Unauthorized(f"the JWT's {s.jwt_user_claim!r} claim is not a valid user id")
        roles = claims.get(s.jwt_admin_claim)
        if isinstance(roles, str):
            roles = roles.split()
        is_admin = roles is True or (isinstance(roles, list) and s.jwt_admin_role in roles)
        issuer = claims.get("iss", "")
        return Principal(user_id, None, is_admin, f"jwt:{issuer}:{user_id}")
