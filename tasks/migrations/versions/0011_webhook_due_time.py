"""when a pending webhook's delivery is due, or must have been recorded by: one whose time passed long ago
lost its message (or the process sending it), and the sweeper publishes it again

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    op.add_column("webhooks", sa.Column("due_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_webhooks_pending", "webhooks", ["due_at"], postgresql_where=PENDING, sqlite_where=PENDING
    )


def downgrade() -> None:
    op.drop_index("ix_webhooks_pending", table_name="webhooks")
    op.drop_column("webhooks", "due_at")
