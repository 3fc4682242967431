"""Export and import: one user's memories as a gzip'd JSON Lines file (docs/backup.md).

Export streams: SQL is read in pages (keyset on ``created_at, id``), each page's vectors
in one Qdrant call, and the compressed bytes come out as they are made, so an export of
100k memories never sits in memory. Import reads the whole file once to check it (a
damaged file imports nothing), then writes it through the bulk path in batches. Ids are
kept, so an interrupted import run again adds only what is missing.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import IO, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import and_, func, or_, select

from memory_server import __version__
from memory_server.errors import InvalidInput, NotFound
from memory_server.identity import validate_client_name, validate_memory_id, validate_user_id
from memory_server.schemas import MemoryTypeName
from memory_server.services.base import Caller, ServiceBase
from memory_server.services.bulk import BATCH_SIZE, BulkItem, BulkResult, BulkWriter, point_vector
from memory_server.storage.models import App, Memory, MemoryState, User

log = logging.getLogger(__name__)

FORMAT = "memory-server-export"
FORMAT_VERSION = 1
EXPORTED_STATES = (MemoryState.active.value, MemoryState.paused.value, MemoryState.archived.value)
EXPORT_PAGE_SIZE = 500
SPOOL_BYTES = 64 * 1024 * 1024  # an unseekable upload is copied to a temporary file past this

ImportMode = Literal["skip", "overwrite"]
Progress = Callable[[int, int], None]
"""Called with (memories done, memories in all) as an export or import goes on."""


class EmbedderInfo(BaseModel):
    """The embedder that made the vectors of an export."""

    name: str
    dims: int = Field(gt=0)


class ExportHeader(BaseModel):
    """The first line of an export file."""

    model_config = ConfigDict(extra="ignore")

    format: str
    version: int
    exported_at: datetime | None = None
    user_id: str
    embedder: EmbedderInfo | None = None
    vectors: bool = False
    filters: dict[str, Any] = Field(default_factory=dict)


class ExportedMemory(BaseModel):
    """One memory line of an export file; only ``id`` and ``text`` are required."""

    model_config = ConfigDict(extra="ignore")

    id: str
    text: str
    app: str | None = None
    state: Literal["active", "paused", "archived"] = "active"
    memory_type: MemoryTypeName = "long_term"
    importance: float = Field(0.5, ge=0, le=1)
    categories: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    archived_at: datetime | None = None
    expires_at: datetime | None = None
    access_count: int = Field(0, ge=0)
    last_accessed_at: datetime | None = None
    vector: list[float] | None = None

    @field_validator("id")
    @classmethod
    def _uuid(cls, value: str) -> str:
        try:
            return validate_memory_id(value)
        except InvalidInput as exc:
            raise ValueError(exc.message) from None

    def to_item(self, keep_vector: bool) -> BulkItem:
        return BulkItem(
            memory_id=self.id,
            text=self.text,
            metadata=self.metadata,
            created_at=self.created_at,
            app=self.app,
            state=self.state,
            memory_type=self.memory_type,
            importance=self.importance,
            categories=self.categories,
            updated_at=self.updated_at,
            archived_at=self.archived_at,
            expires_at=self.expires_at,
            access_count=self.access_count,
            last_accessed_at=self.last_accessed_at,
            vector=self.vector if keep_vector else None,
        )


class ImportReport(BaseModel):
    """What an import did."""

    user_id: str
    total: int = Field(description="memories in the file")
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: dict[str, str] = Field(default_factory=dict, description="id -> why it was not imported")
    reembedded: bool = Field(description="vectors were computed here rather than taken from the file")

    def count(self, result: BulkResult) -> None:
        self.added += len(result.added)
        self.updated += len(result.updated)
        self.unchanged += len(result.unchanged)
        self.skipped.update(result.skipped)


class BackupService(ServiceBase):
    """Export one user's memories to the backup format, and import such a file."""

    # ---------------------------------------------------------------- export

    def export(
        self,
        user_id: str,
        app: str | None = None,
        since: datetime | None = None,
        include_vectors: bool = False,
        progress: Progress | None = None,
        page_size: int = EXPORT_PAGE_SIZE,
    ) -> Iterator[bytes]:
        """The gzip'd JSON Lines export of ``user_id``'s memories, as chunks of bytes.

        Active, paused and archived memories are exported (deleted ones are not), oldest
        first; ``app`` keeps one app's, ``since`` those created or changed at or after it.
        Arguments are checked here, before the first chunk, so a web route can still
        answer with an error status; the chunks are read from the stores as they are
        consumed.
        """
        validate_user_id(user_id)
        if app is not None:
            validate_client_name(app)
        since = _aware(since)
        self.access.flush()  # access counts are part of the export
        with self.db.session() as session:
            user_pk = session.scalar(select(User.id).where(User.user_id == user_id))
            if user_pk is None:
                raise NotFound(f"there is no user {user_id!r} on this server")
            conditions: list[Any] = [Memory.user_id == user_pk, Memory.state.in_(EXPORTED_STATES)]
            if app is not None:
                if session.scalar(select(App.id).where(App.owner_id == user_pk, App.name == app)) is None:
                    raise NotFound(f"user {user_id!r} has no app {app!r}")
                conditions.append(App.name == app)
            if since is not None:
                conditions.append(Memory.updated_at >= since)
            total = session.scalar(
                select(func.count()).select_from(Memory).join(App, App.id == Memory.app_id).where(*conditions)
            )
        embedder = self.pool.embedder.embedder
        header = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "exported_at": self.clock().astimezone(UTC).isoformat(),
            "exported_by": f"memory-server {__version__}",
            "user_id": user_id,
            "embedder": {"name": embedder.name, "dims": embedder.dims},
            "vectors": include_vectors,
            "filters": {
                "app": app,
                "since": since.astimezone(UTC).isoformat() if since else None,
                "states": list(EXPORTED_STATES),
            },
        }
        return self._export_chunks(
            user_id, header, conditions, total or 0, include_vectors, progress, page_size
        )

    def _export_chunks(
        self,
        user_id: str,
        header: dict[str, Any],
        conditions: list[Any],
        total: int,
        include_vectors: bool,
        progress: Progress | None,
        page_size: int,
    ) -> Iterator[bytes]:
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: a gzip stream
        first = compressor.compress((json.dumps(header, separators=(",", ":")) + "\n").encode())
        if first:
            yield first
        store = self.pool.get(user_id).store if include_vectors else None
        after: tuple[datetime, str] | None = None
        done = 0
        while True:
            page = list(conditions)
            if after is not None:
                page.append(
                    or_(
                        Memory.created_at > after[0],
                        and_(Memory.created_at == after[0], Memory.id > after[1]),
                    )
                )
            with self.db.session() as session:
                rows = session.execute(
                    select(Memory, App.name)
                    .join(App, App.id == Memory.app_id)
                    .where(*page)
                    .order_by(Memory.created_at, Memory.id)
                    .limit(page_size)
                ).all()
                categories = self._categories_for(session, [row.id for row, _ in rows])
            if not rows:
                break
            vectors: dict[str, list[float] | None] = {}
            if store is not None:
                points = store.retrieve_many([row.id for row, _ in rows], with_vectors=True)
                vectors = {str(p.id): point_vector(p) for p in points}
            lines = [
                _memory_line(row, app_name, categories.get(row.id, []), include_vectors, vectors.get(row.id))
                for row, app_name in rows
            ]
            chunk = compressor.compress("".join(lines).encode())
            if chunk:
                yield chunk
            done += len(rows)
            if progress is not None:
                progress(done, max(total, done))
            last = rows[-1][0]
            after = (last.created_at, last.id)
        yield compressor.flush()

    # ---------------------------------------------------------------- import

    def import_file(
        self,
        source: bytes | IO[bytes],
        user_id: str | None = None,
        mode: ImportMode = "skip",
        client_name: str = "import",
        progress: Progress | None = None,
        batch_size: int = BATCH_SIZE,
    ) -> ImportReport:
        """Import an export file (bytes or a binary file object) into ``user_id`` (default: the file's).

        The whole file is checked before anything is written: a damaged or unsupported
        file raises ``InvalidInput`` naming the problem and imports nothing. ``mode`` says
        what happens to ids that are already stored: ``skip`` leaves them, ``overwrite``
        replaces them with the file's. Memories keep their ids, so running an interrupted
        import again adds only what is missing. Vectors in the file are used when they
        were made by the embedder this server runs; otherwise texts are embedded again.
        ``client_name`` is the app recorded as having made the changes.
        """
        if mode not in ("skip", "overwrite"):
            raise InvalidInput(f"mode must be skip or overwrite, not {str(mode)[:40]!r}")
        with contextlib.ExitStack() as stack:
            stream = _seekable(source, stack)
            start = stream.tell()
            header, total, vectors = _check(stream)
            target = validate_user_id(user_id) if user_id is not None else header.user_id
            caller = Caller(target, client_name, enforce_app_state=False)
            running = self.pool.embedder.embedder
            same_embedder = header.embedder is not None and (header.embedder.name, header.embedder.dims) == (
                running.name,
                running.dims,
            )
            reembedded = not same_embedder or vectors < total
            report = ImportReport(user_id=target, total=total, reembedded=reembedded)
            writer = BulkWriter(self.db, self.pool, self.limits, self.clock)
            stream.seek(start)
            batch: list[BulkItem] = []
            done = 0
            for record in _memories(stream):
                batch.append(record.to_item(keep_vector=same_embedder))
                if len(batch) >= batch_size:
                    report.count(writer.upsert_many(caller, batch, batch_size, on_existing=mode))
                    done += len(batch)
                    batch = []
                    if progress is not None:
                        progress(done, total)
            if batch:
                report.count(writer.upsert_many(caller, batch, batch_size, on_existing=mode))
                done += len(batch)
            if progress is not None:
                progress(done, total)
        log.info(
            "imported %d memories for %s: %d added, %d updated, %d unchanged, %d skipped",
            total,
            target,
            report.added,
            report.updated,
            report.unchanged,
            len(report.skipped),
        )
        return report


