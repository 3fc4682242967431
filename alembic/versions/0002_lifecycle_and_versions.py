"""Lifecycle fields, content versions, and the seed categories.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 03:42:57
"""

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The documented seed list (docs/memories.md). Descriptions feed the offline categoriser.
SEED_CATEGORIES = {
    "personal": "the user's identity, family, background, life events and personal details",
    "work": "job, employer, colleagues, projects, meetings, deadlines and career",
    "preferences": "likes, dislikes, favourites, tastes and how the user wants things done",
    "health": "health conditions, allergies, medication, fitness, sleep and wellbeing",
    "travel": "trips, flights, hotels, destinations, commuting and places visited",
    "finance": "money, budgets, bank accounts, bills, investments, salary and purchases",
    "education": "studies, courses, school, university, learning, languages and skills",
    "relationships": "friends, partner, family members, pets and social connections",
    "hobbies": "hobbies, sports, games, music, art, reading and leisure activities",
    "food": "meals, diet, cooking, recipes, restaurants, coffee and drinks",
    "technology": "software, programming, computers, devices, tools and technical setup",
    "home": "house, apartment, address, chores, furniture, garden and household",
    "events": "appointments, birthdays, plans, schedules and upcoming dates",
    "goals": "goals, plans, intentions, habits the user wants to build and to-dos",
    "entertainment": "films, series, books, podcasts, games and media the user follows",
}


def _category_id(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"memory-server:category:{name}"))


def upgrade() -> None:
    op.create_table(
        "memory_versions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("memory_id", sa.String(length=36), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("changed_by", sa.String(length=36), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["changed_by"], ["apps.id"], name=op.f("fk_memory_versions_changed_by_apps"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["memory_id"],
            ["memories.id"],
            name=op.f("fk_memory_versions_memory_id_memories"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_memory_versions")),
        sa.UniqueConstraint("memory_id", "version", name="uq_memory_versions_memory_version"),
    )
    with op.batch_alter_table("memories", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("memory_type", sa.String(length=32), server_default="long_term", nullable=False)
        )
        batch_op.add_column(
            sa.Column("importance", sa.Float(), server_default=sa.text("0.5"), nullable=False)
        )
        batch_op.add_column(
            sa.Column("access_count", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.add_column(sa.Column("last_accessed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_memories_state_expires", ["state", "expires_at"], unique=False)
        batch_op.create_index("ix_memories_user_type", ["user_id", "memory_type"], unique=False)
        batch_op.create_check_constraint(
            "memory_type", "memory_type IN ('short_term', 'long_term', 'rule', 'entity', 'relationship')"
        )
        batch_op.create_check_constraint("importance", "importance >= 0 AND importance <= 1")

    # Existing memories get their current text as version 1.
    op.execute(
        "INSERT INTO memory_versions (id, memory_id, version, content, changed_by, created_at) "
        "SELECT id, id, 1, content, app_id, created_at FROM memories"
    )
    categories = sa.table(
        "categories",
        sa.column("id", sa.String),
        sa.column("name", sa.String),
        sa.column("description", sa.Text),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    now = datetime.now(UTC)
    op.bulk_insert(
        categories,
        [
            {"id": _category_id(n), "name": n, "description": d, "created_at": now}
            for n, d in SEED_CATEGORIES.items()
        ],
    )


def downgrade() -> None:
    op.execute(
        sa.text("DELETE FROM categories WHERE name IN :names").bindparams(
            sa.bindparam("names", list(SEED_CATEGORIES), expanding=True)
        )
    )
    with op.batch_alter_table("memories", schema=None) as batch_op:
        batch_op.drop_constraint("importance", type_="check")
        batch_op.drop_constraint("memory_type", type_="check")
        batch_op.drop_index("ix_memories_user_type")
        batch_op.drop_index("ix_memories_state_expires")
        batch_op.drop_column("expires_at")
        batch_op.drop_column("last_accessed_at")
        batch_op.drop_column("access_count")
        batch_op.drop_column("importance")
        batch_op.drop_column("memory_type")
    op.drop_table("memory_versions")
