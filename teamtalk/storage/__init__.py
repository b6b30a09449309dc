"""Storage for TeamTalk: databases, message shards and caches, bundled.

Two ways to get a :class:`Storage`:

- :func:`open_embedded_storage` keeps everything in one directory: the
  tables in the SQLite file ``teamtalk.db`` and the caches in ``cache.db``.
- :func:`open_storage` connects to MySQL instances and Redis caches
  described the way the original ``dbproxyserver.conf`` describes them.

The caller that opens a Storage owns it. It starts :meth:`Storage.run` in a
nursery for background work (saving embedded caches) and calls
``await storage.aclose()`` at the end, or uses ``async with`` on it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import trio

from teamtalk.storage.cache import (
    CACHE_INSTANCE_NAMES,
    Cache,
    CacheError,
    CacheSet,
    EmbeddedCache,
    RedisCache,
)
from teamtalk.storage.database import (
    Cursor,
    Database,
    SchemaMissing,
    StorageUnavailable,
    open_mysql,
    open_sqlite,
)
from teamtalk.storage.schema import init_db
from teamtalk.storage.shards import ShardMap

__all__ = [
    "CACHE_INSTANCE_NAMES",
    "Cache",
    "CacheEndpoint",
    "CacheError",
    "CacheSet",
    "Cursor",
    "Database",
    "DatabaseEndpoint",
    "EmbeddedCache",
    "MASTER",
    "RedisCache",
    "SLAVE",
    "SchemaMissing",
    "ShardMap",
    "Storage",
    "StorageUnavailable",
    "init_db",
    "open_embedded_database",
    "open_embedded_storage",
    "open_storage",
]

logger = logging.getLogger(__name__)

#: Database instance names of the original config: writes go to the
#: master, reads that tolerate replication lag may go to the slave.
MASTER = "teamtalk_master"
SLAVE = "teamtalk_slave"

EMBEDDED_DB_FILENAME = "teamtalk.db"
EMBEDDED_CACHE_FILENAME = "cache.db"
#: Connections in the embedded SQLite pool.
EMBEDDED_POOL_SIZE = 4


class DatabaseEndpoint(NamedTuple):
    """One MySQL instance, as the ``<name>_host`` ... ``<name>_maxconncnt`` conf keys give it."""

    host: str
    port: int
    dbname: str
    user: str
    password: str
    pool_size: int


class CacheEndpoint(NamedTuple):
    """One Redis cache instance, as the ``<name>_host`` ... ``<name>_maxconncnt`` conf keys give it."""

    host: str
    port: int
    db: int
    password: str | None
    pool_size: int


class Storage:
    """Everything db_proxy_server stores into, opened and closed together.

    Attributes:
        master: database for writes (``teamtalk_master``).
        slave: database for reads (``teamtalk_slave``); may be ``master``.
        shards: where each message shard lives.
        caches: the cache instances by name.
        databases: every opened database by instance name.
    """

    def __init__(
        self,
        master: Database,
        slave: Database,
        shards: ShardMap,
        caches: CacheSet,
        databases: Mapping[str, Database] | None = None,
    ) -> None:
        self.master = master
        self.slave = slave
        self.shards = shards
        self.caches = caches
        self.databases = dict(databases or {master.name: master, slave.name: slave})

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Run background work (saving embedded caches) until cancelled."""
        await self.caches.run(task_status=task_status)

    async def aclose(self) -> None:
        """Close the caches, then every database once."""
        try:
            await self.caches.aclose()
        finally:
            for database in _distinct([*self.databases.values(), *self.shards.databases()]):
                await database.aclose()

    async def __aenter__(self) -> Storage:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _distinct(databases: list[Database]) -> list[Database]:
    distinct: list[Database] = []
    for database in databases:
        if all(database is not seen for seen in distinct):
            distinct.append(database)
    return distinct


