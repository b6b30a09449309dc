"""Shared fixtures: private MariaDB and Redis servers, and storage on each backend.

``mysql_server`` and ``redis_server`` start one private server each per
test session, on a free loopback port, in a temporary directory that is
removed afterwards. They are synchronous because pytest-trio runs async
fixtures per test only. Set ``TEAMTALK_TEST_MYSQL_URL``
(``mysql://user:password@host:port``) or ``TEAMTALK_TEST_REDIS_URL``
(``redis://[:password@]host:port/db``) to use existing servers instead.
The tests then create and drop their own MySQL databases, and use the
given Redis database only if it is empty at the start of the session.

Per-test fixtures, all async:

- ``database``: a Database with every table, on SQLite and on MySQL;
- ``storage``: a Storage, embedded and on MySQL + Redis;
- ``cache``: a Cache, on Redis and embedded;
- ``mysql_database``: a Database on a fresh MySQL database.

``mysql_url`` (sync) gives a fresh MySQL database as a URL, for the
``--mysql-url`` option of the command line.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from teamtalk.storage import (
    CACHE_INSTANCE_NAMES,
    MASTER,
    SLAVE,
    CacheEndpoint,
    DatabaseEndpoint,
    EmbeddedCache,
    RedisCache,
    init_db,
    open_embedded_storage,
    open_mysql,
    open_sqlite,
    open_storage,
)

#: How long a private server may take to accept connections, in seconds.
SERVER_START_TIMEOUT_S = 30.0
#: How long a private server may take to exit after SIGTERM, in seconds.
SERVER_STOP_TIMEOUT_S = 30.0
#: Redis database number the private Redis server's tests use.
PRIVATE_REDIS_DB = 1
#: Connections per test database or cache.
TEST_POOL_SIZE = 4

_SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])


@dataclass(frozen=True)
class MySQLServer:
    host: str
    port: int
    user: str
    password: str

    def url(self, dbname: str) -> str:
        credentials = urllib.parse.quote(self.user, safe="")
        if self.password:
            credentials += ":" + urllib.parse.quote(self.password, safe="")
        return f"mysql://{credentials}@{self.host}:{self.port}/{dbname}"

    def endpoint(self, dbname: str) -> DatabaseEndpoint:
        return DatabaseEndpoint(self.host, self.port, dbname, self.user, self.password, TEST_POOL_SIZE)


@dataclass(frozen=True)
class RedisServer:
    host: str
    port: int
    db: int
    password: str | None

    def endpoint(self) -> CacheEndpoint:
        return CacheEndpoint(self.host, self.port, self.db, self.password, TEST_POOL_SIZE)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    """A loopback TCP port with no listener, for connection-refused tests."""
    return _free_port()


def _wait_until_ready(
    check: Callable[[], bool], process: subprocess.Popen, what: str, log_path: Path
) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{what} exited with status {process.returncode}:\n{_tail(log_path)}")
        if check():
            return
        time.sleep(0.1)
    pytest.fail(f"{what} did not accept connections within {SERVER_START_TIMEOUT_S} s:\n{_tail(log_path)}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=SERVER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# ---------------------------------------------------------------------------
# MariaDB


def _mysql_connect(server: MySQLServer, dbname: str | None = None):
    import MySQLdb

    options = {"host": server.host, "port": server.port, "user": server.user,
               "password": server.password, "charset": "utf8mb4", "connect_timeout": 5}
    if dbname:
        options["database"] = dbname
    return MySQLdb.connect(**options)


def _mysql_answers(server: MySQLServer) -> bool:
    import MySQLdb

    try:
        _mysql_connect(server).close()
    except MySQLdb.OperationalError:
        return False
    return True


def _mysql_from_url(url: str) -> MySQLServer:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "mysql" or not parts.hostname:
        raise pytest.UsageError(f"TEAMTALK_TEST_MYSQL_URL={url!r}: expected mysql://user:password@host:port")
    return MySQLServer(
        parts.hostname,
        parts.port or 3306,
        urllib.parse.unquote(parts.username or "root"),
        urllib.parse.unquote(parts.password or ""),
    )


@pytest.fixture(scope="session")
def mysql_server() -> Iterator[MySQLServer]:
    """A MariaDB server for this session: private unless TEAMTALK_TEST_MYSQL_URL is set."""
    pytest.importorskip("MySQLdb", reason="mysqlclient is not installed")
    url = os.environ.get("TEAMTALK_TEST_MYSQL_URL")
    if url:
        yield _mysql_from_url(url)
        return

    install_db = shutil.which("mariadb-install-db", path=_SBIN_PATH)
    mariadbd = shutil.which("mariadbd", path=_SBIN_PATH)
    if not install_db or not mariadbd:
        pytest.skip("mariadbd and mariadb-install-db are not installed; "
                    "set TEAMTALK_TEST_MYSQL_URL to test against another server")

    base = Path(tempfile.mkdtemp(prefix="tt-mariadb-"))
    try:
        yield from _run_private_mariadb(install_db, mariadbd, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _run_private_mariadb(install_db: str, mariadbd: str, base: Path) -> Iterator[MySQLServer]:
    datadir = base / "data"
    user = getpass.getuser()
    installed = subprocess.run(
        [install_db, "--no-defaults", f"--datadir={datadir}", f"--user={user}",
         "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120,
    )
    if installed.returncode != 0:
        pytest.fail(f"mariadb-install-db failed with status {installed.returncode}:\n{installed.stdout}")

    port = _free_port()
    log_path = base / "mariadbd.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [mariadbd, "--no-defaults", f"--datadir={datadir}", f"--socket={base / 'sock'}",
             f"--pid-file={base / 'mariadbd.pid'}", f"--log-error={log_path}",
             f"--port={port}", "--bind-address=127.0.0.1", "--skip-networking=0",
             f"--user={user}", "--skip-name-resolve", "--skip-log-bin",
             "--innodb-buffer-pool-size=64M", "--innodb-flush-log-at-trx-commit=2",
             "--character-set-server=utf8mb4", "--collation-server=utf8mb4_bin"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        server = MySQLServer("127.0.0.1", port, "root", "")
        _wait_until_ready(lambda: _mysql_answers(server), process, "mariadbd", log_path)
        yield server
    finally:
        _stop(process)


def _create_mysql_database(server: MySQLServer) -> str:
    name = "tt_test_" + secrets.token_hex(6)
    conn = _mysql_connect(server)
    try:
        conn.cursor().execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    finally:
        conn.close()
    return name


def _drop_mysql_database(server: MySQLServer, name: str) -> None:
    conn = _mysql_connect(server)
    try:
        conn.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()


@contextlib.asynccontextmanager
async def _fresh_mysql_database(server: MySQLServer) -> AsyncIterator[str]:
    name = await trio.to_thread.run_sync(_create_mysql_database, server)
    try:
        yield name
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_drop_mysql_database, server, name)


@pytest.fixture
async def mysql_database(mysql_server: MySQLServer):
    """A Database with every table, on a fresh MySQL database dropped afterwards."""
    async with _fresh_mysql_database(mysql_server) as name:
        database = await open_mysql(MASTER, mysql_server.host, mysql_server.port, mysql_server.user,
                                    mysql_server.password, name, TEST_POOL_SIZE)
        try:
            await init_db(database)
            yield database
        finally:
            await database.aclose()


@pytest.fixture
def mysql_url(mysql_server: MySQLServer) -> Iterator[str]:
    """URL of a fresh, empty MySQL database (no tables), dropped afterwards."""
    name = _create_mysql_database(mysql_server)
    try:
        yield mysql_server.url(name)
    finally:
        _drop_mysql_database(mysql_server, name)


# ---------------------------------------------------------------------------
# Redis


def _redis_client(server: RedisServer):
    import redis

    return redis.Redis(host=server.host, port=server.port, db=server.db, password=server.password,
                       socket_timeout=5, socket_connect_timeout=5, decode_responses=True)


def _redis_answers(server: RedisServer) -> bool:
    import redis

    try:
        with _redis_client(server) as client:
            return bool(client.ping())
    except redis.ConnectionError:
        return False


def _flush_redis(server: RedisServer) -> None:
    with _redis_client(server) as client:
        client.flushdb()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A Redis server for this session: private unless TEAMTALK_TEST_REDIS_URL is set."""
    pytest.importorskip("redis", reason="redis-py is not installed")
    url = os.environ.get("TEAMTALK_TEST_REDIS_URL")
    if url:
        server = _redis_from_url(url)
        with _redis_client(server) as client:
            keys = client.dbsize()
        if keys:
            pytest.skip(f"Redis database {server.db} at {server.host}:{server.port} holds {keys} keys; "
                        "the tests use only an empty database, so point TEAMTALK_TEST_REDIS_URL at an unused one")
        yield server
        return

    redis_binary = shutil.which("redis-server", path=_SBIN_PATH)
    if not redis_binary:
        pytest.skip("redis-server is not installed; set TEAMTALK_TEST_REDIS_URL to test against another server")

    base = Path(tempfile.mkdtemp(prefix="tt-redis-"))
    try:
        yield from _run_private_redis(redis_binary, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _redis_from_url(url: str) -> RedisServer:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname:
        raise pytest.UsageError(f"TEAMTALK_TEST_REDIS_URL={url!r}: expected redis://[:password@]host:port/db")
    db_text = parts.path.lstrip("/") or "0"
    if not db_text.isdigit():
        raise pytest.UsageError(f"TEAMTALK_TEST_REDIS_URL={url!r}: the database must be a number")
    password = urllib.parse.unquote(parts.password) if parts.password else None
    return RedisServer(parts.hostname, parts.port or 6379, int(db_text), password)


def _run_private_redis(redis_binary: str, base: Path) -> Iterator[RedisServer]:
    port = _free_port()
    log_path = base / "redis.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [redis_binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(base), "--daemonize", "no"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        server = RedisServer("127.0.0.1", port, PRIVATE_REDIS_DB, None)
        _wait_until_ready(lambda: _redis_answers(server), process, "redis-server", log_path)
        yield server
    finally:
        _stop(process)


@contextlib.asynccontextmanager
async def _clean_redis(server: RedisServer) -> AsyncIterator[None]:
    # The database was empty when the session started (a private server, or
    # an external database checked by redis_server), so every key in it was
    # written by these tests.
    await trio.to_thread.run_sync(_flush_redis, server)
    try:
        yield
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_flush_redis, server)


