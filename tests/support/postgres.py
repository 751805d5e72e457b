"""A throwaway PostgreSQL cluster for the tests, from Debian's packages.

One cluster per test process (each xdist worker), created on first use in a temporary
directory, run as an unprivileged user (``nobody`` when the tests run as root: initdb refuses
root), listening on 127.0.0.1 on a free port and on a Unix socket in its directory, and
stopped and removed when the process ends. Each test gets a database of its own
(``fresh_database``), reached with a password over TCP, as an operator's would be, or
over the Unix socket (``socket=True``, still with the password), as a node or CA system on
the database's own machine would reach it: the benchmarks measure that case.

The tests' cluster trades durability for speed (fsync off): the tests kill PostgreSQL with
an immediate shutdown, which loses nothing that was committed; only an OS crash would. The
benchmarks start theirs with ``durable=True`` (fsync and full-page writes on, as an operator
runs PostgreSQL).
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote, urlsplit

import psycopg

_SUPERUSER = "postgres"
_ROLE = "ztpki"
_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "300",
    "shared_buffers": "64MB",
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "on",
    "log_min_messages": "warning",
    "logging_collector": "off",
}


class PostgresUnavailable(RuntimeError):
    """PostgreSQL's binaries are missing: `make test` installs them (system-deps)."""


def postgres_bindir() -> Path:
    """Debian keeps the server binaries out of PATH, under /usr/lib/postgresql/VERSION/bin."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise PostgresUnavailable(
        "PostgreSQL is not installed: run `make test` (it installs Debian's postgresql "
        "package) or `apt-get install postgresql`"
    )


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.parent.name
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresCluster:
    """initdb, start, stop, restart (immediate) and per-test databases.

    ``durable``: fsync and full-page writes on (the benchmarks); ``statements``: load
    pg_stat_statements, for profiling what the stores send.
    """

    def __init__(
        self, *, durable: bool = False, statements: bool = False, socket: bool = False
    ) -> None:
        self.durable = durable
        self.statements = statements
        self.socket = socket
        self.bindir = postgres_bindir()
        self.base = Path(tempfile.mkdtemp(prefix="ztpki-pg-"))
        self.data = self.base / "data"
        self.port = _free_port()
        self.password = secrets.token_urlsafe(18)
        self._names = itertools.count(1)
        self._uid: int | None = None
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            self._uid = nobody.pw_uid
            os.chown(self.base, nobody.pw_uid, nobody.pw_gid)
        os.chmod(self.base, 0o700)
        self._initdb()
        self.start()

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / argv[0]), *argv[1:]]
        if self._uid is not None:
            command = ["setpriv", f"--reuid={self._uid}", f"--regid={self._uid}",
                       "--clear-groups", *command]  # fmt: skip
        return subprocess.run(
            command, capture_output=True, text=True, check=check, cwd=self.base, timeout=120
        )

    def _initdb(self) -> None:
        self._run(
            "initdb", "-D", str(self.data), "-U", _SUPERUSER, "--auth-local=trust",
            "--auth-host=scram-sha-256", "--locale=C.UTF-8", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        settings = dict(_SETTINGS, port=str(self.port), unix_socket_directories=f"'{self.base}'")
        if self.durable:
            settings.update(fsync="on", full_page_writes="on")
        if self.statements:
            settings.update(shared_preload_libraries="'pg_stat_statements'")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        # The first matching line decides: the ztpki role gives its password on the socket
        # too (the superuser's trust there is for the harness: admin()).
        hba = self.data / "pg_hba.conf"
        hba.write_text(f"local all {_ROLE} scram-sha-256\n" + hba.read_text())

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.base / "server.log"),
                  "-w", "-t", "60", "start")  # fmt: skip
        with self.admin() as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (_ROLE,))
            if exists.fetchone() is None:
                conn.execute(f"CREATE ROLE {_ROLE} LOGIN CREATEDB PASSWORD '{self.password}'")

    def postmaster_pid(self) -> int:
        """The server's first process (every backend and worker is its child)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def admin(self, database: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        """A superuser connection over the Unix socket (statistics, extensions)."""
        return psycopg.connect(
            host=str(self.base), port=self.port, user=_SUPERUSER, dbname=database,
            autocommit=True,
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart_immediate(self) -> None:
        """The chaos tests' database failure: no checkpoint, every connection cut."""
        self.stop("immediate")
        self.start()

    def url(self, database: str, *, socket: bool | None = None) -> str:
        """``socket``: over the Unix socket (default: as the cluster was started to)."""
        if self.socket if socket is None else socket:
            where = quote(str(self.base), safe="")
            return f"postgresql://{_ROLE}:{self.password}@/{database}?host={where}&port={self.port}"
        return f"postgresql://{_ROLE}:{self.password}@127.0.0.1:{self.port}/{database}"

    def fresh_database(self, prefix: str = "t", *, socket: bool | None = None) -> str:
        """A new, empty database owned by the ztpki role; its URL (with the password)."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}" OWNER {_ROLE}')
        return self.url(name, socket=socket)

    def drop_database(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


_CLUSTER: PostgresCluster | None = None


def shared_cluster() -> PostgresCluster:
    """This test process's cluster, started on first use and removed at exit."""
    global _CLUSTER
    if _CLUSTER is None:
        _CLUSTER = PostgresCluster()
        atexit.register(_CLUSTER.destroy)
    return _CLUSTER
