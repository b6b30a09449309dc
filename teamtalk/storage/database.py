"""One database instance: a connection pool and the transaction runner.

Every store function passes a label and a plain synchronous function to
:meth:`Database.run`. The function receives a :class:`Cursor` and runs
inside one transaction in a Trio worker thread, on a connection taken from
the pool. The runner commits when the function returns, rolls back when it
raises, and retries transient failures (lost connection, deadlock, lock
wait timeout, SQLite "database is locked") a bounded number of times.

SQL is written once, MySQL style, with ``%s`` placeholders and ``%%`` for a
literal percent sign. :class:`Cursor` rewrites it to SQLite's ``?`` style.
Values always travel as parameters. The only text formatted into SQL is
table names from :mod:`teamtalk.storage.shards` and the column names of
:meth:`Cursor.insert_ignore_sql`, both fixed in code.
"""

from __future__ import annotations

import functools
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import trio

logger = logging.getLogger(__name__)

#: How many times a transaction is retried after a transient failure, so a
#: call makes at most RETRY_LIMIT + 1 attempts.
RETRY_LIMIT = 3
#: Pause before each retry, in seconds (one entry per retry).
RETRY_BACKOFF_S = (0.05, 0.2, 0.5)
#: TCP connect timeout for MySQL, in seconds.
MYSQL_CONNECT_TIMEOUT_S = 5
#: How long SQLite waits for another writer's lock, in milliseconds.
SQLITE_BUSY_TIMEOUT_MS = 5000

# MySQL error codes. 1205 and 1213 are server errors after which the
# transaction can simply run again. The others mean the connection is gone,
# so it is discarded before the retry.
_MYSQL_LOCK_WAIT_TIMEOUT = 1205
_MYSQL_DEADLOCK = 1213
_MYSQL_NO_SUCH_TABLE = 1146
_MYSQL_DUPLICATE_ENTRY = 1062
_MYSQL_CONNECTION_LOST = frozenset({
    2006,  # server has gone away
    2013,  # lost connection during query
    2055,  # lost connection at reading/sending
    4031,  # disconnected by the server for inactivity (MySQL 8)
})

# Primary result codes of sqlite3 errors (the low byte of the extended code).
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6

_SQL_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MYSQL_PLACEHOLDER = re.compile(r"%(s|%)")


class StorageUnavailable(Exception):
    """A database or cache server cannot be reached or opened.

    The message names the server (host and port, or the file path) and
    never contains a password.
    """


class SchemaMissing(StorageUnavailable):
    """A query used a table that does not exist: ``teamtalk init-db`` has not run."""


class _Retry(Exception):
    """Internal wrapper: the transaction failed transiently and may run again."""

    def __init__(self, error: BaseException, reason: str) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason


@functools.lru_cache(maxsize=4096)
def _qmark_sql(sql: str) -> str:
    """Rewrite ``%s`` placeholders to ``?`` and ``%%`` to ``%`` for sqlite3."""
    return _MYSQL_PLACEHOLDER.sub(lambda m: "?" if m.group(1) == "s" else "%", sql)


def check_identifier(name: str) -> str:
    """Return ``name`` after checking that it is a plain SQL identifier.

    A name made only of ASCII letters, digits and underscores needs no
    quoting in either dialect. Raises ValueError for anything else, so a
    value can never reach SQL text by this path.
    """
    if not _SQL_IDENTIFIER.match(name):
        raise ValueError(f"invalid SQL identifier {name!r}")
    return name


def is_duplicate_key(exc: BaseException) -> bool:
    """Return True if ``exc`` is a unique-key violation from either driver."""
    if isinstance(exc, sqlite3.IntegrityError):
        return "UNIQUE constraint failed" in str(exc)
    # mysqlclient is optional, so its IntegrityError is recognised by name.
    return (
        type(exc).__name__ == "IntegrityError"
        and bool(exc.args)
        and exc.args[0] == _MYSQL_DUPLICATE_ENTRY
    )


