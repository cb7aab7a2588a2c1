"""Alembic environment: runs only on a connection handed over by :func:`comms.db.engine.migrate`.

There is no ``alembic.ini`` and no offline (SQL script) mode; ``render_as_batch`` is on for SQLite so that
later migrations can alter tables there.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from comms.db.models import Base

connection = context.config.attributes.get("connection")
if not isinstance(connection, sa.Connection):
    raise RuntimeError("run migrations through comms.db.engine.migrate(url): expected a connection")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
