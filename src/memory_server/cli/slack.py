"""``memory-server slack``: run the Slack sync now, and show its state per channel."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer

from memory_server.cli.common import fail as _fail
from memory_server.cli.common import migrated_database
from memory_server.cli.common import settings_or_fail as _settings
from memory_server.errors import ConfigurationError, MemoryServerError

if TYPE_CHECKING:
    from memory_server.slack.state import ChannelStatus
    from memory_server.slack.sync import SyncReport

slack_app = typer.Typer(
    help="Slack history sync into memories (see docs/slack.md).", no_args_is_help=True, add_completion=False
)


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

    with migrated_database() as (settings, db):
        statuses = SyncState(db).statuses()
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
