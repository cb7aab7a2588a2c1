"""Person groups (pool targets of a policy tier) and pager contacts.

* ``person_group`` (site, name, ``pick`` = all | least_recent, ``size``, active) and ``person_group_member``
  (ordered), the rows behind a policy tier's ``group:<name>`` target;
* ``contact_method.kind`` accepts ``pager`` (addresses ``wctp:<id>``, ``snpp:<id>``, ``mailto:<address>``).
  The kind is a VARCHAR with a CHECK constraint on both backends (``native_enum=False`` since 0001: there is no
  PostgreSQL enum type to ``ALTER TYPE``), so the constraint is replaced: dropped and created on PostgreSQL;
  rebuilt with the table on SQLite (which cannot alter a constraint), keeping the rows that legs refer to.

Downgrade refuses while pager contacts exist (it would have to delete contact rows that legs refer to).

Revision ID: 0003 Revises: 0002 Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies (a migration must not change when the models do).
KIND_CHECK = "ck_contact_method_contact_kind"
OLD_KINDS = ("sip", "pstn_voice", "sms")
NEW_KINDS = (*OLD_KINDS, "pager")


def _kind_check(kinds: Sequence[str]) -> str:
    return "kind IN (" + ", ".join(f"'{k}'" for k in kinds) + ")"


COLUMNS = "id, person_id, kind, address, priority, label, active"


def _create_contact_method(kinds: Sequence[str]) -> None:
    """``contact_method`` as 0001 made it, with ``kinds`` allowed (SQLite only: see :func:`_replace_kind_check`)."""
    op.create_table(
        "contact_method",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("person_id", sa.String(length=36), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(*kinds, name="contact_kind", native_enum=False, create_constraint=True, length=16),
            nullable=False,
        ),
        sa.Column("address", sa.String(length=255), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=100), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["person_id"], ["person.id"], name=op.f("fk_contact_method_person_id_person")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contact_method")),
        sa.UniqueConstraint(
            "person_id", "kind", "address", name=op.f("uq_contact_method_person_id_kind_address")
        ),
    )
    op.create_index(op.f("ix_contact_method_person_id"), "contact_method", ["person_id"], unique=False)


def _replace_kind_check(kinds: Sequence[str]) -> None:
    if op.get_context().dialect.name != "sqlite":
        op.drop_constraint(op.f(KIND_CHECK), "contact_method", type_="check")
        op.create_check_constraint(op.f(KIND_CHECK), "contact_method", _kind_check(kinds))
        return
    # SQLite cannot alter a constraint: the table is rebuilt. Not with batch mode: it copies into a new table
    # and drops the original, and with foreign keys on (comms.db.engine turns them on; PRAGMA foreign_keys
    # cannot change inside the migration's transaction) dropping a table that call_leg rows refer to fails.
    # Deferred, the drop counts those references as pending violations, and the rows re-inserted into the
    # table of the same name settle them again before commit (SQLite's "12-step" rebuild, foreign keys kept).
    op.execute("PRAGMA defer_foreign_keys = ON")
    op.execute(f"CREATE TABLE _contact_method_0003 AS SELECT {COLUMNS} FROM contact_method")
    op.drop_index(op.f("ix_contact_method_person_id"), table_name="contact_method")
    op.drop_table("contact_method")
    _create_contact_method(kinds)
    op.execute(f"INSERT INTO contact_method ({COLUMNS}) SELECT {COLUMNS} FROM _contact_method_0003")
    op.execute("DROP TABLE _contact_method_0003")


def upgrade() -> None:
    op.create_table(
        "person_group",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("site_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column(
            "pick",
            sa.Enum(
                "all",
                "least_recent",
                name="group_pick",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("size", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.CheckConstraint("size >= 1 AND size <= 50", name=op.f("ck_person_group_size_range")),
        sa.ForeignKeyConstraint(["site_id"], ["site.id"], name=op.f("fk_person_group_site_id_site")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_person_group")),
        sa.UniqueConstraint("site_id", "name", name=op.f("uq_person_group_site_id_name")),
    )
    op.create_index(op.f("ix_person_group_site_id"), "person_group", ["site_id"], unique=False)
    op.create_table(
        "person_group_member",
        sa.Column("group_id", sa.String(length=36), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("person_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"], ["person_group.id"], name=op.f("fk_person_group_member_group_id_person_group")
        ),
        sa.ForeignKeyConstraint(
            ["person_id"], ["person.id"], name=op.f("fk_person_group_member_person_id_person")
        ),
        sa.PrimaryKeyConstraint("group_id", "position", name=op.f("pk_person_group_member")),
        sa.UniqueConstraint("group_id", "person_id", name=op.f("uq_person_group_member_group_id_person_id")),
    )
    op.create_index(
        op.f("ix_person_group_member_person_id"), "person_group_member", ["person_id"], unique=False
    )
    _replace_kind_check(NEW_KINDS)


def downgrade() -> None:
    pagers = op.get_bind().scalar(sa.text("SELECT count(*) FROM contact_method WHERE kind = 'pager'"))
    if pagers:
        raise RuntimeError(
            f"cannot downgrade below 0003: {pagers} pager contact method(s) exist: expected none "
            "(0002 has no pager kind; remove them from the directory and the database first)"
        )
    _replace_kind_check(OLD_KINDS)
    op.drop_index(op.f("ix_person_group_member_person_id"), table_name="person_group_member")
    op.drop_table("person_group_member")
    op.drop_index(op.f("ix_person_group_site_id"), table_name="person_group")
    op.drop_table("person_group")
