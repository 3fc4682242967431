"""What every REST route needs: the runtime and the calling user (from the credential when auth is on)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from memory_server.auth import PRINCIPAL_KEY
from memory_server.errors import Forbidden, InvalidInput, Unauthorized
from memory_server.identity import validate_client_name, validate_user_id
from memory_server.runtime import Runtime
from memory_server.services.memories import Caller
from memory_server.services.tokens import Principal


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


RuntimeDep = Annotated[Runtime, Depends(runtime)]


def principal(request: Request) -> Principal | None:
    """The credential's principal; None when authentication is off."""
    if not request.app.state.auth.enabled:
        return None
    found: Principal | None = request.scope.get(PRINCIPAL_KEY)
    if found is None:  # the authentication middleware answers 401 first; this is a second lock
        raise Unauthorized("this server needs a credential: send Authorization: Bearer <token>")
    return found


PrincipalDep = Annotated[Principal | None, Depends(principal)]


def user_id(
    request: Request,
    who: PrincipalDep,
    x_user_id: Annotated[
        str | None,
        Header(
            description="The user whose memories to use (default: the server's USER_ID). With "
            "authentication on, the user comes from the credential; naming another user is 403."
        ),
    ] = None,
) -> str:
    """The calling user: the credential's with auth on, else ``X-User-Id`` or the default user."""
    if who is not None:
        if x_user_id is not None and x_user_id != who.user_id:
            raise Forbidden("X-User-Id names another user than this credential's; leave it out")
        return who.user_id
    value = x_user_id if x_user_id is not None else request.app.state.runtime.settings.user_id
    return validate_user_id(value)


UserDep = Annotated[str, Depends(user_id)]


def acting_app(who: Principal | None, requested: str | None) -> str | None:
    """The app a write is attributed to: an app-scoped token acts only as its own app."""
    if who is None or who.app is None:
        return requested
    if requested is not None and requested != who.app:
        raise Forbidden(f"this token is limited to the app {who.app!r}")
    return who.app


def require_unscoped(who: Principal | None) -> None:
    """Refuse app-scoped tokens (e.g. pausing or resuming apps is the user's decision)."""
    if who is not None and who.app is not None:
        raise Forbidden(f"this token is limited to the app {who.app!r} and cannot change apps")


def admin(who: PrincipalDep) -> Principal:
    """The caller, if it holds an admin credential; 403 for everyone else."""
    if who is None:
        raise Forbidden("admin routes need AUTH_MODE=token or jwt and an admin credential")
    if not who.is_admin:
        raise Forbidden("this route needs an admin credential")
    return who


AdminDep = Annotated[Principal, Depends(admin)]


def operator(who: PrincipalDep) -> None:
    """Server-wide routes (the Slack sync): anyone with auth off, only admins with auth on."""
    if who is not None and not who.is_admin:
        raise Forbidden("this route needs an admin credential")


def caller_for(rt: Runtime, user: str, app: str | None = None) -> Caller:
    """The user acting through REST; ``app`` only attributes new memories (a paused app does not block)."""
    name = app if app is not None else rt.settings.default_app_id
    try:
        validate_client_name(name)
    except InvalidInput:
        raise InvalidInput(f"invalid app name {name[:64]!r}: use letters, digits and . _ -") from None
    return Caller(user, name, enforce_app_state=False)
