"""Every test here that takes ``db_url`` (or ``sessions``) runs on SQLite and on a test-owned PostgreSQL."""

from tests.db_fixtures import backend, clock, db_url, engine, sessions

__all__ = ["backend", "clock", "db_url", "engine", "sessions"]