# ---------------------------------------------------------------------------
# Storage on each backend


@pytest.fixture(params=["sqlite", "mysql"], ids=["embedded", "mysql"])
def database_backend(request: pytest.FixtureRequest) -> MySQLServer | None:
    if request.param == "mysql":
        return request.getfixturevalue("mysql_server")
    return None


@pytest.fixture
async def database(database_backend: MySQLServer | None, tmp_path: Path):
    """A Database with every table: SQLite in tmp_path, or a fresh MySQL database."""
    if database_backend is None:
        db = await open_sqlite(MASTER, str(tmp_path / "teamtalk.db"), TEST_POOL_SIZE)
        try:
            await init_db(db)
            yield db
        finally:
            await db.aclose()
        return

    server = database_backend
    async with _fresh_mysql_database(server) as name:
        db = await open_mysql(MASTER, server.host, server.port, server.user, server.password,
                              name, TEST_POOL_SIZE)
        try:
            await init_db(db)
            yield db
        finally:
            await db.aclose()


@pytest.fixture(params=["sqlite", "mysql"], ids=["embedded", "mysql"])
def storage_backend(request: pytest.FixtureRequest) -> tuple[MySQLServer, RedisServer] | None:
    if request.param == "mysql":
        return request.getfixturevalue("mysql_server"), request.getfixturevalue("redis_server")
    return None


