"""Where a study lives: URLs, the embedded SQLite default, PostgreSQL, heartbeat and retries.

- ``None`` → ``sqlite:///<cwd>/lrkit-runs/lrkit.db``: embedded, nothing to start.
- ``"sqlite:///path.db"`` → the same set-up on another file.
- ``"postgresql://user:pw@host/db"`` (or any SQLAlchemy URL Optuna's ``RDBStorage`` takes) → a
  server shared by workers on many machines.
- ``"memory"`` → Optuna's in-memory storage (one process; tests and simulations).
- an ``optuna.storages.BaseStorage`` object → used as it is.

**Why SQLite holds with several local processes.** Optuna's "database is locked" comes from
SQLite's *deferred* transactions: a transaction that reads and then writes must upgrade its lock,
and when another process wrote meanwhile SQLite answers ``SQLITE_BUSY`` at once, without waiting
for the busy timeout (the deadlock-avoidance rule; Python's ``sqlite3`` also starts transactions
only before the first write, so a read-then-write is not even atomic). lrkit's SQLite
connections start every transaction with ``BEGIN IMMEDIATE`` (the recipe in SQLAlchemy's pysqlite
notes): the write lock is taken up front, a second process *waits* (busy timeout, 60 s by
default) instead of failing, and Optuna's queue pop (``WAITING → RUNNING``) is a real
compare-and-set. WAL journaling keeps the waits short. Limits: one machine (SQLite locks do not
work over NFS), every storage operation is serialised (fine for tens of workers whose trials
last seconds or more; use PostgreSQL beyond).

**Schema creation race.** Workers that start at the same moment on an empty PostgreSQL database
all run Optuna's ``CREATE TYPE`` / ``CREATE TABLE``; all but one fail with ``UniqueViolation``
(optuna/optuna#1092); on SQLite its set-up reads then writes, which concurrent deferred
transactions cannot do. lrkit creates the storage while holding a PostgreSQL advisory lock (a file
lock next to a SQLite file), and retries transient integrity/operational errors with jittered
backoff on every backend.

**Heartbeat.** Every storage lrkit opens on a database records a heartbeat per running trial
(``heartbeat_interval`` seconds); a trial whose heartbeat is older than ``grace_period`` is
marked FAIL by the next worker that looks, and :class:`optuna.storages.RetryFailedTrialCallback`
enqueues it again (``retries`` times).

Credentials in a URL never leave this module unmasked: :func:`mask_url` hides them, and errors
raised while opening a storage name the masked URL only.
"""

from __future__ import annotations

import random
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

from ..errors import LRKitError, check_int

__all__ = ["open_storage", "mask_url", "default_url", "sqlite_url", "DEFAULT_DIR"]

#: folder of the default study database (relative to the working directory)
DEFAULT_DIR = "lrkit-runs"
_ADVISORY_KEY = 0x6C726B6974  # "lrkit": the advisory lock serialising schema creation
_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*):(?P<pw>[^@\s]*)@")
_QUERY_SECRET = re.compile(r"(?P<head>[?&](?:password|passwd|pwd|secret|token)=)[^&\s]*",
                           re.IGNORECASE)


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (userinfo and ``?password=`` forms).

    >>> mask_url("postgresql://me:s3cret@db:5432/optuna")
    'postgresql://me:***@db:5432/optuna'
    """
    if not isinstance(url, str):
        return f"<{type(url).__name__}>"
    return _QUERY_SECRET.sub(r"\g<head>***", _PASSWORD.sub(r"\g<head>:***@", url))


def _scrub(text: str, url: str) -> str:
    """Remove the password of ``url`` from any message (drivers may echo parts of a URL)."""
    m = _PASSWORD.search(url)
    out = text.replace(url, mask_url(url))
    if m and m.group("pw"):  # as a whole token: a password "p" must not eat the p of "port"
        out = re.sub(rf"(?<![A-Za-z0-9]){re.escape(m.group('pw'))}(?![A-Za-z0-9])", "***", out)
    return mask_url(out)


def default_url() -> str:
    """``sqlite:///<cwd>/lrkit-runs/lrkit.db`` (the folder is created when opened)."""
    return sqlite_url(Path.cwd() / DEFAULT_DIR / "lrkit.db")


