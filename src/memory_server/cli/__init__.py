"""The ``memory-server`` command: serve, stdio, migrate, setup, maintenance, export, import, slack."""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from memory_server import __version__
from memory_server.cli.common import fail as _fail
from memory_server.cli.common import settings_or_fail as _settings
from memory_server.cli.slack import slack_app
from memory_server.cli.tokens import token_app
from memory_server.errors import ConfigurationError, MemoryServerError

if TYPE_CHECKING:
    from memory_server.runtime import Runtime

app = typer.Typer(
    help="Long-term memory for AI assistants over MCP (stdio, SSE, streamable HTTP).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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
    # Start-up makes a million objects that live as long as the process; looking for
    # garbage among them while importing costs 0.3-0.7 s. No collection runs until the app
    # is built, and then they are frozen out of every later one.
    gc.disable()
    from memory_server.config import load_providers
    from memory_server.logging_setup import configure_logging
    from memory_server.storage.embeddings import create_embedder

    settings = _settings(host=host, port=port)
    configure_logging(settings.log_level)
    try:
        settings.check_auth()  # before the model loads, to fail fast
        section = load_providers(settings).embedder
    except ConfigurationError as exc:
        _fail(str(exc))
    with ThreadPoolExecutor(1, thread_name_prefix="embedder-load") as loader:
        # The model loads while the server's modules import: most of that is ONNX Runtime
        # building its session, outside the GIL. (For the local model the thread imports
        # only ONNX Runtime and tokenizers, which nothing else imports.)
        model = loader.submit(create_embedder, settings, section)
        import uvicorn

        from memory_server.api.app import create_app

        try:
            application = create_app(settings, embedder=model.result())
        except (ConfigurationError, MemoryServerError) as exc:
            _fail(str(exc))
    gc.freeze()
    gc.enable()
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
    standalone: Annotated[
        bool,
        typer.Option(
            "--standalone",
            help="Open the stores in this process instead of sharing the data directory's local server.",
        ),
    ] = False,
) -> None:
    """Serve MCP over stdio (for Claude Desktop and other local clients). Logs go to stderr.

    On the embedded store, several stdio clients share one data directory through its local
    server (started in the background when none runs); see docs/architecture.md.
    """
    import anyio

    from memory_server.config import load_providers
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
        embedded = not load_providers(settings).vector_store.config.get("url")
        if embedded and not standalone:
            from memory_server.mcp.bridge import ensure_local_server, run_bridge

            url = ensure_local_server(settings.data_dir)
            with contextlib.suppress(KeyboardInterrupt):
                token = settings.server_token.get_secret_value() if settings.server_token else None
                anyio.run(run_bridge, url, caller.user_id, caller.client_name, token)
            return
        runtime = Runtime.build(settings)
        runtime.pool.warm_up()
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
def doctor(
    repair: Annotated[
        bool, typer.Option("--repair", help="Fix what is found (SQL is the source of truth).")
    ] = False,
    user: Annotated[str | None, typer.Option(help="Check one user only.")] = None,
) -> None:
    """Compare SQL with the vector store: orphan vectors, missing vectors, stale content."""
    from memory_server.logging_setup import configure_logging
    from memory_server.runtime import Runtime

    settings = _settings()
    configure_logging("WARNING")
    try:
        runtime = Runtime.build(settings)
    except (ConfigurationError, MemoryServerError) as exc:
        _fail(str(exc))
    try:
        report = runtime.doctor().check(repair=repair, user_id=user)
    finally:
        runtime.close()
    for drift in report.drift:
        typer.echo(
            f"{drift.user_id}: {len(drift.orphan_vectors)} orphan vector(s), "
            f"{len(drift.missing_vectors)} missing vector(s), {len(drift.stale_content)} stale"
            + (" - repaired" if repair else "")
        )
    typer.echo(f"checked {report.users_checked} user(s): " + ("no drift" if report.clean else "drift found"))
    if not report.clean and not repair:
        raise typer.Exit(1)


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


class ImportMode(StrEnum):
    skip = "skip"
    overwrite = "overwrite"


