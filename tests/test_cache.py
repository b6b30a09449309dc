"""Tests of teamtalk.storage.cache on Redis and on the embedded store.

The ``cache`` fixture runs each test on a private Redis server and on an
EmbeddedCache file, so both backends are held to the same behaviour.
"""

from __future__ import annotations

import contextlib
import sqlite3

import pytest
import trio

from teamtalk.storage import CacheError, CacheSet, EmbeddedCache, RedisCache, StorageUnavailable


# ---------------------------------------------------------------------------
# Strings and counters


async def test_cache_set_then_get(cache):
    await cache.set("token_1", "abc")
    await cache.set("count", 5)

    assert await cache.get("token_1") == "abc"
    assert await cache.get("count") == "5"
    assert await cache.get("missing") is None


async def test_cache_set_replaces_hash(cache):
    await cache.hset("key", "field", "1")
    await cache.set("key", "plain")

    assert await cache.get("key") == "plain"


async def test_cache_unicode_round_trip(cache):
    await cache.set("nick", "小猫😀")
    await cache.hset("hash", "字段", "值🎉")

    assert await cache.get("nick") == "小猫😀"
    assert await cache.hgetall("hash") == {"字段": "值🎉"}


async def test_cache_mget(cache):
    await cache.set("a", "1")
    await cache.set("c", "3")
    await cache.hset("h", "f", "v")

    assert await cache.mget(["a", "b", "c", "h"]) == ["1", None, "3", None]
    assert await cache.mget([]) == []


async def test_cache_incr_returns_int(cache):
    first = await cache.incr("msg_id_3")
    second = await cache.incr("msg_id_3")
    jumped = await cache.incrby("msg_id_3", 10)
    back = await cache.incrby("msg_id_3", -2)

    assert (first, second, jumped, back) == (1, 2, 12, 10)
    assert await cache.get("msg_id_3") == "10"


async def test_cache_incr_not_an_integer(cache):
    await cache.set("text", "abc")

    with pytest.raises(CacheError):
        await cache.incr("text")

    assert await cache.get("text") == "abc"


async def test_cache_incr_overflow(cache):
    await cache.set("big", str(2**63 - 1))

    with pytest.raises(CacheError):
        await cache.incr("big")


async def test_cache_wrong_type(cache):
    await cache.hset("hash", "f", "1")
    await cache.set("string", "1")

    with pytest.raises(CacheError):
        await cache.get("hash")
    with pytest.raises(CacheError):
        await cache.incr("hash")
    with pytest.raises(CacheError):
        await cache.hset("string", "f", "1")
    with pytest.raises(CacheError):
        await cache.hgetall("string")


# ---------------------------------------------------------------------------
# Hashes


async def test_cache_hset_reports_new_field(cache):
    added = await cache.hset("unread_2", "1", "4")
    replaced = await cache.hset("unread_2", "1", "5")

    assert added == 1
    assert replaced == 0
    assert await cache.hget("unread_2", "1") == "5"
    assert await cache.hget("unread_2", "9") is None
    assert await cache.hget("missing", "1") is None


async def test_cache_hmset_and_hgetall(cache):
    await cache.hmset("group_member_7", {"1": 100, "2": "200"})
    await cache.hmset("group_member_7", {"3": "300"})
    await cache.hmset("empty", {})

    assert await cache.hgetall("group_member_7") == {"1": "100", "2": "200", "3": "300"}
    assert await cache.hgetall("missing") == {}
    assert await cache.exists("empty") is False


async def test_cache_hincrby_returns_int(cache):
    first = await cache.hincrby("7_im_group_msg", "count", 1)
    second = await cache.hincrby("7_im_group_msg", "count", 5)

    assert (first, second) == (1, 6)
    assert await cache.hget("7_im_group_msg", "count") == "6"


async def test_cache_hincrby_not_an_integer(cache):
    await cache.hset("h", "f", "x")

    with pytest.raises(CacheError):
        await cache.hincrby("h", "f", 1)


async def test_cache_hdel_counts_and_removes_empty_hash(cache):
    await cache.hmset("unread_2", {"1": "1", "3": "2"})

    removed = await cache.hdel("unread_2", "1", "9")
    removed_last = await cache.hdel("unread_2", "3")

    assert removed == 1
    assert removed_last == 1
    assert await cache.exists("unread_2") is False
    assert await cache.hdel("unread_2", "3") == 0
    assert await cache.hdel("unread_2") == 0


async def test_cache_delete_and_exists(cache):
    await cache.set("a", "1")
    await cache.hset("b", "f", "1")

    removed = await cache.delete("a", "b", "c")

    assert removed == 2
    assert await cache.exists("a") is False
    assert await cache.exists("b") is False
    assert await cache.delete() == 0


async def test_cache_rejects_bad_arguments(cache):
    with pytest.raises(ValueError, match="field"):
        await cache.hset("h", "", "1")
    with pytest.raises(TypeError):
        await cache.set("k", True)
    with pytest.raises(TypeError):
        await cache.set("k", None)
    with pytest.raises(TypeError):
        await cache.incrby("k", "1")
    with pytest.raises(TypeError):
        await cache.get(b"k")

    assert await cache.exists("h") is False
    assert await cache.exists("k") is False


# ---------------------------------------------------------------------------
# Pipelines