async def open_embedded_database(data_dir: str | os.PathLike) -> Database:
    """Open ``<data_dir>/teamtalk.db`` with every table created.

    Creates ``data_dir`` (and its parents) if missing. The caller owns the
    result and must ``aclose()`` it.

    Raises:
        StorageUnavailable: the directory or file cannot be created or opened.
    """
    directory = Path(data_dir).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageUnavailable(f"cannot create data directory {directory}: {exc}") from exc
    database = await open_sqlite(MASTER, str(directory / EMBEDDED_DB_FILENAME), EMBEDDED_POOL_SIZE)
    try:
        await init_db(database)
    except BaseException:
        await database.aclose()
        raise
    return database


async def open_embedded_storage(data_dir: str | os.PathLike) -> Storage:
    """Open storage kept in one directory: SQLite tables and saved embedded caches.

    The same :class:`Database` serves as master, slave and every shard.
    The caller owns the result; see :class:`Storage`.
    """
    database = await open_embedded_database(data_dir)
    caches = CacheSet.embedded(str(Path(data_dir).expanduser() / EMBEDDED_CACHE_FILENAME))
    storage = Storage(database, database, ShardMap(database), caches, {MASTER: database})
    try:
        for cache in caches.distinct():
            if isinstance(cache, EmbeddedCache):
                await cache.load()
    except BaseException:
        await storage.aclose()
        raise
    logger.info("embedded storage in %s", data_dir)
    return storage


async def open_storage(
    db_instances: Mapping[str, DatabaseEndpoint | tuple],
    cache_instances: Mapping[str, CacheEndpoint | tuple],
    *,
    shard_instances: Mapping[int, str] | None = None,
    create_tables: bool = False,
) -> Storage:
    """Open MySQL databases and Redis caches described like ``dbproxyserver.conf``.

    Args:
        db_instances: instance name to ``(host, port, dbname, user,
            password, pool_size)``. ``teamtalk_master`` is required;
            ``teamtalk_slave`` defaults to the master.
        cache_instances: instance name to ``(host, port, db, password,
            pool_size)``. Names with the same host, port, db and password
            share one connection pool.
        shard_instances: shard index to the db instance name holding that
            shard's message tables; shards not listed use the master.
        create_tables: run :func:`init_db` on every database holding tables.

    Every database and cache is contacted before this returns. The caller
    owns the result; see :class:`Storage`.

    Raises:
        StorageUnavailable: a server cannot be reached (the message names it).
        ValueError: the master is missing or a shard names an unknown instance.
    """
    if MASTER not in db_instances:
        configured = ", ".join(sorted(db_instances)) or "none"
        raise ValueError(f"database instance {MASTER} is required; configured: {configured}")
    for shard, instance in (shard_instances or {}).items():
        if instance not in db_instances:
            raise ValueError(f"shard {shard} names database instance {instance!r}, which is not configured")

    databases: dict[str, Database] = {}
    caches: dict[str, Cache] = {}
    try:
        for name, endpoint in db_instances.items():
            host, port, dbname, user, password, pool_size = DatabaseEndpoint(*endpoint)
            databases[name] = await open_mysql(name, host, int(port), user, password, dbname, int(pool_size))

        by_endpoint: dict[tuple, RedisCache] = {}
        for name, endpoint in cache_instances.items():
            host, port, db, password, pool_size = CacheEndpoint(*endpoint)
            key = (host, int(port), int(db), password or None)
            if key not in by_endpoint:
                by_endpoint[key] = RedisCache(host, int(port), int(db), password, int(pool_size))
            caches[name] = by_endpoint[key]
        cache_set = CacheSet(caches)
        await cache_set.ping()

        master = databases[MASTER]
        slave = databases.get(SLAVE, master)
        overrides = {shard: databases[name] for shard, name in (shard_instances or {}).items()}
        shards = ShardMap(master, overrides)
        if create_tables:
            for database in shards.databases():
                await init_db(database)
    except BaseException:
        for cache in CacheSet(caches).distinct():
            await cache.aclose()
        for database in databases.values():
            await database.aclose()
        raise

    return Storage(master, slave, shards, cache_set, databases)
