"""A throw-away PostgreSQL server for tests and benchmarks (a real one, never a mock).

``postgres_server()`` installs Debian's ``postgresql`` package when missing
(``tests/_system.py``), makes a cluster in a temporary directory with ``initdb`` (password
authentication, a user ``lrkit`` with a random password), starts it with ``pg_ctl`` listening on
127.0.0.1 only (a free port; its Unix socket in the temp dir), yields its URL, and stops it and
deletes the directory afterwards. ``initdb`` and ``postgres`` refuse to run as root: as root they
run as the ``postgres`` system user the package creates (``runuser``), on a directory given to it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

from ._system import ensure_program

__all__ = ["postgres_server", "PostgresUnavailable"]


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot be installed or started here (the message says why)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Yield ``postgresql://lrkit:<password>@127.0.0.1:<port>/lrkit`` of a fresh server."""
    initdb = ensure_program("initdb", "postgresql",
                            extra_globs=("/usr/lib/postgresql/*/bin/initdb",))
    if initdb is None:
        raise PostgresUnavailable("PostgreSQL's initdb is missing and cannot be installed here "
                                  "(needs root and apt-get)")
    bindir = Path(os.path.realpath(initdb)).parent
    pg_ctl = bindir / "pg_ctl"
    prefix: list[str] = []
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable("running as root but the 'postgres' user is missing") \
                from None
        runuser = shutil.which("runuser")
        if runuser is None:
            raise PostgresUnavailable("running as root and runuser is missing")
        prefix = [runuser, "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="lrkit-pg-"))
    password = secrets.token_hex(12)
    port = _free_port()
    data = root / "data"
    try:
        (root / "pw").write_text(password + "\n")
        if owner is not None:
            os.chown(root, owner.pw_uid, owner.pw_gid)
            os.chown(root / "pw", owner.pw_uid, owner.pw_gid)
        run = dict(check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120,
                   cwd=root)
        subprocess.run(prefix + [str(bindir / "initdb"), "-D", str(data), "-U", "lrkit",
                                 f"--pwfile={root / 'pw'}", "-A", "scram-sha-256",
                                 "--no-sync", "-E", "UTF8", "--locale=C"], **run)
        opts = (f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off "
                f"-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        subprocess.run(prefix + [str(pg_ctl), "-D", str(data), "-o", opts, "-l",
                                 str(root / "log"), "-w", "-t", "60", "start"], **run)
    except subprocess.CalledProcessError as e:
        out = e.stdout.decode(errors="replace") if e.stdout else ""
        log = (root / "log").read_text() if (root / "log").exists() else ""
        _stop(prefix, pg_ctl, data, root)
        raise PostgresUnavailable(f"{Path(e.cmd[len(prefix)]).name} failed: {out[-800:]} "
                                  f"{log[-800:]}") from None
    try:
        import psycopg2

        conn = psycopg2.connect(f"postgresql://lrkit:{password}@127.0.0.1:{port}/postgres")
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE lrkit")
        conn.close()
        yield f"postgresql://lrkit:{password}@127.0.0.1:{port}/lrkit"
    finally:
        _stop(prefix, pg_ctl, data, root)


def _stop(prefix: list[str], pg_ctl: Path, data: Path, root: Path) -> None:
    try:
        if data.exists():
            subprocess.run(prefix + [str(pg_ctl), "-D", str(data), "-m", "immediate", "-w",
                                     "stop"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=60, cwd=root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
