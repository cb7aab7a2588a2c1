"""Escalation engine: paging-tree options, the site's on-site activation, the outbox, node heartbeats.

Additive only: new nullable/defaulted columns and two new tables.

* ``escalation_policy.repeat`` (walk the tree N times), ``escalation_policy.severe_fanout`` (K tiers at once
  for a severe incident), ``policy_tier.parallel`` (ring all targets at once, else one after the other);
* ``site.onsite_activation_uri``: the code team's SIP URI, called with a spoken message for a severe incident;
* ``outbox``: one row per notification (place a leg, cancel a leg, raise the on-site activation), written in
  the transaction that decided it, sent after commit; ``key`` is the idempotency key
  (incident:tier:target:channel:attempt);
* ``node``: one heartbeat row per running node (dead nodes' legs are ended by the survivors).

Revision ID: 0002 Revises: 0001 Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("escalation_policy") as batch:
        batch.add_column(sa.Column("repeat", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("severe_fanout", sa.Integer(), nullable=False, server_default="1"))
    with op.batch_alter_table("policy_tier") as batch:
        batch.add_column(sa.Column("parallel", sa.Boolean(), nullable=False, server_default=sa.true()))
    with op.batch_alter_table("site") as batch:
        batch.add_column(sa.Column("onsite_activation_uri", sa.String(length=255), nullable=True))
    op.create_table(
        "outbox",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("key", sa.String(length=300), nullable=False),
        sa.Column("incident_id", sa.String(length=36), nullable=False),
        sa.Column("leg_id", sa.String(length=36), nullable=True),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("node", sa.String(length=100), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claim_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sends", sa.Integer(), nullable=False, server_default="0"),
        sa.ForeignKeyConstraint(
            ["incident_id"], ["incident.id"], name=op.f("fk_outbox_incident_id_incident")
        ),
        sa.ForeignKeyConstraint(["leg_id"], ["call_leg.id"], name=op.f("fk_outbox_leg_id_call_leg")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sa.UniqueConstraint("key", name=op.f("uq_outbox_key")),
    )
    op.create_index(op.f("ix_outbox_sent_at"), "outbox", ["sent_at"], unique=False)
    op.create_index(op.f("ix_outbox_leg_id"), "outbox", ["leg_id"], unique=False)
    op.create_table(
        "node",
        sa.Column("id", sa.String(length=100), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_node")),
    )


def downgrade() -> None:
    op.drop_table("node")
    op.drop_index(op.f("ix_outbox_leg_id"), table_name="outbox")
    op.drop_index(op.f("ix_outbox_sent_at"), table_name="outbox")
    op.drop_table("outbox")
    with op.batch_alter_table("site") as batch:
        batch.drop_column("onsite_activation_uri")
    with op.batch_alter_table("policy_tier") as batch:
        batch.drop_column("parallel")
    with op.batch_alter_table("escalation_policy") as batch:
        batch.drop_column("severe_fanout")
        batch.drop_column("repeat")
