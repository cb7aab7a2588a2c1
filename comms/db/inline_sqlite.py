"""SQLite on the event loop's own thread: an aiosqlite-shaped connection that runs each call in place.

SQLAlchemy's ``sqlite+aiosqlite`` dialect drives a connection object with aiosqlite's interface
(``async execute``/``fetchall``/``commit`` …). aiosqlite runs every one of those calls on a worker thread and
hands the result back through the event loop: four or five thread hops per statement, ~50 per raise
transaction, which measured as most of the 10 ms a raise took on the 2-core machine (the statements
themselves take microseconds on a WAL file). This module gives the dialect a connection with the same
interface whose calls run on the loop's thread, through ``create_async_engine(..., async_creator=...)``
(see ``docs/decisions/0061-inline-sqlite.md``).

What would block the loop is handled here:

* **Lock waits.** The connection's own busy timeout is 0; a statement refused with ``SQLITE_BUSY`` (another
  connection holds the write lock) is retried after an ``await asyncio.sleep`` with back-off, until the
  configured busy timeout has passed, then the error is raised as SQLite would have. A statement refused with
  ``SQLITE_BUSY`` had no effect, and every write transaction here starts ``BEGIN IMMEDIATE``, so a retry is
  always the same statement against the same state.
* **Checkpoints.** ``wal_autocheckpoint`` is left to SQLite as a backstop, but a :class:`Checkpointer`
  thread (own connection) copies the WAL back every 0.5 s, so commits on the loop do not pay the fsync.
* **Large reads** are the caller's choice: the engine for reports and pages stays on aiosqlite (its thread);
  the inline engine is for the short, indexed statements of the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

from comms.clock import SystemClock

# Lock waits are real time, as SQLite's own busy handler is, whatever clock the caller runs on (a FakeClock in
# tests would never let a wait end).
_REAL_TIME = SystemClock()
_BACKOFF_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


async def _retry_busy(call: Callable[[], Any], busy_timeout_s: float) -> Any:
    """``call()``; on ``SQLITE_BUSY`` sleep (yielding the loop) and retry until ``busy_timeout_s`` passed."""
    deadline: float | None = None
    attempt = 0
    while True:
        try:
            return call()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            now = _REAL_TIME.monotonic()
            if deadline is None:
                deadline = now + busy_timeout_s
            if now >= deadline:
                raise
            await _REAL_TIME.sleep(min(_BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)], deadline - now))
            attempt += 1


class InlineCursor:
    """aiosqlite's ``Cursor`` interface over a ``sqlite3.Cursor``, run in place."""

    def __init__(self, connection: InlineConnection, cursor: sqlite3.Cursor) -> None:
        self._connection = connection
        self._cursor = cursor

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] = ()) -> InlineCursor:
        await _retry_busy(lambda: self._cursor.execute(sql, parameters), self._connection.busy_timeout_s)
        return self

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> InlineCursor:
        rows = list(parameters)  # a retry must see the same parameters again
        await _retry_busy(lambda: self._cursor.executemany(sql, rows), self._connection.busy_timeout_s)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(self._cursor.arraysize if size is None else size)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value


class _ImmediateQueue:
    """Stands in for aiosqlite's request queue, which SQLAlchemy's isolation-level setter writes to directly."""

    def put_nowait(self, item: tuple[asyncio.Future[Any], Callable[[], Any]]) -> None:
        future, function = item
        try:
            future.set_result(function())
        except BaseException as exc:  # handed to the awaiting caller, as aiosqlite does
            future.set_exception(exc)


class InlineConnection:
    """aiosqlite's ``Connection`` interface over a ``sqlite3.Connection`` used on the loop's thread."""

    def __init__(self, conn: sqlite3.Connection, busy_timeout_s: float) -> None:
        self._conn = conn
        self.busy_timeout_s = busy_timeout_s
        self._tx = _ImmediateQueue()

    @property
    def _connection(self) -> sqlite3.Connection | None:  # read by the dialect: "is it still open"
        return self._conn

    def cursor(self) -> InlineCursor:
        return InlineCursor(self, self._conn.cursor())

    async def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] = ()) -> InlineCursor:
        return await self.cursor().execute(sql, parameters)

    async def commit(self) -> None:
        await _retry_busy(self._conn.commit, self.busy_timeout_s)

    async def rollback(self) -> None:
        self._conn.rollback()

    async def close(self) -> None:
        self._conn.close()

    def stop(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    @isolation_level.setter
    def isolation_level(self, value: Literal["DEFERRED", "EXCLUSIVE", "IMMEDIATE"] | None) -> None:
        self._conn.isolation_level = value


def inline_creator(path: str, busy_timeout_s: float) -> Callable[[], Any]:
    """An ``async_creator`` for ``create_async_engine``: inline connections to the SQLite file ``path``."""

    async def create() -> InlineConnection:
        # the busy timeout is ours (above), never SQLite's: its wait would block the loop
        conn = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
        return InlineConnection(conn, busy_timeout_s)

    return create


class Checkpointer:
    """A thread that copies the WAL back into the database every ``interval_s`` (``PRAGMA wal_checkpoint``),
    so that the connections on the event loop do not pay the checkpoint's fsync in their commits."""

    def __init__(self, path: str, interval_s: float = 0.5) -> None:
        self._path = path
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpointer", daemon=True)
        self.checkpoints = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        conn = sqlite3.connect(self._path, timeout=1, isolation_level=None)
        try:
            while not self._stop.wait(self._interval_s):
                with contextlib.suppress(sqlite3.OperationalError):  # busy: the next round does it
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
        finally:
            conn.close()