#: a SQLite file URL (with or without a driver: ``sqlite+pysqlite:///``)
_SQLITE_FILE = re.compile(r"sqlite(\+\w+)?:///")


def absolute_url(storage: str) -> str:
    """``storage`` with a relative SQLite file made absolute (from the working folder); other
    URLs as given. For a URL kept to be opened again from elsewhere (``lrkit tune --resume``
    from another folder opened a new, empty study beside it)."""
    if not _SQLITE_FILE.match(storage):
        return storage
    try:  # (without the search extra, opening the storage says what to install)
        from sqlalchemy.engine import make_url
    except ImportError:
        return storage
    url = make_url(storage)
    db = url.database
    if not db or db == ":memory:" or Path(db).expanduser().is_absolute():
        return storage
    return url.set(database=str(Path(db).expanduser().resolve())).render_as_string(
        hide_password=False)


def sqlite_url(path: str | os.PathLike) -> str:
    """The SQLite URL of the file ``path``, escaped: pasted in as it was, a ``?`` in a folder
    name started a query string (the study went to the file named by what came before it), a
    ``%20`` was decoded to a space (another folder), and ``{x}`` crashed Optuna's URL
    template."""
    from sqlalchemy.engine import URL

    return URL.create("sqlite", database=str(path)).render_as_string(hide_password=False)


class _ImmediateConnection(sqlite3.Connection):
    """A sqlite3 connection whose SQLAlchemy transactions begin with ``BEGIN IMMEDIATE`` once
    ``mode["immediate"]`` is set (plain ``BEGIN`` before: Optuna's schema set-up nests two
    connections, which immediate transactions would deadlock)."""

    mode: dict


_LISTENING = False


def _install_begin_immediate() -> None:
    """One class-level SQLAlchemy listener; it acts on lrkit's own SQLite connections only."""
    global _LISTENING
    if _LISTENING:
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def begin(conn: Any) -> None:
        dbapi = conn.connection.dbapi_connection
        if isinstance(dbapi, _ImmediateConnection):
            conn.exec_driver_sql("BEGIN IMMEDIATE" if dbapi.mode["immediate"] else "BEGIN")

    event.listen(Engine, "begin", begin)
    _LISTENING = True


def _sqlite_engine_kwargs(path: str, timeout: float, mode: dict) -> dict[str, Any]:
    def connect() -> sqlite3.Connection:
        # isolation_level=None: the driver issues no BEGIN of its own; the listener does
        conn = sqlite3.connect(path, timeout=timeout, isolation_level=None,
                               check_same_thread=False, factory=_ImmediateConnection)
        conn.mode = mode
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    _install_begin_immediate()
    return {"creator": connect}


def _with_retries(make: Any, url: str, attempts: int = 8) -> Any:
    import optuna
    from sqlalchemy import exc

    for attempt in range(attempts):
        try:
            return make()
        except (exc.DatabaseError, optuna.exceptions.StorageInternalError) as raised:
            # DatabaseError: IntegrityError, OperationalError, ProgrammingError, and a file
            # that is not a database at all (it was a traceback)
            # Optuna wraps the driver's error in StorageInternalError: judge the cause
            e = raised.__cause__ if isinstance(raised, optuna.exceptions.StorageInternalError) \
                and raised.__cause__ is not None else raised
            transient = isinstance(e, exc.IntegrityError) or any(
                s in str(e).lower() for s in ("already exists", "locked", "busy", "duplicate"))
            if not transient or attempt == attempts - 1:
                raise LRKitError(f"cannot open storage {mask_url(url)}: {type(e).__name__}: "
                                 f"{_scrub(str(e).splitlines()[0], url)}") from None
            time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")  # pragma: no cover


