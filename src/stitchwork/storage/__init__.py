"""SQLAlchemy tables, Alembic migrations and the SQL job store (SQLite and Postgres)."""