class Cursor:
    """A DB-API cursor that accepts MySQL-style SQL on both dialects.

    Only the methods below are offered, so store code cannot come to rely
    on a driver-specific feature. ``rowcount`` of an UPDATE counts the rows
    matched on both dialects (MySQL connections are opened with
    ``CLIENT.FOUND_ROWS``), not only the rows whose values changed.
    """

    __slots__ = ("_raw", "dialect")

    def __init__(self, raw: Any, dialect: str) -> None:
        self._raw = raw
        self.dialect = dialect

    def _sql(self, sql: str) -> str:
        return _qmark_sql(sql) if self.dialect == "sqlite" else sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one statement with its parameters bound to the ``%s`` placeholders."""
        self._raw.execute(self._sql(sql), tuple(params))

    def executemany(self, sql: str, seq_of_params: Sequence[Sequence[Any]]) -> None:
        """Run one statement once per parameter tuple (MySQL batches an INSERT into one)."""
        rows = [tuple(params) for params in seq_of_params]
        if rows:
            self._raw.executemany(self._sql(sql), rows)

    def fetchone(self) -> tuple | None:
        return self._raw.fetchone()

    def fetchall(self) -> list[tuple]:
        return list(self._raw.fetchall())

    @property
    def lastrowid(self) -> int | None:
        """Id generated by the last INSERT into a table with an auto-increment id."""
        return self._raw.lastrowid

    @property
    def rowcount(self) -> int:
        return self._raw.rowcount

    @property
    def for_update(self) -> str:
        """Suffix that locks the rows a SELECT reads: ``" FOR UPDATE"`` on MySQL.

        SQLite has no row locks. A SQLite write transaction that read
        stale data fails with "database is locked" when it tries to write,
        and the runner retries it.
        """
        return " FOR UPDATE" if self.dialect == "mysql" else ""

    def insert_ignore_sql(self, table: str, columns: Sequence[str]) -> str:
        """Build an INSERT that silently skips rows which would violate a unique key.

        ``INSERT IGNORE`` on MySQL, ``INSERT OR IGNORE`` on SQLite, with one
        ``%s`` placeholder per column. It only skips anything where a unique
        key exists, and databases created by the original schema file lack
        our extra unique keys, so callers must still check before inserting.
        """
        verb = "INSERT IGNORE" if self.dialect == "mysql" else "INSERT OR IGNORE"
        names = ", ".join(check_identifier(column) for column in columns)
        marks = ", ".join(["%s"] * len(columns))
        return f"{verb} INTO {check_identifier(table)} ({names}) VALUES ({marks})"


class Database:
    """One database instance with a pool of up to ``pool_size`` connections.

    Connections are opened lazily, reused, and discarded after a connection
    failure. A :class:`trio.CapacityLimiter` of ``pool_size`` bounds the
    worker threads, so each connection serves one thread at a time.

    Build instances with :func:`open_mysql` or :func:`open_sqlite`; the
    caller owns the result and must ``await db.aclose()``.

    Attributes:
        dialect: ``"mysql"`` or ``"sqlite"``.
        name: instance name from the configuration, e.g. ``"teamtalk_master"``.
        description: ``"host:port/dbname"`` or the SQLite file path, for logs.
        pool_size: maximum number of connections.
    """

    def __init__(
        self,
        *,
        dialect: str,
        name: str,
        description: str,
        pool_size: int,
        connect: Callable[[], Any],
        driver_errors: _DriverErrors,
    ) -> None:
        if pool_size < 1:
            raise ValueError(f"pool_size of database {name} must be at least 1, got {pool_size}")
        self.dialect = dialect
        self.name = name
        self.description = description
        self.pool_size = pool_size
        self._connect = connect
        self._errors = driver_errors
        self._limiter = trio.CapacityLimiter(pool_size)
        self._lock = threading.Lock()
        self._idle: list[Any] = []
        self._closed = False

    def __repr__(self) -> str:
        return f"<Database {self.name} {self.dialect} {self.description}>"

    async def run(self, label: str, func: Callable[..., Any], *args: Any) -> Any:
        """Run ``func(cursor, *args)`` in one transaction and return its result.

        ``label`` names the operation in logs. The transaction commits when
        ``func`` returns and rolls back when it raises; ``func``'s exception
        then propagates unchanged. Transient failures are retried up to
        :data:`RETRY_LIMIT` times, so ``func`` must be safe to run again
        from the start (it only touches the database through the cursor).

        Cancellation: once the worker thread has started, the call waits for
        the transaction to finish, so a write is never abandoned half-way.
        Cancellation is delivered before the first attempt, during the
        pause between retries, or after the transaction ends.

        Raises:
            StorageUnavailable: the server cannot be reached after all
                retries, or the database is closed.
            SchemaMissing: a table does not exist.
        """
        for attempt in range(RETRY_LIMIT + 1):
            started = time.perf_counter()
            try:
                result = await trio.to_thread.run_sync(
                    self._run_transaction, func, args, limiter=self._limiter
                )
            except _Retry as retry:
                if attempt == RETRY_LIMIT:
                    logger.warning(
                        "%s on %s failed after %d attempts: %s",
                        label, self.name, attempt + 1, retry.reason,
                    )
                    raise retry.error from None
                logger.warning(
                    "%s on %s: %s; retry %d of %d",
                    label, self.name, retry.reason, attempt + 1, RETRY_LIMIT,
                )
                await trio.sleep(RETRY_BACKOFF_S[attempt])
                continue
            logger.debug(
                "%s on %s took %.1f ms", label, self.name, (time.perf_counter() - started) * 1000
            )
            return result
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        """Close idle connections; connections in use close when their transaction ends.

        Later calls to :meth:`run` raise :class:`StorageUnavailable`.
        """
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        if idle:
            # Closing is quick and local, so it is shielded: a cancelled
            # shutdown would otherwise leave sockets for the garbage collector.
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_close_all, idle)

    # Worker-thread side.

    def _run_transaction(self, func: Callable[..., Any], args: tuple) -> Any:
        try:
            conn = self._checkout()
        except StorageUnavailable as exc:
            if self._closed:
                raise
            raise _Retry(exc, str(exc)) from exc

        try:
            raw_cursor = conn.cursor()
            if self.dialect == "sqlite":
                raw_cursor.execute("BEGIN")
            result = func(Cursor(raw_cursor, self.dialect), *args)
            raw_cursor.close()
        except BaseException as exc:
            self._abort(conn, exc)
            self._raise_classified(exc)
            raise

        # A failed COMMIT is not retried: the server may have applied it
        # before the connection broke, and running the function twice could
        # then insert its rows twice.
        try:
            conn.commit()
        except BaseException:
            self._discard(conn)
            raise
        self._checkin(conn)
        return result

    def _raise_classified(self, exc: BaseException) -> None:
        """Turn a driver error into _Retry or SchemaMissing; return for anything else."""
        verdict = self._errors.classify(exc)
        if verdict == "retry":
            raise _Retry(exc, f"{type(exc).__name__}: {exc}") from exc
        if verdict == "no_table":
            raise SchemaMissing(
                f"a table is missing in database {self.name} ({self.description}): {exc}; "
                "create the tables with `teamtalk init-db`"
            ) from exc

    def _checkout(self) -> Any:
        with self._lock:
            if self._closed:
                raise StorageUnavailable(f"database {self.name} ({self.description}) is closed")
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def _checkin(self, conn: Any) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(conn)
                return
        _close_quietly(conn)

    def _abort(self, conn: Any, exc: BaseException) -> None:
        """Roll back after ``exc``; keep the connection unless it is broken."""
        if self._errors.connection_broken(exc):
            self._discard(conn)
            return
        try:
            conn.rollback()
        except Exception:
            logger.warning("rollback on %s failed; discarding the connection", self.name, exc_info=True)
            self._discard(conn)
            return
        self._checkin(conn)

    def _discard(self, conn: Any) -> None:
        _close_quietly(conn)


def _close_quietly(conn: Any) -> None:
    try:
        conn.close()
    except Exception:
        # The connection is being dropped because it already failed, so an
        # error while closing it carries no new information.
        logger.debug("closing a failed connection raised", exc_info=True)


def _close_all(conns: list[Any]) -> None:
    for conn in conns:
        _close_quietly(conn)


class _DriverErrors:
    """Classifier of one driver's errors into transient, missing-table and fatal ones."""

    def classify(self, exc: BaseException) -> str | None:
        """Return ``"retry"``, ``"no_table"`` or None (propagate unchanged)."""
        raise NotImplementedError

    def connection_broken(self, exc: BaseException) -> bool:
        raise NotImplementedError


