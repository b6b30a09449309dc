"""Key-value cache: Redis for deployments, an embedded store for one process.

The original TeamTalk keeps counters and small hashes in Redis: msg_id
counters, unread counts, group members, device tokens. :class:`Cache` is
the subset of Redis commands those need, with the same semantics on both
backends:

- :class:`RedisCache` calls redis-py's synchronous client in Trio worker
  threads (redis-py's asyncio client does not run under Trio).
- :class:`EmbeddedCache` keeps strings and hashes in dicts and saves the
  changed keys to an SQLite file about once a second, so it survives a
  restart.

Keys, fields and values are text; integers are accepted and stored in
decimal. Counters (``incr``, ``incrby``, ``hincrby``) return int. An empty
hash field name is rejected on both backends, because the embedded file
format reserves it for plain strings. A command on a key of the wrong type,
or a counter on a non-integer value, raises :class:`CacheError`.

:class:`CacheSet` maps the cache instance names of the original's config
file (``unread``, ``group_set``, ``token``, ``sync``, ``group_member``) to
Cache objects.
"""

from __future__ import annotations

import abc
import logging
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import trio

from teamtalk.storage.database import StorageUnavailable

logger = logging.getLogger(__name__)

#: Cache instance names used by the original db_proxy_server config.
CACHE_INSTANCE_NAMES = ("unread", "group_set", "token", "sync", "group_member")

#: Seconds between two saves of the embedded cache.
EMBEDDED_FLUSH_INTERVAL_S = 1.0
#: Redis socket connect and read timeout, in seconds.
REDIS_SOCKET_TIMEOUT_S = 5.0

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


class CacheError(Exception):
    """A cache command failed on the stored value (wrong type, not an integer)."""


def _text(value: Any, what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"cache {what} must be str or int, got {type(value).__name__}")