# -------------------------------------------------------------------- writing


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def _memory_line(
    row: Memory, app_name: str, categories: list[str], include_vectors: bool, vector: list[float] | None
) -> str:
    record = {
        "id": row.id,
        "text": row.content,
        "app": app_name,
        "state": row.state,
        "memory_type": row.memory_type,
        "importance": row.importance,
        "categories": categories,
        "metadata": row.metadata_ or {},
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
        "archived_at": _iso(row.archived_at),
        "expires_at": _iso(row.expires_at),
        "access_count": row.access_count,
        "last_accessed_at": _iso(row.last_accessed_at),
    }
    line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    if include_vectors:
        # Qdrant stores float32; nine significant digits give back exactly the same float32
        # in about half the characters of a float64 repr.
        numbers = "null" if vector is None else "[" + ",".join(f"{v:.9g}" for v in vector) + "]"
        line = f'{line[:-1]},"vector":{numbers}}}'
    return line + "\n"


# -------------------------------------------------------------------- reading


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _seekable(source: bytes | IO[bytes], stack: contextlib.ExitStack) -> IO[bytes]:
    """``source`` as a file we can read twice (check, then import)."""
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(bytes(source))
    if source.seekable():
        return source
    spool: IO[bytes] = stack.enter_context(tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES))  # noqa: SIM115
    shutil.copyfileobj(source, spool)
    spool.seek(0)
    return spool


