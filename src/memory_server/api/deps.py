"""What every REST route needs: the runtime and the calling user."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from memory_server.errors import InvalidInput
from memory_server.identity import validate_client_name, validate_user_id
from memory_server.runtime import Runtime
from memory_server.services.memories import Caller


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


RuntimeDep = Annotated[Runtime, Depends(runtime)]


def user_id(
    request: Request,
    x_user_id: Annotated[
        str | None, Header(description="The user whose memories to use (default: the server's USER_ID).")
    ] = None,
) -> str:
    """The calling user: ``X-User-Id``, or the configured default user."""
    value = x_user_id if x_user_id is not None else request.app.state.runtime.settings.user_id
    return validate_user_id(value)


UserDep = Annotated[str, Depends(user_id)]


def caller_for(rt: Runtime, user: str, app: str | None = None) -> Caller:
    """The user acting through REST; ``app`` only attributes new memories (a paused app does not block)."""
    name = app if app is not None else rt.settings.default_app_id
    try:
        validate_client_name(name)
    except InvalidInput:
        raise InvalidInput(f"invalid app name {name[:64]!r}: use letters, digits and . _ -") from None
    return Caller(user, name, enforce_app_state=False)
