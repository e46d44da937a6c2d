"""Alembic environment: runs on the connection that ``stitchwork.storage.migrate`` passes in."""

from __future__ import annotations

from alembic import context

from stitchwork.storage.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise SystemExit("run migrations with `stitchwork db upgrade`, which supplies the connection")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