def _value(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return _text(value, "value")


def _field(value: Any) -> str:
    text = _text(value, "hash field")
    if not text:
        raise ValueError("cache hash field must not be empty")
    return text


def _amount(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"cache increment must be int, got {type(value).__name__}")
    return value


def _normalize(command: Sequence[Any]) -> tuple[str, tuple]:
    """Check one command tuple ``(name, *args)`` and convert its arguments to text."""
    if not command:
        raise ValueError("empty cache command")
    name, args = command[0], tuple(command[1:])
    try:
        arity = _ARITY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown cache command {name!r}; known: {', '.join(sorted(_ARITY))}") from None
    if arity is not None and len(args) != arity:
        raise TypeError(f"cache command {name} takes {arity} argument(s), got {len(args)}")

    # Convert keys, fields and values to text, as Redis stores them.
    if name in ("get", "incr", "hgetall", "exists"):
        return name, (_text(args[0], "key"),)
    if name == "set":
        return name, (_text(args[0], "key"), _value(args[1]))
    if name == "mget":
        return name, (tuple(_text(key, "key") for key in args[0]),)
    if name == "incrby":
        return name, (_text(args[0], "key"), _amount(args[1]))
    if name == "hget":
        return name, (_text(args[0], "key"), _field(args[1]))
    if name == "hset":
        return name, (_text(args[0], "key"), _field(args[1]), _value(args[2]))
    if name == "hmset":
        mapping = {_field(key): _value(value) for key, value in dict(args[1]).items()}
        return name, (_text(args[0], "key"), mapping)
    if name == "hincrby":
        return name, (_text(args[0], "key"), _field(args[1]), _amount(args[2]))
    if name == "hdel":
        if not args:
            raise TypeError("cache command hdel needs a key")
        return name, (_text(args[0], "key"), *(_field(f) for f in args[1:]))
    if name == "delete":
        return name, tuple(_text(key, "key") for key in args)
    raise AssertionError(name)


# Number of arguments per command; None means variable.
_ARITY: dict[str, int | None] = {
    "get": 1, "set": 2, "mget": 1, "incr": 1, "incrby": 2,
    "hget": 2, "hset": 3, "hmset": 2, "hincrby": 3, "hgetall": 1,
    "hdel": None, "delete": None, "exists": 1,
}


class Cache(abc.ABC):
    """The cache commands TeamTalk uses, with Redis semantics.

    Each method is one command. :meth:`pipeline` runs several in one round
    trip; a command there is the method name followed by the method's
    arguments, e.g. ``("hincrby", "unread_2", "1", 1)``.
    """

    async def get(self, key: str) -> str | None:
        return await self._one("get", key)

    async def set(self, key: str, value: str | int) -> None:
        await self._one("set", key, value)

    async def mget(self, keys: Iterable[str]) -> list[str | None]:
        """Return the string value of each key, None where missing or not a string."""
        return await self._one("mget", list(keys))

    async def incr(self, key: str) -> int:
        return await self._one("incr", key)

    async def incrby(self, key: str, n: int) -> int:
        return await self._one("incrby", key, n)

    async def hget(self, key: str, field: str) -> str | None:
        return await self._one("hget", key, field)

    async def hset(self, key: str, field: str, value: str | int) -> int:
        """Set one hash field; return 1 if the field is new, 0 if it was replaced."""
        return await self._one("hset", key, field, value)

    async def hmset(self, key: str, mapping: Mapping[str, str | int]) -> None:
        """Set several hash fields at once; an empty mapping does nothing."""
        await self._one("hmset", key, mapping)

    async def hincrby(self, key: str, field: str, amount: int) -> int:
        return await self._one("hincrby", key, field, amount)

    async def hgetall(self, key: str) -> dict[str, str]:
        return await self._one("hgetall", key)

    async def hdel(self, key: str, *fields: str) -> int:
        """Delete hash fields; return how many existed. A hash left empty is removed."""
        return await self._one("hdel", key, *fields)

    async def delete(self, *keys: str) -> int:
        """Delete keys of any type; return how many existed."""
        return await self._one("delete", *keys)

    async def exists(self, key: str) -> bool:
        return await self._one("exists", key)

    async def pipeline(self, commands: Iterable[Sequence[Any]]) -> list[Any]:
        """Run several commands in one round trip and return their results in order.

        Not a transaction: other clients' commands may interleave. Every
        command runs even when one fails; the first failure is then raised.
        Raises ValueError or TypeError before anything runs if a command is
        malformed.
        """
        normalized = [_normalize(command) for command in commands]
        if not normalized:
            return []
        return await self._execute(normalized)

    async def ping(self) -> None:
        """Check that the cache server responds; raise :class:`StorageUnavailable` if not."""
        await trio.lowlevel.checkpoint()

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Run background work until cancelled; the base class has none and returns."""
        task_status.started()

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release the cache; later commands raise :class:`StorageUnavailable`."""

    async def _one(self, *command: Any) -> Any:
        return (await self._execute([_normalize(command)]))[0]

    @abc.abstractmethod
    async def _execute(self, commands: list[tuple[str, tuple]]) -> list[Any]:
        """Run normalized commands in order and return their results."""


# Results computed locally for argument lists Redis would reject as empty.
_NO_RESULT = object()


def _local_result(name: str, args: tuple) -> Any:
    if name == "mget" and not args[0]:
        return []
    if name == "hmset" and not args[1]:
        return None
    if name == "hdel" and len(args) == 1:
        return 0
    if name == "delete" and not args:
        return 0
    return _NO_RESULT


def _issue(target: Any, name: str, args: tuple) -> Any:
    """Call one command on a redis-py client or pipeline."""
    if name == "mget":
        return target.mget(list(args[0]))
    if name == "hmset":
        return target.hset(args[0], mapping=args[1])
    if name == "incr":
        return target.incrby(args[0], 1)
    return getattr(target, name)(*args)


def _convert(name: str, raw: Any) -> Any:
    """Convert a redis-py reply to the type :class:`Cache` documents."""
    if name in ("set", "hmset"):
        return None
    if name in ("incr", "incrby", "hincrby", "hset", "hdel", "delete"):
        return int(raw)
    if name == "exists":
        return bool(raw)
    if name == "hgetall":
        return dict(raw)
    if name == "mget":
        return list(raw)
    return raw


class RedisCache(Cache):
    """A :class:`Cache` on one Redis database, through redis-py's synchronous client.

    Commands run in Trio worker threads, at most ``max_connections`` at a
    time. Connections open lazily; use :meth:`ping` to check the server.
    Once a command's thread has started, cancellation waits for it (at most
    :data:`REDIS_SOCKET_TIMEOUT_S`), so a write is not abandoned half-way.

    Raises :class:`StorageUnavailable`, naming host and port, when the
    server cannot be reached.
    """

    def __init__(
        self,
        host: str,
        port: int,
        db: int = 0,
        password: str | None = None,
        max_connections: int = 16,
        *,
        socket_timeout: float = REDIS_SOCKET_TIMEOUT_S,
    ) -> None:
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError as exc:
            raise StorageUnavailable(
                "Redis support needs the redis package: pip install 'teamtalk[redis]'"
            ) from exc
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self.host = host
        self.port = int(port)
        self.db = int(db)
        self.description = f"{host}:{port}/{db}"
        self._redis = redis
        self._pool = redis.ConnectionPool(
            host=host,
            port=self.port,
            db=self.db,
            password=password or None,
            max_connections=max_connections,
            decode_responses=True,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            # One quick retry replaces a pooled connection the server has
            # closed; longer outages surface as StorageUnavailable.
            retry=Retry(NoBackoff(), 1),
        )
        self._client = redis.Redis(connection_pool=self._pool)
        self._limiter = trio.CapacityLimiter(max_connections)
        self._closed = False

    def __repr__(self) -> str:
        return f"<RedisCache {self.description}>"

    async def ping(self) -> None:
        await self._in_thread(self._client.ping)

    async def aclose(self) -> None:
        self._closed = True
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._pool.disconnect)

    async def _execute(self, commands: list[tuple[str, tuple]]) -> list[Any]:
        return await self._in_thread(self._execute_sync, commands)

    async def _in_thread(self, func: Any, *args: Any) -> Any:
        if self._closed:
            raise StorageUnavailable(f"Redis cache {self.description} is closed")
        return await trio.to_thread.run_sync(self._guarded, func, args, limiter=self._limiter)

    def _guarded(self, func: Any, args: tuple) -> Any:
        redis = self._redis
        try:
            return func(*args)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StorageUnavailable(
                f"cannot reach Redis at {self.host}:{self.port} (db {self.db}): {exc}"
            ) from exc
        except redis.ResponseError as exc:
            raise CacheError(f"Redis {self.description}: {exc}") from exc

    def _execute_sync(self, commands: list[tuple[str, tuple]]) -> list[Any]:
        results = [_local_result(name, args) for name, args in commands]
        remote = [i for i, result in enumerate(results) if result is _NO_RESULT]
        if len(remote) == 1:
            name, args = commands[remote[0]]
            results[remote[0]] = _convert(name, _issue(self._client, name, args))
        elif remote:
            pipe = self._client.pipeline(transaction=False)
            for i in remote:
                _issue(pipe, *commands[i])
            replies = pipe.execute(raise_on_error=True)
            for i, reply in zip(remote, replies):
                results[i] = _convert(commands[i][0], reply)
        return results