def open_storage(
    storage: Any = None,
    *,
    heartbeat_interval: int = 10,
    grace_period: int | None = None,
    retries: int = 1,
    sqlite_timeout: float = 60.0,
    pool_size: int = 2,
) -> Any:
    """An Optuna storage for ``storage`` (``None``, a URL, ``"memory"`` or a storage object).

    Args:
        storage: see the module docstring.
        heartbeat_interval: seconds between a running trial's heartbeats (database storages).
        grace_period: seconds without a heartbeat after which a running trial counts as dead
            (default ``3 * heartbeat_interval``).
        retries: how many times a dead trial is run again (Optuna's
            ``RetryFailedTrialCallback(max_retry=retries)``).
        sqlite_timeout: how long a SQLite writer waits for the lock before failing.
        pool_size: SQLAlchemy connection pool size per worker process (server databases).

    Raises:
        ValueError / TypeError: a bad argument (the message shows the URL masked).
        lrkit.errors.LRKitError: the database cannot be opened (message masked).
    """
    import optuna

    if isinstance(storage, optuna.storages.BaseStorage):
        return storage
    if storage is None:
        storage = default_url()
    if not isinstance(storage, str):
        raise TypeError(f"storage must be None, a database URL, 'memory' or an optuna storage, "
                        f"got {type(storage).__name__}")
    if storage == "memory":
        return optuna.storages.InMemoryStorage()
    heartbeat_interval = check_int("heartbeat_interval", heartbeat_interval, minimum=1)
    grace = 3 * heartbeat_interval if grace_period is None else check_int(
        "grace_period", grace_period, minimum=1)
    if grace <= heartbeat_interval:
        raise ValueError(f"grace_period must be > heartbeat_interval ({heartbeat_interval}), "
                         f"got {grace}")
    retries = check_int("retries", retries, minimum=0)
    pool_size = check_int("pool_size", pool_size, minimum=1)
    if "://" not in storage:
        raise ValueError(f"storage must be a database URL such as 'sqlite:///lrkit.db' or "
                         f"'postgresql://user:password@host/db', or 'memory', got "
                         f"{mask_url(storage)!r}")
    from sqlalchemy.engine import make_url

    storage = _with_driver(storage)
    try:
        parsed = make_url(storage)
    except Exception:  # noqa: BLE001 - SQLAlchemy's message would echo the URL
        raise ValueError(f"storage is not a valid database URL: {mask_url(storage)!r}") from None
    backend = parsed.get_backend_name()
    _check_driver(parsed, storage)
    engine_kwargs: dict[str, Any] = {}
    mode = {"immediate": False}
    if backend == "sqlite":
        db = parsed.database
        if not db or db == ":memory:":
            raise ValueError("storage 'sqlite://' in memory cannot be shared; use 'memory' "
                             "for one process or a file URL 'sqlite:///path.db'")
        file = Path(db).expanduser()
        lock = f"{file}.lrkit-init.lock"
        try:  # a read-only working folder, a name too long: one line, before any step
            file.resolve().parent.mkdir(parents=True, exist_ok=True)
            open(lock, "a").close()
        except OSError as e:
            raise LRKitError(f"cannot open storage {mask_url(storage)}: cannot write "
                             f"{e.filename or lock!r} ({e.strerror or type(e).__name__}); "
                             "pass --storage (storage=) a file in a folder that can be "
                             "written") from None
        engine_kwargs = _sqlite_engine_kwargs(str(file), sqlite_timeout, mode)
        engine_kwargs["lock"] = lock
    else:
        engine_kwargs = {"pool_pre_ping": True, "pool_size": pool_size, "max_overflow": 2,
                         "pool_recycle": 600}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry_cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback",
                            optuna.storages.RetryFailedTrialCallback)
        callback = retry_cls(max_retry=retries)

    def make() -> Any:
        mode["immediate"] = False
        st = optuna.storages.RDBStorage(
            storage, engine_kwargs={k: v for k, v in engine_kwargs.items() if k != "lock"},
            heartbeat_interval=heartbeat_interval,
            grace_period=grace, heartbeat_stale_trial_callback=callback)
        mode["immediate"] = True
        return st

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if backend == "postgresql":
            return _with_retries(lambda: _postgres_locked(storage, make), storage)
        if backend == "sqlite":
            return _with_retries(lambda: _file_locked(engine_kwargs["lock"], make), storage)
        return _with_retries(make, storage)


