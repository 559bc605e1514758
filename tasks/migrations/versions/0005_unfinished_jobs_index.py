"""jobs: a partial index of the jobs not yet final, in place of the index of every job's status

The sweeper's and `requeue --stale`'s query reads only jobs still queued, retrying or running; a partial
index holds just those (a few thousand rows where the table has millions) and costs nothing once a job ends.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UNFINISHED = sa.text("status IN ('queued', 'retrying', 'running')")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_index("ix_jobs_status")
        batch_op.create_index(
            "ix_jobs_unfinished",
            ["status", "created_at"],
            postgresql_where=UNFINISHED,
            sqlite_where=UNFINISHED,
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_index("ix_jobs_unfinished")
        batch_op.create_index("ix_jobs_status", ["status"])