class _MySQLErrors(_DriverErrors):
    def __init__(self, mysqldb: Any) -> None:
        self._base = mysqldb.MySQLError

    def _code(self, exc: BaseException) -> int | None:
        if isinstance(exc, self._base) and exc.args and isinstance(exc.args[0], int):
            return exc.args[0]
        return None

    def classify(self, exc: BaseException) -> str | None:
        code = self._code(exc)
        if code in (_MYSQL_DEADLOCK, _MYSQL_LOCK_WAIT_TIMEOUT) or code in _MYSQL_CONNECTION_LOST:
            return "retry"
        if code == _MYSQL_NO_SUCH_TABLE:
            return "no_table"
        return None

    def connection_broken(self, exc: BaseException) -> bool:
        # Codes from 2000 up are client-side errors: the connection state
        # is unknown after them, so the connection is not reused.
        code = self._code(exc)
        return code is not None and (code >= 2000 or code in _MYSQL_CONNECTION_LOST)


class _SQLiteErrors(_DriverErrors):
    def classify(self, exc: BaseException) -> str | None:
        if not isinstance(exc, sqlite3.OperationalError):
            return None
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return "retry"
        message = str(exc)
        if "database is locked" in message or "database table is locked" in message:
            return "retry"
        if message.startswith("no such table"):
            return "no_table"
        return None

    def connection_broken(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.ProgrammingError)


#: MySQL error number of "Unknown database".
MYSQL_UNKNOWN_DATABASE = 1049