async def test_cache_pipeline_runs_in_order(cache):
    results = await cache.pipeline([
        ("incr", "msg_id_3"),
        ("hincrby", "unread_2", "1", 1),
        ("get", "msg_id_3"),
        ("hset", "h", "f", "v"),
        ("hmset", "h", {"g": "w"}),
        ("hgetall", "h"),
        ("mget", ["msg_id_3", "none"]),
        ("exists", "h"),
        ("hdel", "h", "f"),
        ("delete", "msg_id_3"),
        ("set", "s", "1"),
        ("incrby", "s", 2),
        ("hget", "h", "g"),
    ])

    assert results == [1, 1, "1", 1, None, {"f": "v", "g": "w"}, ["1", None], True, 1, 1, None, 3, "w"]


async def test_cache_pipeline_empty(cache):
    assert await cache.pipeline([]) == []


async def test_cache_pipeline_local_only_commands(cache):
    results = await cache.pipeline([("mget", []), ("delete",), ("hmset", "k", {})])

    assert results == [[], 0, None]


async def test_cache_pipeline_malformed_runs_nothing(cache):
    with pytest.raises(ValueError, match="unknown cache command"):
        await cache.pipeline([("incr", "a"), ("flushall",)])
    with pytest.raises(TypeError, match="takes 2"):
        await cache.pipeline([("incr", "a"), ("incrby", "a")])
    with pytest.raises(ValueError, match="empty"):
        await cache.pipeline([("incr", "a"), ()])

    assert await cache.exists("a") is False


async def test_cache_pipeline_error_still_runs_the_rest(cache):
    await cache.set("text", "abc")

    with pytest.raises(CacheError):
        await cache.pipeline([("incr", "before"), ("incr", "text"), ("incr", "after")])

    assert await cache.get("before") == "1"
    assert await cache.get("after") == "1"


# ---------------------------------------------------------------------------
# Embedded persistence


async def test_embedded_cache_survives_reopen(tmp_path):
    path = str(tmp_path / "cache.db")
    cache = EmbeddedCache(path, "unread")
    await cache.set("msg_id_1", "41")
    await cache.incr("msg_id_1")
    await cache.hmset("unread_2", {"1": "3", "5": "1"})
    await cache.set("gone", "x")
    await cache.delete("gone")
    await cache.hdel("unread_2", "5")
    await cache.aclose()

    reopened = EmbeddedCache(path, "unread")
    try:
        assert await reopened.get("msg_id_1") == "42"
        assert await reopened.hgetall("unread_2") == {"1": "3"}
        assert await reopened.exists("gone") is False
    finally:
        await reopened.aclose()


async def test_embedded_cache_namespaces_are_separate(tmp_path):
    path = str(tmp_path / "cache.db")
    unread = EmbeddedCache(path, "unread")
    token = EmbeddedCache(path, "token")
    await unread.set("key", "unread")
    await token.set("key", "token")
    await unread.aclose()
    await token.aclose()

    reopened = EmbeddedCache(path, "token")
    try:
        assert await reopened.get("key") == "token"
    finally:
        await reopened.aclose()


async def test_embedded_cache_background_flush(tmp_path):
    path = str(tmp_path / "cache.db")

    def saved_rows():
        with contextlib.closing(sqlite3.connect(path)) as conn:
            return conn.execute("SELECT name, key, field, value FROM tt_cache").fetchall()

    # Real time: the flush runs in a worker thread, which a virtual clock
    # would not wait for. fail_after only bounds the wait.
    async with EmbeddedCache.open(path, "sync", flush_interval=0.01) as cache:
        await cache.set("key", "value")
        with trio.fail_after(10):
            while not saved_rows():
                await trio.sleep(0.01)

    assert saved_rows() == [("sync", "key", "", "value")]


async def test_embedded_cache_memory_only(tmp_path):
    cache = EmbeddedCache(None)
    await cache.hset("h", "f", "v")
    await cache.flush()

    assert await cache.hget("h", "f") == "v"
    await cache.aclose()
    assert list(tmp_path.iterdir()) == []


async def test_embedded_cache_closed_raises(tmp_path):
    cache = EmbeddedCache(str(tmp_path / "cache.db"))
    await cache.aclose()

    with pytest.raises(StorageUnavailable, match="closed"):
        await cache.get("k")


async def test_embedded_cache_unopenable_file(tmp_path):
    cache = EmbeddedCache(str(tmp_path / "missing" / "cache.db"))

    with pytest.raises(StorageUnavailable, match="cannot open cache file"):
        await cache.get("k")


# ---------------------------------------------------------------------------
# Redis connection failures


async def test_redis_cache_closed_port_names_host_and_port(closed_port):
    cache = RedisCache("127.0.0.1", closed_port, 1, None, 2)
    try:
        with pytest.raises(StorageUnavailable, match=f"127.0.0.1:{closed_port}"):
            await cache.ping()
        with pytest.raises(StorageUnavailable, match=f"127.0.0.1:{closed_port}"):
            await cache.incr("msg_id_1")
    finally:
        await cache.aclose()


async def test_redis_cache_rejects_zero_connections():
    with pytest.raises(ValueError, match="max_connections"):
        RedisCache("127.0.0.1", 6379, 0, None, 0)


# ---------------------------------------------------------------------------
# CacheSet


async def test_cache_set_unknown_name(tmp_path):
    caches = CacheSet.embedded(None)

    with pytest.raises(KeyError, match="group_member"):
        caches.get("nonexistent")

    assert caches.get("unread") is not caches.get("token")
    await caches.aclose()


async def test_cache_set_shares_and_closes_once(redis_server):
    shared = RedisCache(redis_server.host, redis_server.port, redis_server.db, None, 2)
    caches = CacheSet({"unread": shared, "token": shared})

    await caches.ping()

    assert caches.distinct() == [shared]
    assert caches.names() == ["token", "unread"]
    await caches.aclose()
    with pytest.raises(StorageUnavailable, match="closed"):
        await shared.get("k")