class EmbeddedCache(Cache):
    """A :class:`Cache` in process memory, saved to an SQLite file.

    Data lives in dicts and every change marks its key dirty. :meth:`flush`
    writes the dirty keys to table ``tt_cache`` in a worker thread. Its
    columns are name, key, field and value, and a plain string is stored
    with field ``''``. The file
    is read back on first use, so data survives a restart, except changes
    made after the last flush when the process dies without ``aclose()``.

    ``namespace`` (column ``name``) lets several caches share one file.
    With ``path=None`` nothing is saved.

    Start :meth:`run` in a nursery to flush every ``flush_interval``
    seconds, or use ``async with EmbeddedCache.open(path) as cache``.
    :meth:`aclose` flushes one last time. Not thread-safe: use it from
    Trio tasks of one thread.
    """

    def __init__(
        self,
        path: str | None,
        namespace: str = "default",
        *,
        flush_interval: float = EMBEDDED_FLUSH_INTERVAL_S,
    ) -> None:
        self.path = None if path is None else str(path)
        self.namespace = namespace
        self.description = f"{self.path or 'memory'}#{namespace}"
        self.flush_interval = flush_interval
        self._data: dict[str, str | dict[str, str]] = {}
        self._dirty: set[str] = set()
        self._conn: sqlite3.Connection | None = None
        self._loaded = False
        self._closed = False
        self._io_lock = trio.Lock()

    def __repr__(self) -> str:
        return f"<EmbeddedCache {self.description}>"

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        path: str | None,
        namespace: str = "default",
        *,
        flush_interval: float = EMBEDDED_FLUSH_INTERVAL_S,
    ) -> AsyncIterator[EmbeddedCache]:
        """Load the cache, flush it in the background, and close it on exit."""
        cache = cls(path, namespace, flush_interval=flush_interval)
        try:
            await cache.load()
            async with trio.open_nursery() as nursery:
                await nursery.start(cache.run)
                yield cache
                nursery.cancel_scope.cancel()
        finally:
            await cache.aclose()

    async def load(self) -> None:
        """Read the saved data; runs once, and the first command calls it if needed.

        Raises :class:`StorageUnavailable` if the file cannot be opened.
        """
        async with self._io_lock:
            if self._loaded:
                return
            if self.path is not None:
                rows = await trio.to_thread.run_sync(self._load_sync)
                for key, field, value in rows:
                    if field == "":
                        self._data[key] = value
                    else:
                        entry = self._data.setdefault(key, {})
                        if isinstance(entry, dict):
                            entry[field] = value
            self._loaded = True

    async def flush(self) -> None:
        """Write the keys changed since the last flush to the file."""
        async with self._io_lock:
            if self._conn is None or not self._dirty:
                return
            dirty, self._dirty = self._dirty, set()
            snapshot = []
            for key in dirty:
                value = self._data.get(key)
                snapshot.append((key, dict(value) if isinstance(value, dict) else value))
            try:
                await trio.to_thread.run_sync(self._write_sync, snapshot)
            except BaseException:
                # Keep the keys dirty so the next flush writes them again.
                self._dirty |= dirty
                raise

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Flush every ``flush_interval`` seconds until cancelled.

        A failed flush is logged and tried again at the next interval.
        """
        task_status.started()
        if self.path is None:
            return
        while True:
            await trio.sleep(self.flush_interval)
            try:
                await self.flush()
            except (sqlite3.Error, OSError):
                logger.exception("saving cache %s failed; will retry", self.description)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # A local file write bounded by SQLite's busy timeout; shielded so a
        # cancelled shutdown still saves the latest changes.
        with trio.CancelScope(shield=True):
            try:
                await self.flush()
            finally:
                if self._conn is not None:
                    conn, self._conn = self._conn, None
                    await trio.to_thread.run_sync(conn.close)

    async def _execute(self, commands: list[tuple[str, tuple]]) -> list[Any]:
        if self._closed:
            raise StorageUnavailable(f"cache {self.description} is closed")
        if not self._loaded:
            await self.load()
        else:
            await trio.lowlevel.checkpoint()
        results = []
        first_error: Exception | None = None
        for name, args in commands:
            try:
                results.append(getattr(self, "_cmd_" + name)(*args))
            except CacheError as exc:
                results.append(exc)
                first_error = first_error or exc
        if first_error is not None:
            raise first_error
        return results

    # Commands, run synchronously on the dicts.

    def _string(self, key: str) -> str | None:
        value = self._data.get(key)
        if isinstance(value, dict):
            raise CacheError(f"WRONGTYPE key {key!r} contains a hash, not a string")
        return value

    def _hash(self, key: str, create: bool = False) -> dict[str, str] | None:
        value = self._data.get(key)
        if value is None:
            if not create:
                return None
            value = self._data[key] = {}
        if not isinstance(value, dict):
            raise CacheError(f"WRONGTYPE key {key!r} contains a string, not a hash")
        return value

    def _changed(self, key: str) -> None:
        if self.path is not None:
            self._dirty.add(key)

    def _cmd_get(self, key: str) -> str | None:
        return self._string(key)

    def _cmd_set(self, key: str, value: str) -> None:
        self._data[key] = value
        self._changed(key)

    def _cmd_mget(self, keys: tuple[str, ...]) -> list[str | None]:
        values = (self._data.get(key) for key in keys)
        return [value if isinstance(value, str) else None for value in values]

    def _cmd_incr(self, key: str) -> int:
        return self._cmd_incrby(key, 1)

    def _cmd_incrby(self, key: str, n: int) -> int:
        result = _add(self._string(key), n, f"key {key!r}")
        self._data[key] = str(result)
        self._changed(key)
        return result

    def _cmd_hget(self, key: str, field: str) -> str | None:
        entry = self._hash(key)
        return None if entry is None else entry.get(field)

    def _cmd_hset(self, key: str, field: str, value: str) -> int:
        entry = self._hash(key, create=True)
        added = int(field not in entry)
        entry[field] = value
        self._changed(key)
        return added

    def _cmd_hmset(self, key: str, mapping: dict[str, str]) -> None:
        if mapping:
            self._hash(key, create=True).update(mapping)
            self._changed(key)

    def _cmd_hincrby(self, key: str, field: str, amount: int) -> int:
        entry = self._hash(key)
        current = None if entry is None else entry.get(field)
        result = _add(current, amount, f"hash field {field!r} of {key!r}")
        self._hash(key, create=True)[field] = str(result)
        self._changed(key)
        return result

    def _cmd_hgetall(self, key: str) -> dict[str, str]:
        entry = self._hash(key)
        return {} if entry is None else dict(entry)

    def _cmd_hdel(self, key: str, *fields: str) -> int:
        entry = self._hash(key)
        if entry is None:
            return 0
        removed = 0
        for field in fields:
            if entry.pop(field, None) is not None:
                removed += 1
        if not entry:
            del self._data[key]
        if removed:
            self._changed(key)
        return removed

    def _cmd_delete(self, *keys: str) -> int:
        removed = 0
        for key in keys:
            if self._data.pop(key, None) is not None:
                removed += 1
                self._changed(key)
        return removed

    def _cmd_exists(self, key: str) -> bool:
        return key in self._data

    # File side, run in worker threads under _io_lock.

    def _open_sync(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=5.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS tt_cache ("
                " name TEXT NOT NULL, key TEXT NOT NULL, field TEXT NOT NULL, value TEXT NOT NULL,"
                " PRIMARY KEY (name, key, field))"
            )
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"cannot open cache file {self.path}: {exc}") from exc
        return conn

    def _load_sync(self) -> list[tuple[str, str, str]]:
        if self._conn is None:
            self._conn = self._open_sync()
        cursor = self._conn.execute(
            "SELECT key, field, value FROM tt_cache WHERE name = ? ORDER BY key, field",
            (self.namespace,),
        )
        return cursor.fetchall()

    def _write_sync(self, snapshot: list[tuple[str, str | dict[str, str] | None]]) -> None:
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            for key, value in snapshot:
                conn.execute("DELETE FROM tt_cache WHERE name = ? AND key = ?", (self.namespace, key))
                if isinstance(value, str):
                    rows = [(self.namespace, key, "", value)]
                elif value:
                    rows = [(self.namespace, key, field, text) for field, text in value.items()]
                else:
                    continue
                conn.executemany("INSERT INTO tt_cache (name, key, field, value) VALUES (?, ?, ?, ?)", rows)
        except BaseException:
            conn.rollback()
            raise
        conn.commit()


def _add(current: str | None, amount: int, what: str) -> int:
    """Add to a stored counter the way Redis does: missing is 0, 64-bit signed range."""
    try:
        base = 0 if current is None else int(current)
    except ValueError:
        raise CacheError(f"{what} is not an integer") from None
    if not _INT64_MIN <= base <= _INT64_MAX:
        raise CacheError(f"{what} is not an integer or out of range")
    result = base + amount
    if not _INT64_MIN <= result <= _INT64_MAX:
        raise CacheError(f"increment or decrement of {what} would overflow")
    return result


class CacheSet:
    """The cache instances of one server, by the names of the original config.

    Several names may share one :class:`Cache` (the original config puts
    most of them on the same Redis database). The set owns its caches:
    :meth:`aclose` closes each once.
    """

    def __init__(self, caches: Mapping[str, Cache]) -> None:
        self._caches = dict(caches)

    @classmethod
    def embedded(cls, path: str | None, names: Iterable[str] = CACHE_INSTANCE_NAMES) -> CacheSet:
        """Build one :class:`EmbeddedCache` per name, each its own namespace of ``path``."""
        return cls({name: EmbeddedCache(path, name) for name in names})

    def get(self, name: str) -> Cache:
        """Return the cache called ``name``; raise KeyError naming the known ones."""
        try:
            return self._caches[name]
        except KeyError:
            known = ", ".join(sorted(self._caches)) or "none"
            raise KeyError(f"no cache instance {name!r}; configured: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._caches)

    def distinct(self) -> list[Cache]:
        """Return each distinct Cache once."""
        distinct: list[Cache] = []
        for cache in self._caches.values():
            if all(cache is not seen for seen in distinct):
                distinct.append(cache)
        return distinct

    async def ping(self) -> None:
        """Check every cache; raise :class:`StorageUnavailable` for the first that fails."""
        for cache in self.distinct():
            await cache.ping()

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Run every cache's background work (embedded flushes) until cancelled."""
        async with trio.open_nursery() as nursery:
            for cache in self.distinct():
                await nursery.start(cache.run)
            task_status.started()

    async def aclose(self) -> None:
        for cache in self.distinct():
            await cache.aclose()