@pytest.fixture
async def storage(storage_backend: tuple[MySQLServer, RedisServer] | None, tmp_path: Path):
    """A Storage: embedded in tmp_path, or a fresh MySQL database with the private Redis."""
    if storage_backend is None:
        embedded = await open_embedded_storage(tmp_path / "data")
        try:
            yield embedded
        finally:
            await embedded.aclose()
        return

    mysql, redis_server_ = storage_backend
    async with _fresh_mysql_database(mysql) as name, _clean_redis(redis_server_):
        endpoint = mysql.endpoint(name)
        caches = {cache_name: redis_server_.endpoint() for cache_name in CACHE_INSTANCE_NAMES}
        opened = await open_storage({MASTER: endpoint, SLAVE: endpoint}, caches, create_tables=True)
        try:
            yield opened
        finally:
            await opened.aclose()


@pytest.fixture(params=["redis", "embedded"])
def cache_backend(request: pytest.FixtureRequest) -> RedisServer | None:
    if request.param == "redis":
        return request.getfixturevalue("redis_server")
    return None


@pytest.fixture
async def cache(cache_backend: RedisServer | None, tmp_path: Path):
    """A Cache: RedisCache on the private Redis (flushed), or an EmbeddedCache file in tmp_path."""
    if cache_backend is None:
        embedded = EmbeddedCache(str(tmp_path / "cache.db"), "test")
        try:
            await embedded.load()
            yield embedded
        finally:
            await embedded.aclose()
        return

    server = cache_backend
    async with _clean_redis(server):
        redis_cache = RedisCache(server.host, server.port, server.db, server.password, TEST_POOL_SIZE)
        try:
            yield redis_cache
        finally:
            await redis_cache.aclose()