def _lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """Numbered non-blank lines of a gzip'd (or plain) JSON Lines file."""
    start = stream.tell()
    magic = stream.read(2)
    stream.seek(start)
    reader: Iterable[bytes] = gzip.GzipFile(fileobj=stream, mode="rb") if magic == b"\x1f\x8b" else stream
    number = 0
    try:
        for number, line in enumerate(reader, 1):
            if line.strip():
                yield number, line
    except (EOFError, OSError, zlib.error) as exc:
        reason = "it ends early (truncated)" if isinstance(exc, EOFError) else "its gzip data is damaged"
        raise InvalidInput(f"the file cannot be read after line {number}: {reason}") from None


def _parse_header(number: int, line: bytes) -> ExportHeader:
    not_export = (
        f"line {number} is not a {FORMAT} header: this is not a memory-server export "
        "(gzip'd JSON Lines whose first line names the format)"
    )
    try:
        raw = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput(not_export) from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise InvalidInput(not_export)
    version = raw.get("version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise InvalidInput(
            f"export format version {str(version)[:20]} is not supported: this server reads version "
            f"{FORMAT_VERSION}" + ("; upgrade memory-server to import it" if newer else "")
        )
    try:
        header = ExportHeader.model_validate(raw)
        validate_user_id(header.user_id)
    except ValidationError as exc:
        raise InvalidInput(f"line {number} (the header): {_first_error(exc)}") from None
    except InvalidInput as exc:
        raise InvalidInput(f"line {number} (the header): {exc.message}") from None
    return header


def _parse_memory(number: int, line: bytes) -> ExportedMemory:
    try:
        raw = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput(f"line {number} is not valid JSON") from None
    try:
        return ExportedMemory.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(f"line {number}: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"])
    return f"{where}: {error['msg']}" if where else str(error["msg"])


def _check(stream: IO[bytes]) -> tuple[ExportHeader, int, int]:
    """Read the whole file once: its header, how many memories, how many of them have vectors."""
    lines = _lines(stream)
    first = next(lines, None)
    if first is None:
        raise InvalidInput("the file is empty: an export starts with a header line")
    header = _parse_header(*first)
    dims = header.embedder.dims if header.embedder is not None else None
    total = with_vectors = 0
    seen: set[str] = set()
    for number, line in lines:
        record = _parse_memory(number, line)
        if record.vector is not None:
            if dims is not None and len(record.vector) != dims:
                raise InvalidInput(
                    f"line {number}: the vector has {len(record.vector)} numbers but the header says {dims}"
                )
            with_vectors += 1
        if record.id in seen:
            raise InvalidInput(f"line {number}: memory {record.id} appears twice in the file")
        seen.add(record.id)
        total += 1
    return header, total, with_vectors


def _memories(stream: IO[bytes]) -> Iterator[ExportedMemory]:
    lines = _lines(stream)
    next(lines)  # the header, checked already
    for number, line in lines:
        yield _parse_memory(number, line)