def _backup_runtime() -> Runtime:
    """The whole back end for a one-off command; logs only warnings, so progress stays readable."""
    from memory_server.logging_setup import configure_logging
    from memory_server.runtime import Runtime

    settings = _settings()
    configure_logging("DEBUG" if settings.log_level == "DEBUG" else "WARNING")
    try:
        return Runtime.build(settings)
    except (ConfigurationError, MemoryServerError) as exc:
        _fail(str(exc))


@contextlib.contextmanager
def _progress(description: str) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar on stderr when it is a terminal; None (no reporting) otherwise."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=None)

        def report(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield report


def _parse_since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        _fail(f"--since {value!r} is not a date: use YYYY-MM-DD or an ISO 8601 time")
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@app.command()
def export(
    user: Annotated[str | None, typer.Option(help="User whose memories to export (USER_ID).")] = None,
    app_name: Annotated[str | None, typer.Option("--app", help="Only the memories of this app.")] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only memories created or changed since this date (YYYY-MM-DD or ISO 8601; UTC)."),
    ] = None,
    vectors: Annotated[
        bool,
        typer.Option("--vectors/--no-vectors", help="Include the vectors (import then needs no embedding)."),
    ] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")
    ] = None,
) -> None:
    """Export a user's memories (gzip'd JSON Lines, docs/backup.md) to stdout or --output."""
    when = _parse_since(since)
    if output is None and sys.stdout.isatty():
        _fail("the export is binary (gzip): redirect stdout to a file (> FILE) or use --output FILE")
    runtime = _backup_runtime()
    partial = output.with_name(output.name + ".partial") if output is not None else None
    try:
        with _progress("exporting") as report:
            chunks = runtime.memories.backups.export(
                user or runtime.settings.user_id,
                app=app_name,
                since=when,
                include_vectors=vectors,
                progress=report,
            )
            with contextlib.ExitStack() as stack:
                sink = stack.enter_context(partial.open("wb")) if partial is not None else sys.stdout.buffer
                for chunk in chunks:
                    sink.write(chunk)
                sink.flush()
        if partial is not None and output is not None:
            os.replace(partial, output)
    except MemoryServerError as exc:
        _fail(exc.message)
    except KeyboardInterrupt:
        typer.echo("memory-server: export interrupted; the output is incomplete", err=True)
        raise typer.Exit(130) from None
    finally:
        if partial is not None:
            partial.unlink(missing_ok=True)
        runtime.close()


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="An export file, or - for stdin.")],
    mode: Annotated[
        ImportMode, typer.Option(help="For memories already stored: skip them, or overwrite them.")
    ] = ImportMode.skip,
    user: Annotated[
        str | None, typer.Option(help="Import into this user instead of the one named in the file.")
    ] = None,
) -> None:
    """Import an export file; run it again after an interruption to finish (no duplicates)."""
    if str(file) != "-" and not file.is_file():
        _fail(f"{file} is not a file")
    runtime = _backup_runtime()
    try:
        with contextlib.ExitStack() as stack:
            source = sys.stdin.buffer if str(file) == "-" else stack.enter_context(file.open("rb"))
            report_progress = stack.enter_context(_progress("importing"))
            report = runtime.memories.backups.import_file(
                source, user_id=user, mode=mode.value, client_name="cli-import", progress=report_progress
            )
    except MemoryServerError as exc:
        _fail(exc.message)
    except KeyboardInterrupt:
        typer.echo(
            "memory-server: import interrupted; run the same command again to finish it "
            "(memories already imported are not duplicated)",
            err=True,
        )
        raise typer.Exit(130) from None
    finally:
        runtime.close()
    for memory_id, reason in list(report.skipped.items())[:20]:
        typer.echo(f"skipped {memory_id}: {reason}", err=True)
    if len(report.skipped) > 20:
        typer.echo(f"... and {len(report.skipped) - 20} more skipped", err=True)
    typer.echo(
        f"imported {report.total} memories for {report.user_id}: {report.added} added, "
        f"{report.updated} updated, {report.unchanged} unchanged, {len(report.skipped)} skipped"
        + (" (re-embedded)" if report.reembedded else " (vectors from the file)"),
        err=True,
    )


app.add_typer(slack_app, name="slack")
app.add_typer(token_app, name="token")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="memory-server")


if __name__ == "__main__":
    main()
