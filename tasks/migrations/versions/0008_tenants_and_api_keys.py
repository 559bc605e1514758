"""the gateway's API keys; jobs and usage rows carry their tenant

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=36), primary_key=True),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False, unique=True),
        sa.Column("requests_per_minute", sa.Integer(), nullable=True),
        sa.Column("tokens_per_minute", sa.Integer(), nullable=True),
        sa.Column("budget_tokens", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_api_keys_tenant", "api_keys", ["tenant"])
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("tenant", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_jobs_tenant_created_at", ["tenant", "created_at"])
    with op.batch_alter_table("usage") as batch_op:
        batch_op.add_column(sa.Column("tenant", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_usage_tenant_created_at", ["tenant", "created_at"])


def downgrade() -> None:
    with op.batch_alter_table("usage") as batch_op:
        batch_op.drop_index("ix_usage_tenant_created_at")
        batch_op.drop_column("tenant")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_index("ix_jobs_tenant_created_at")
        batch_op.drop_column("tenant")
    op.drop_table("api_keys")
