"""A PostgreSQL 15 cluster owned by the test run.

``initdb`` into a fresh temporary directory and ``pg_ctl start`` on a free 127.0.0.1 port with its own socket
directory (the server refuses to run as root, so as root both run through ``runuser -u postgres``). One cluster
serves the whole test process (:func:`cluster`); it is stopped at exit. Each test gets its own database, cloned
from a migrated template (``CREATE DATABASE ... TEMPLATE``), which takes a few milliseconds.

Nothing here skips: if the cluster cannot start, :class:`PgUnavailable` carries the server's log and the tests
that asked for PostgreSQL fail with it.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from tests.peers.ports import free_port

PG_BIN = Path(os.environ.get("COMMS_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "postgres"


class PgUnavailable(RuntimeError):
    """The test-owned PostgreSQL cluster could not be started."""


class PgCluster:
    """One ``initdb``'d cluster under a temporary directory."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="comms-pg-"))
        self.data = self.base / "data"
        self.sockdir = self.base / "sock"
        self.logfile = self.base / "server.log"
        self.port = 0
        self._names = itertools.count(1)
        self._as_root = os.geteuid() == 0
        self._lock = threading.Lock()

    # -- process control -----------------------------------------------------------------------------------------
    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", PG_USER, "--"] if self._as_root else []
        return subprocess.run(
            [*prefix, *argv], capture_output=True, text=True, check=check, timeout=60, cwd=self.base
        )

    def start(self) -> None:
        if not (PG_BIN / "initdb").exists():
            raise PgUnavailable(f"PostgreSQL binaries not found in {PG_BIN}: expected Debian's postgresql-15")
        self.sockdir.mkdir()
        if self._as_root:
            pw = pwd.getpwnam(PG_USER)
            os.chmod(self.base, 0o755)
            for path in (self.base, self.sockdir):
                os.chown(path, pw.pw_uid, pw.pw_gid)
        try:
            self._run(
                str(PG_BIN / "initdb"), "-D", str(self.data), "-U", PG_USER, "-A", "trust", "-E", "UTF8",
                "--no-sync", "--locale=C.UTF-8",
            )  # fmt: skip
        except subprocess.CalledProcessError as exc:
            raise PgUnavailable(f"initdb failed ({exc.returncode}): {exc.stderr or exc.stdout}") from exc
        last = ""
        for _ in range(5):  # the free port can be taken before the server binds it: pick another
            self.port = free_port(udp=False)
            opts = (
                f"-p {self.port} -k {self.sockdir} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
            )
            done = self._run(
                str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "30",
                "-o", opts, "start", check=False,
            )  # fmt: skip
            if done.returncode == 0:
                return
            last = done.stderr + done.stdout + self._log_tail()
        raise PgUnavailable(f"pg_ctl start failed 5 times; last output:\n{last}")

    def stop(self) -> None:
        if self.data.exists() and self.port:
            self._run(
                str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False
            )
        shutil.rmtree(self.base, ignore_errors=True)

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.logfile.read_text()[-3000:]
        return ""

    # -- databases -----------------------------------------------------------------------------------------------
    def url(self, dbname: str) -> str:
        """SQLAlchemy URL of database ``dbname`` on this cluster (asyncpg over TCP on 127.0.0.1)."""
        return f"postgresql+asyncpg://{PG_USER}@127.0.0.1:{self.port}/{dbname}"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        done = self._run(
            str(PG_BIN / "psql"),
            "-h", str(self.sockdir), "-p", str(self.port), "-U", PG_USER, "-d", dbname,
            "-v", "ON_ERROR_STOP=1", "-Atc", sql, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise PgUnavailable(f"psql {sql!r} failed: {done.stderr}")
        return done.stdout

    def create_database(self, template: str | None = None, prefix: str = "t") -> str:
        """Create a new empty (or ``template``-cloned) database; return its name."""
        with self._lock:
            name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        tmpl = f" TEMPLATE {template}" if template else ""
        self.psql(f"CREATE DATABASE {name}{tmpl}")
        return name


_cluster: PgCluster | None = None
_template: str | None = None
_error: PgUnavailable | None = None
_guard = threading.Lock()


def cluster() -> PgCluster:
    """The process-wide test cluster, started on first use; raises :class:`PgUnavailable` every time if not."""
    global _cluster, _error
    with _guard:
        if _error is not None:
            raise _error
        if _cluster is None:
            candidate = PgCluster()
            try:
                candidate.start()
            except PgUnavailable as exc:
                candidate.stop()
                _error = exc
                raise
            _cluster = candidate
            atexit.register(candidate.stop)
        return _cluster


async def migrated_database(backend: str, tmp_path: Path) -> str:
    """URL of a new database at migration head: a SQLite file in ``tmp_path`` or a PostgreSQL clone."""
    from comms.db.engine import migrate, sqlite_url

    global _template
    if backend == "sqlite":
        url = sqlite_url(tmp_path / "comms.db")
        await migrate(url)
        return url
    if backend != "postgresql":
        raise ValueError(f"backend {backend!r}: expected sqlite or postgresql")
    pg = cluster()
    if _template is None:
        name = pg.create_database(prefix="template")
        await migrate(pg.url(name))
        _template = name
    return pg.url(pg.create_database(template=_template))