async def open_mysql(
    name: str,
    host: str,
    port: int,
    user: str,
    password: str,
    dbname: str,
    pool_size: int,
    *,
    create_database: bool = False,
) -> Database:
    """Open a pool on one MySQL/MariaDB database and check that it accepts a login.

    The first connection is opened at once, so a wrong address, user,
    password or database name fails here. With ``create_database`` a
    missing database is created (utf8mb4) first. The caller owns the
    returned :class:`Database` and must ``aclose()`` it.

    Raises:
        StorageUnavailable: mysqlclient is not installed, or the server
            refuses or cannot be reached. The message names host and port.
    """
    try:
        import MySQLdb
        from MySQLdb.constants import CLIENT
    except ImportError as exc:
        raise StorageUnavailable(
            "MySQL support needs the mysqlclient package: pip install 'teamtalk[mysql]'"
        ) from exc

    def connect() -> Any:
        try:
            return MySQLdb.connect(
                host=host,
                port=int(port),
                user=user,
                password=password,
                database=dbname,
                charset="utf8mb4",
                autocommit=False,
                connect_timeout=MYSQL_CONNECT_TIMEOUT_S,
                client_flag=CLIENT.FOUND_ROWS,
            )
        except MySQLdb.MySQLError as exc:
            if exc.args and exc.args[0] == MYSQL_UNKNOWN_DATABASE:
                if create_database:
                    _create_mysql_database()
                    return connect_once()
                raise StorageUnavailable(
                    f"MySQL at {host}:{port} has no database {dbname!r}: create it with "
                    "`teamtalk init-db -c dbproxyserver.conf` (or CREATE DATABASE ... CHARACTER SET utf8mb4)"
                ) from exc
            reason = exc.args[1] if len(exc.args) > 1 else str(exc)
            raise StorageUnavailable(
                f"cannot connect to MySQL at {host}:{port} (database {dbname!r}, user {user!r}): {reason}"
            ) from exc

    def connect_once() -> Any:
        return MySQLdb.connect(host=host, port=int(port), user=user, password=password, database=dbname,
                               charset="utf8mb4", autocommit=False, connect_timeout=MYSQL_CONNECT_TIMEOUT_S,
                               client_flag=CLIENT.FOUND_ROWS)

    def _create_mysql_database() -> None:
        server = MySQLdb.connect(host=host, port=int(port), user=user, password=password, charset="utf8mb4",
                                 connect_timeout=MYSQL_CONNECT_TIMEOUT_S)
        try:
            server.cursor().execute(
                f"CREATE DATABASE IF NOT EXISTS `{check_identifier(dbname)}` CHARACTER SET utf8mb4")
        finally:
            server.close()
        logger.info("created MySQL database %s on %s:%s", dbname, host, port)

    database = Database(
        dialect="mysql",
        name=name,
        description=f"{host}:{port}/{dbname}",
        pool_size=pool_size,
        connect=connect,
        driver_errors=_MySQLErrors(MySQLdb),
    )
    await _open_first_connection(database)
    logger.info("database %s: MySQL %s, pool of %d", name, database.description, pool_size)
    return database


async def open_sqlite(
    name: str,
    path: str,
    pool_size: int = 4,
    *,
    busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS,
) -> Database:
    """Open a pool on one SQLite file in WAL mode, creating the file if needed.

    Each connection waits up to ``busy_timeout_ms`` for another writer's
    lock and has foreign keys off (the schema declares none). The caller
    owns the returned :class:`Database` and must ``aclose()`` it.

    Raises:
        StorageUnavailable: the file cannot be opened or created (its
            directory is missing or not writable, or it is not a database).
    """
    path = str(path)
    if path == ":memory:":
        # NOTE: every sqlite3 connection to ":memory:" is a separate empty
        # database, so an in-memory pool is limited to one connection.
        pool_size = 1

    def connect() -> Any:
        conn = None
        try:
            conn = sqlite3.connect(
                path,
                timeout=busy_timeout_ms / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            conn.execute("PRAGMA foreign_keys=OFF")
            # In WAL mode NORMAL stays consistent after a crash of the
            # process; only a power loss may lose the latest commits.
            conn.execute("PRAGMA synchronous=NORMAL")
            return conn
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise StorageUnavailable(f"cannot open SQLite database {path}: {exc}") from exc

    database = Database(
        dialect="sqlite",
        name=name,
        description=path,
        pool_size=pool_size,
        connect=connect,
        driver_errors=_SQLiteErrors(),
    )
    await _open_first_connection(database)
    logger.info("database %s: SQLite %s, pool of %d", name, path, pool_size)
    return database


async def _open_first_connection(database: Database) -> None:
    conn = await trio.to_thread.run_sync(database._connect, limiter=database._limiter)
    database._checkin(conn)
