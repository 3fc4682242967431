"""``memory-server token``: create, list and revoke API tokens (AUTH_MODE=token)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer

from memory_server.cli.common import migrated_database

if TYPE_CHECKING:
    from memory_server.services.tokens import TokenService

token_app = typer.Typer(
    help="API tokens for AUTH_MODE=token (see docs/security.md).", no_args_is_help=True, add_completion=False
)


@contextlib.contextmanager
def _tokens() -> Iterator[TokenService]:
    """The token service over a migrated database; no vector store is opened (a server may hold it)."""
    from memory_server.services.tokens import TokenService

    with migrated_database() as (_, db):
        yield TokenService(db)


@token_app.command("create")
def token_create(
    user: Annotated[str, typer.Option(help="The user the token acts as.")],
    app_name: Annotated[
        str | None, typer.Option("--app", help="Limit the token to this app (client name).")
    ] = None,
    expires_in: Annotated[
        str | None, typer.Option(help="Lifetime, e.g. 30d, 12h, 2w (default: no expiry).")
    ] = None,
    admin: Annotated[
        bool, typer.Option("--admin", help="May list users and act across users (/api/v1/admin).")
    ] = False,
    name: Annotated[str | None, typer.Option(help="A label, e.g. the device or client.")] = None,
) -> None:
    """Create a token and print it once (only its hash is stored)."""
    from memory_server.services.tokens import parse_duration

    with _tokens() as tokens:
        info, token = tokens.create(
            user, app_name, parse_duration(expires_in) if expires_in else None, admin, name
        )
    typer.echo(token)
    expiry = f"expires {info.expires_at:%Y-%m-%d %H:%M} UTC" if info.expires_at else "never expires"
    scope = f"app {info.app!r}" if info.app else "every app"
    typer.echo(
        f"token {info.id} ({info.prefix}...) for user {info.user_id!r}, {scope}"
        f"{', admin' if info.is_admin else ''}; {expiry}. It is shown only this once.",
        err=True,
    )


@token_app.command("list")
def token_list(
    user: Annotated[str | None, typer.Option(help="Only this user's tokens.")] = None,
) -> None:
    """List tokens: id, prefix, user, app, expiry, last use and status (never the token)."""
    from rich.console import Console
    from rich.table import Table

    def when(value: datetime | None) -> str:
        return f"{value:%Y-%m-%d %H:%M}" if value else "-"

    with _tokens() as tokens:
        infos = tokens.list_tokens(user)
    table = Table("id", "prefix", "user", "app", "name", "admin", "expires", "last used", "status")
    for t in infos:
        table.add_row(t.id, t.prefix, t.user_id, t.app or "*", t.name or "", "yes" if t.is_admin else "",
                      when(t.expires_at), when(t.last_used_at), t.status)  # fmt: skip
    Console(width=200).print(table)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(metavar="ID|PREFIX", help="The token's id or prefix.")],
) -> None:
    """Revoke a token; servers refuse it within seconds."""
    from memory_server.services.tokens import CACHE_SECONDS

    with _tokens() as tokens:
        info = tokens.revoke(token_id)
    typer.echo(
        f"revoked token {info.id} ({info.prefix}...) of {info.user_id!r}; running servers refuse it "
        f"within {CACHE_SECONDS:g} s",
        err=True,
    )
