"""Whether a database is at the newest schema revision, answered without loading Alembic.

Alembic takes a fifth of a second to import, and at almost every start there is nothing to
migrate. The newest revision is read from the migration scripts themselves (their
``revision`` and ``down_revision`` lines), the database's from ``alembic_version``; only when
they differ, or anything is unclear, does ``migrate`` run Alembic.
"""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from memory_server.config import REPO_ROOT

_REVISION = re.compile(r"^revision\s*(?::[^=]*)?=\s*(.+)$", re.MULTILINE)
_DOWN_REVISION = re.compile(r"^down_revision\s*(?::[^=]*)?=\s*(.+)$", re.MULTILINE)
_QUOTED = re.compile(r"""["']([^"']+)["']""")


def head_revision(versions: Path = REPO_ROOT / "alembic" / "versions") -> str | None:
    """The one head of the migration scripts in ``versions``, or None if there is not exactly one."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in versions.glob("*.py"):
        source = script.read_text()
        revision = _REVISION.search(source)
        down = _DOWN_REVISION.search(source)
        if revision is None or down is None:
            continue
        revisions.update(_QUOTED.findall(revision.group(1)))
        parents.update(_QUOTED.findall(down.group(1)))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def is_current(engine: Engine) -> bool:
    """True if the database's schema revision is the newest one (False when in doubt).

    A database that cannot be reached raises, as connecting would for Alembic.
    """
    head = head_revision()
    if head is None:
        return False
    with engine.connect() as connection:
        try:
            stored = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        except DBAPIError:  # no version table yet: a new database
            return False
    return list(stored) == [head]
