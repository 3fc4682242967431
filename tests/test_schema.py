"""The start-up check that skips Alembic when the schema is already at the newest revision."""

from __future__ import annotations

from pathlib import Path

from alembic.script import ScriptDirectory
from sqlalchemy import text

from memory_server.storage import schema
from memory_server.storage.database import alembic_config, make_engine, migrate


def test_head_revision_agrees_with_alembic() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert schema.head_revision() == script.get_current_head()


def test_head_revision_is_none_unless_there_is_exactly_one_head(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text('revision: str = "a"\ndown_revision: str | None = None\n')
    (tmp_path / "b.py").write_text("revision = 'b'\ndown_revision = 'a'\n")
    assert schema.head_revision(tmp_path) == "b"
    (tmp_path / "c.py").write_text('revision = "c"\ndown_revision = "a"\n')  # a branch: two heads
    assert schema.head_revision(tmp_path) is None
    (tmp_path / "d.py").write_text('revision = "d"\ndown_revision = ("b", "c")\n')  # merged again
    assert schema.head_revision(tmp_path) == "d"


def test_is_current_only_at_the_newest_revision(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'memory.db'}")
    try:
        assert not schema.is_current(engine)  # no tables at all
        migrate(engine)
        assert schema.is_current(engine)
        with engine.begin() as connection:  # as if the code were one migration newer than the data
            connection.execute(text("UPDATE alembic_version SET version_num = '0002'"))
        assert not schema.is_current(engine)
    finally:
        engine.dispose()


def test_migrate_runs_alembic_only_when_behind(tmp_path: Path) -> None:
    """A current database is left alone; one behind is upgraded (here from 0002 to head)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'memory.db'}")
    try:
        migrate(engine)
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE api_tokens"))
            connection.execute(text("UPDATE alembic_version SET version_num = '0100'"))
        migrate(engine)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM api_tokens")).scalar_one() == 0
        assert schema.is_current(engine)
    finally:
        engine.dispose()
