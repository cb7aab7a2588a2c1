"""The runner tests here that take ``sf`` run on SQLite and on a test-owned PostgreSQL."""

from tests.db_fixtures import backend, db_url, engine, sessions, sf

__all__ = ["backend", "db_url", "engine", "sessions", "sf"]