def _check_driver(parsed: Any, storage: str) -> None:
    """A database SQLAlchemy does not know, or one whose driver is not installed, named in one
    line (they reached the user as SQLAlchemy's NoSuchModuleError and Optuna's "Failed to import
    DB access module" tracebacks)."""
    try:
        dialect = parsed.get_dialect()
    except Exception:  # noqa: BLE001 - NoSuchModuleError: an unknown scheme
        base, _, driver = parsed.drivername.partition("+")
        what = (f"SQLAlchemy has no driver {driver!r} for {base!r}" if driver
                else f"no database called {base!r}")
        raise ValueError(f"storage {mask_url(storage)!r}: {what}; use 'sqlite:///path.db', "
                         "'postgresql://user:password@host/db' or 'memory'") from None
    load = getattr(dialect, "import_dbapi", None) or getattr(dialect, "dbapi", None)
    try:
        if load is not None:
            load()
    except ImportError as e:
        raise LRKitError(f"cannot open storage {mask_url(storage)}: its driver "
                         f"{parsed.get_driver_name()!r} for {parsed.get_backend_name()} is not "
                         f"installed ({e}); install it, or use 'sqlite:///path.db'") from None


def _with_driver(url: str) -> str:
    """``postgresql://`` (and ``postgres://``) with a driver that is installed: SQLAlchemy 2.1
    picks psycopg 3 for a bare ``postgresql://``; fall back to psycopg2 when only it is here."""
    import importlib.util

    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            driver = "psycopg" if importlib.util.find_spec("psycopg") else "psycopg2"
            return f"postgresql+{driver}://" + url[len(bare):]
    return url


def _file_locked(path: str, make: Any) -> Any:
    """Create the storage while holding an exclusive lock on ``path`` (one schema creator per
    SQLite file: Optuna's set-up reads then writes, which deferred transactions cannot do
    concurrently)."""
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            return make()
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _postgres_locked(url: str, make: Any) -> Any:
    """Create the storage while holding a PostgreSQL advisory lock (one schema creator)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url, poolclass=__import__("sqlalchemy.pool").pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _ADVISORY_KEY})
            try:
                return make()
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _ADVISORY_KEY})
    finally:
        engine.dispose()


def check_exists(storage: Any) -> None:
    """Refuse a SQLite ``storage`` (``None``: the default file) whose file does not exist,
    without creating it: for commands that only read a study (``lrkit search show``)."""
    url = default_url() if storage is None else storage
    if not isinstance(url, str) or not _SQLITE_FILE.match(url):
        return
    from sqlalchemy.engine import make_url

    db = make_url(url).database  # (decoded: %20 is a space)
    if db and db != ":memory:" and not Path(db).expanduser().exists():
        raise ValueError(f"storage {mask_url(url)!r}: no database file {db!r} (nothing to "
                         "show; check the path)")


def describe(storage: Any) -> str:
    """A printable name of a storage: its URL masked, or its class."""
    if isinstance(storage, str):
        return mask_url(storage)
    url = getattr(storage, "url", None)
    if isinstance(url, str):
        return mask_url(url)
    return type(storage).__name__ if storage is not None else mask_url(default_url())

