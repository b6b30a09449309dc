"""Tests of teamtalk.storage: runner, schema, shards, users and departments.

Most tests run twice through the ``database`` and ``storage`` fixtures:
on SQLite and on a private MariaDB server.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading

import pytest
import trio

from teamtalk.pb import IM_BaseDefine
from teamtalk.storage import (
    MASTER,
    SLAVE,
    DatabaseEndpoint,
    SchemaMissing,
    StorageUnavailable,
    open_embedded_storage,
    open_storage,
)
from teamtalk.storage import departs, shards, users
from teamtalk.storage.database import _qmark_sql, open_mysql, open_sqlite
from teamtalk.storage.schema import TABLES, describe_schema, init_db
from teamtalk.storage.shards import SHARD_COUNT, ShardMap

INJECTION_NAME = "x' or '1'='1"


def _count(cursor, table: str) -> int:
    cursor.execute(f"SELECT COUNT(*) FROM {table}")
    return int(cursor.fetchone()[0])


# ---------------------------------------------------------------------------
# Schema


async def test_init_db_twice_changes_nothing(database):
    before = await describe_schema(database)

    await init_db(database)
    after = await describe_schema(database)

    assert after == before


async def test_init_db_creates_every_table(database):
    tables = await describe_schema(database)

    expected = {table.name for table in TABLES}
    assert expected <= set(tables)
    assert "IMMessage_7" in tables
    assert "IMGroupMessage_0" in tables
    assert len(expected) == 10 + 2 * SHARD_COUNT


async def test_init_db_creates_transmit_file_columns(database):
    tables = await describe_schema(database)

    columns = [column[0] for column in tables["IMTransmitFile"]["columns"]]
    assert columns == ["id", "fromId", "toId", "fileName", "size", "taskId", "status", "created", "updated"]


async def test_init_db_creates_unique_safety_keys(database):
    tables = await describe_schema(database)

    def unique_indexes(table: str) -> list[str]:
        return [name for name, (unique, _) in tables[table]["indexes"].items() if unique and "uniq_" in name]

    assert len(unique_indexes("IMRelationShip")) == 1
    assert len(unique_indexes("IMRecentSession")) == 1
    assert len(unique_indexes("IMMessage_3")) == 1
    assert len(unique_indexes("IMGroupMessage_5")) == 1
    assert len(unique_indexes("IMUser")) == 1


async def test_init_db_inserts_no_rows(database):
    def counts(cursor):
        return [_count(cursor, table.name) for table in TABLES]

    assert set(await database.run("count rows", counts)) == {0}


async def test_schema_mysql_tables_use_utf8mb4(mysql_database):
    def collations(cursor):
        cursor.execute(
            "SELECT TABLE_NAME, TABLE_COLLATION, ENGINE FROM information_schema.TABLES"
            " WHERE TABLE_SCHEMA = DATABASE()"
        )
        return cursor.fetchall()

    rows = await mysql_database.run("collations", collations)

    assert len(rows) == len(TABLES)
    assert {row[1] for row in rows} == {"utf8mb4_bin"}
    assert {row[2] for row in rows} == {"InnoDB"}


async def test_schema_mysql_keeps_original_index_names(mysql_database):
    tables = await describe_schema(mysql_database)

    assert "idx_relateId_status_msgId_created" in tables["IMMessage_0"]["indexes"]
    assert tables["IMGroup"]["indexes"]["idx_name"] == (False, (("name", 191),))


# ---------------------------------------------------------------------------
# Runner


def test_qmark_sql_converts_placeholders():
    assert _qmark_sql("SELECT a FROM t WHERE b = %s AND c LIKE 'x%%'") == \
        "SELECT a FROM t WHERE b = ? AND c LIKE 'x%'"


async def test_run_returns_result_and_commits(database):
    def insert(cursor, name):
        cursor.execute(
            "INSERT INTO IMDepart (departName, priority, parentId, status, created, updated)"
            " VALUES (%s, 0, 0, 0, 1, 1)",
            (name,),
        )
        return cursor.lastrowid

    depart_id = await database.run("insert", insert, "Sales")
    rows = await departs.list_departs(database)

    assert depart_id == rows[0].id
    assert [row.name for row in rows] == ["Sales"]


async def test_run_rolls_back_on_exception(database):
    def insert_then_fail(cursor):
        cursor.execute(
            "INSERT INTO IMDepart (departName, priority, parentId, status, created, updated)"
            " VALUES (%s, 0, 0, 0, 1, 1)",
            ("Lost",),
        )
        raise KeyError("boom")

    with pytest.raises(KeyError):
        await database.run("insert_then_fail", insert_then_fail)

    assert await departs.list_departs(database) == []


async def test_run_literal_percent_sign(database):
    await departs.add_depart(database, "100% sales", priority=1)
    await departs.add_depart(database, "100 sales", priority=2)

    def like_without_params(cursor):
        cursor.execute("SELECT COUNT(*) FROM IMDepart WHERE departName LIKE '100%%'")
        return cursor.fetchone()[0]

    def like_with_param(cursor, priority):
        cursor.execute(
            "SELECT departName FROM IMDepart WHERE departName LIKE '100%%' AND priority = %s", (priority,)
        )
        return [row[0] for row in cursor.fetchall()]

    assert await database.run("like", like_without_params) == 2
    assert await database.run("like", like_with_param, 1) == ["100% sales"]


async def test_run_missing_table_raises_schema_missing(database):
    def query(cursor):
        cursor.execute("SELECT id FROM IMNoSuchTable")

    with pytest.raises(SchemaMissing, match="init-db"):
        await database.run("missing", query)


async def test_run_many_concurrent_calls_share_the_pool(database):
    results = {}

    async def add(index):
        results[index] = await departs.add_depart(database, f"depart {index}")

    async with trio.open_nursery() as nursery:
        for index in range(3 * database.pool_size):
            nursery.start_soon(add, index)

    assert len(set(results.values())) == 3 * database.pool_size
    assert len(await departs.list_departs(database)) == 3 * database.pool_size


async def test_run_cancelled_write_still_commits(database):
    started = threading.Event()
    release = threading.Event()

    def slow_insert(cursor):
        started.set()
        release.wait(30)
        cursor.execute(
            "INSERT INTO IMDepart (departName, priority, parentId, status, created, updated)"
            " VALUES (%s, 0, 0, 0, 1, 1)",
            ("Kept",),
        )

    scope = trio.CancelScope()

    async def writer():
        with scope:
            await database.run("slow_insert", slow_insert)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.to_thread.run_sync(started.wait, 30)
        scope.cancel()
        release.set()

    assert scope.cancel_called
    assert [row.name for row in await departs.list_departs(database)] == ["Kept"]


async def test_run_retries_when_sqlite_database_is_locked(tmp_path, autojump_clock):
    path = str(tmp_path / "locked.db")
    database = await open_sqlite(MASTER, path, 2, busy_timeout_ms=0)
    await init_db(database)
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    attempts = []

    def insert(cursor):
        attempts.append(1)
        try:
            cursor.execute(
                "INSERT INTO IMDepart (departName, priority, parentId, status, created, updated)"
                " VALUES ('Retried', 0, 0, 0, 1, 1)"
            )
        finally:
            if len(attempts) == 1:
                blocker.rollback()

    try:
        await database.run("insert", insert)
        rows = await departs.list_departs(database)
    finally:
        blocker.close()
        await database.aclose()

    assert len(attempts) == 2
    assert [row.name for row in rows] == ["Retried"]


async def test_run_gives_up_after_bounded_retries(tmp_path, autojump_clock):
    path = str(tmp_path / "locked.db")
    database = await open_sqlite(MASTER, path, 2, busy_timeout_ms=0)
    await init_db(database)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    attempts = []

    def insert(cursor):
        attempts.append(1)
        cursor.execute(
            "INSERT INTO IMDepart (departName, priority, parentId, status, created, updated)"
            " VALUES ('Never', 0, 0, 0, 1, 1)"
        )

    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await database.run("insert", insert)
    finally:
        blocker.close()
        await database.aclose()

    assert len(attempts) == 4


async def test_run_recovers_from_killed_connection(mysql_server, mysql_database, autojump_clock):
    import MySQLdb

    def connection_id(cursor):
        cursor.execute("SELECT CONNECTION_ID()")
        return cursor.fetchone()[0]

    def kill(victim):
        admin = MySQLdb.connect(host=mysql_server.host, port=mysql_server.port,
                                user=mysql_server.user, password=mysql_server.password)
        try:
            admin.cursor().execute("KILL CONNECTION %s", (victim,))
        finally:
            admin.close()

    victim = await mysql_database.run("id", connection_id)
    await trio.to_thread.run_sync(kill, victim)

    replacement = await mysql_database.run("id", connection_id)

    assert replacement != victim


async def test_run_after_aclose_raises_storage_unavailable(tmp_path):
    database = await open_sqlite(MASTER, str(tmp_path / "closed.db"))
    await database.aclose()

    with pytest.raises(StorageUnavailable, match="closed"):
        await database.run("late", lambda cursor: None)


async def test_insert_ignore_sql_skips_duplicate(database):
    def insert_twice(cursor):
        sql = cursor.insert_ignore_sql("IMRelationShip", ["smallId", "bigId", "status", "created", "updated"])
        cursor.execute(sql, (1, 2, 0, 5, 5))
        first = cursor.rowcount
        cursor.execute(sql, (1, 2, 0, 6, 6))
        return first, cursor.rowcount, _count(cursor, "IMRelationShip")

    assert await database.run("insert_ignore", insert_twice) == (1, 0, 1)


def test_insert_ignore_sql_rejects_bad_identifier():
    from teamtalk.storage.database import Cursor

    with pytest.raises(ValueError, match="invalid SQL identifier"):
        Cursor(None, "sqlite").insert_ignore_sql("IMUser; DROP TABLE IMUser", ["id"])


async def test_rowcount_counts_matched_rows_on_update(database):
    await departs.add_depart(database, "Same")

    def update_same(cursor):
        cursor.execute("UPDATE IMDepart SET priority = %s WHERE departName = %s", (0, "Same"))
        return cursor.rowcount

    assert await database.run("update", update_same) == 1


# ---------------------------------------------------------------------------
# Opening databases


async def test_open_mysql_closed_port_names_host_and_port(closed_port):
    with pytest.raises(StorageUnavailable) as caught:
        await open_mysql(MASTER, "127.0.0.1", closed_port, "root", "secret-pw", "teamtalk", 2)

    assert f"127.0.0.1:{closed_port}" in str(caught.value)
    assert "secret-pw" not in str(caught.value)


async def test_open_mysql_wrong_password(mysql_server):
    with pytest.raises(StorageUnavailable) as caught:
        await open_mysql(MASTER, mysql_server.host, mysql_server.port, "nobody", "wrong-pw", "mysql", 2)

    assert f"{mysql_server.host}:{mysql_server.port}" in str(caught.value)
    assert "wrong-pw" not in str(caught.value)


async def test_open_sqlite_missing_directory(tmp_path):
    path = tmp_path / "missing" / "teamtalk.db"

    with pytest.raises(StorageUnavailable, match="cannot open SQLite database"):
        await open_sqlite(MASTER, str(path))


async def test_database_attributes(mysql_server, mysql_database, tmp_path):
    dbname = mysql_database.description.rsplit("/", 1)[1]
    sqlite_path = str(tmp_path / "attributes.db")
    sqlite_database = await open_sqlite("teamtalk_slave", sqlite_path)
    await sqlite_database.aclose()

    assert mysql_database.dialect == "mysql"
    assert mysql_database.name == MASTER
    assert mysql_database.description == f"{mysql_server.host}:{mysql_server.port}/{dbname}"
    assert sqlite_database.dialect == "sqlite"
    assert sqlite_database.name == "teamtalk_slave"
    assert sqlite_database.description == sqlite_path


# ---------------------------------------------------------------------------
# Storage bundles


async def test_open_embedded_storage_creates_directory(tmp_path):
    data_dir = tmp_path / "a" / "b"

    storage = await open_embedded_storage(data_dir)
    try:
        assert storage.master is storage.slave
        assert storage.shards.databases() == [storage.master]
        assert (data_dir / "teamtalk.db").exists()
        assert storage.caches.names() == sorted(["unread", "group_set", "token", "sync", "group_member"])
    finally:
        await storage.aclose()


async def test_open_embedded_storage_keeps_caches_across_reopen(tmp_path):
    storage = await open_embedded_storage(tmp_path)
    await storage.caches.get("unread").hincrby("unread_2", "1", 3)
    await storage.aclose()

    reopened = await open_embedded_storage(tmp_path)
    try:
        assert await reopened.caches.get("unread").hget("unread_2", "1") == "3"
        assert await reopened.caches.get("token").hget("unread_2", "1") is None
    finally:
        await reopened.aclose()


async def test_storage_works_on_both_backends(storage):
    user_id = await users.add_user(storage.master, "carol", "pw")
    count = await storage.caches.get("unread").hincrby(f"unread_{user_id}", "7", 1)

    assert await users.validate_user(storage.slave, "carol", users.hash_client_password("pw")) is not None
    assert count == 1
    assert storage.shards.database_for_relation(user_id) is storage.master


async def test_open_storage_requires_master():
    with pytest.raises(ValueError, match="teamtalk_master"):
        await open_storage({SLAVE: DatabaseEndpoint("127.0.0.1", 1, "x", "u", "p", 1)}, {})


async def test_open_storage_rejects_unknown_shard_instance():
    endpoint = DatabaseEndpoint("127.0.0.1", 1, "x", "u", "p", 1)

    with pytest.raises(ValueError, match="shard 3"):
        await open_storage({MASTER: endpoint}, {}, shard_instances={3: "teamtalk_other"})


async def test_open_storage_unreachable_mysql(closed_port):
    endpoint = DatabaseEndpoint("127.0.0.1", closed_port, "teamtalk", "root", "", 1)

    with pytest.raises(StorageUnavailable, match=f"127.0.0.1:{closed_port}"):
        await open_storage({MASTER: endpoint}, {})


async def test_open_storage_unreachable_redis(mysql_server, mysql_database, closed_port):
    dbname = mysql_database.description.rsplit("/", 1)[1]
    endpoint = mysql_server.endpoint(dbname)
    caches = {"unread": ("127.0.0.1", closed_port, 1, None, 2)}

    with pytest.raises(StorageUnavailable, match=f"127.0.0.1:{closed_port}"):
        await open_storage({MASTER: endpoint}, caches)


async def test_open_storage_spreads_shards(mysql_server, mysql_database):
    dbname = mysql_database.description.rsplit("/", 1)[1]
    endpoint = mysql_server.endpoint(dbname)
    storage = await open_storage(
        {MASTER: endpoint, "teamtalk_shard2": endpoint}, {}, shard_instances={4: "teamtalk_shard2"}
    )
    try:
        assert storage.shards.database_for_relation(12).name == "teamtalk_shard2"
        assert storage.shards.database_for_group(5).name == MASTER
        assert len(storage.shards.databases()) == 2
    finally:
        await storage.aclose()


# ---------------------------------------------------------------------------
# Shards


def test_shards_table_names():
    assert shards.message_table(17) == "IMMessage_1"
    assert shards.group_message_table(8) == "IMGroupMessage_0"
    assert shards.message_tables()[-1] == "IMMessage_7"
    assert len(shards.group_message_tables()) == SHARD_COUNT


def test_shards_negative_id_rejected():
    with pytest.raises(ValueError):
        shards.message_table(-1)


async def test_shard_map_overrides(tmp_path):
    first = await open_sqlite("first", str(tmp_path / "1.db"))
    second = await open_sqlite("second", str(tmp_path / "2.db"))
    try:
        shard_map = ShardMap(first, {3: second})

        assert shard_map.database_for_relation(11) is second
        assert shard_map.database_for_group(3) is second
        assert shard_map.database_for_relation(4) is first
        assert shard_map.databases() == [first, second]
        with pytest.raises(ValueError, match="out of range"):
            ShardMap(first, {8: second})
    finally:
        await first.aclose()
        await second.aclose()


# ---------------------------------------------------------------------------
# Users


async def test_add_user_then_validate(database):
    user_id = await users.add_user(database, "alice", "secret", nick="Al", depart_id=2, email="a@example.com")

    row = await users.validate_user(database, "alice", users.hash_client_password("secret"))

    assert row is not None
    assert row.id == user_id
    assert row.nick == "Al"
    assert row.depart_id == 2
    assert row.status == users.STATUS_ACTIVE


async def test_add_user_stores_salted_md5(database):
    await users.add_user(database, "alice", "secret")

    row = await users.get_user_by_name(database, "alice")
    client_password = hashlib.md5(b"secret").hexdigest()

    assert len(row.salt) == 4
    assert row.salt.isdigit()
    assert row.password == hashlib.md5((client_password + row.salt).encode()).hexdigest()
    assert "secret" not in repr(row)
    assert row.password not in repr(row)


async def test_validate_user_wrong_password(database):
    await users.add_user(database, "alice", "secret")

    assert await users.validate_user(database, "alice", users.hash_client_password("Secret")) is None
    assert await users.validate_user(database, "alice", "secret") is None
    assert await users.validate_user(database, "alice", "") is None


async def test_validate_user_unknown_name(database):
    assert await users.validate_user(database, "nobody", users.hash_client_password("x")) is None
    assert await users.validate_user(database, "", users.hash_client_password("x")) is None


async def test_validate_user_disabled(database):
    await users.add_user(database, "alice", "secret")
    client_password = users.hash_client_password("secret")

    await users.set_user_status(database, "alice", users.STATUS_DISABLED)
    disabled = await users.validate_user(database, "alice", client_password)
    await users.set_user_status(database, "alice", users.STATUS_ACTIVE)
    enabled = await users.validate_user(database, "alice", client_password)

    assert disabled is None
    assert enabled is not None


async def test_validate_user_injection_name_is_literal(database):
    await users.add_user(database, "alice", "alice-pw")
    injected_id = await users.add_user(database, INJECTION_NAME, "inject-pw")

    found = await users.validate_user(database, INJECTION_NAME, users.hash_client_password("inject-pw"))
    alice_via_injection = await users.validate_user(
        database, "alice' or '1'='1", users.hash_client_password("alice-pw")
    )
    alice_pw_on_injected = await users.validate_user(
        database, INJECTION_NAME, users.hash_client_password("alice-pw")
    )

    assert found is not None
    assert found.id == injected_id
    assert found.name == INJECTION_NAME
    assert alice_via_injection is None
    assert alice_pw_on_injected is None


async def test_add_user_emoji_nick_round_trip(database):
    nick = "小猫😀🎉"
    sign = "签名 ✨ with emoji 🐱"
    await users.add_user(database, "emoji", "pw", nick=nick, sign_info=sign)

    row = await users.get_user_by_name(database, "emoji")

    assert row.nick == nick
    assert row.sign_info == sign


async def test_add_user_duplicate_name(database):
    await users.add_user(database, "alice", "one")
    await users.set_user_status(database, "alice", users.STATUS_DISABLED)

    with pytest.raises(users.AlreadyExists, match="alice"):
        await users.add_user(database, "alice", "two")

    assert len(await users.list_users(database)) == 1


@pytest.mark.parametrize(("existing", "new"), [
    ("alice", "Alice"),
    ("Alice", "ALICE"),
    ("émile", "Émile"),
    ("Жанна", "жанна"),
])
async def test_add_user_name_differing_in_case(database, existing, new):
    existing_id = await users.add_user(database, existing, "one")

    with pytest.raises(users.AlreadyExists) as info:
        await users.add_user(database, new, "two")

    message = str(info.value)
    assert repr(existing) in message
    assert f"id {existing_id}" in message
    assert repr(new) in message
    assert "letter case" in message
    assert [row.name for row in await users.list_users(database)] == [existing]


async def test_add_user_case_check_spares_other_names(database):
    await users.add_user(database, "alice", "pw")

    for name in ("alice2", "Alicia", "张三", "Émile", "emile"):
        await users.add_user(database, name, "pw")

    names = [row.name for row in await users.list_users(database)]
    assert names == ["alice", "alice2", "Alicia", "张三", "Émile", "emile"]


async def test_add_user_concurrent_same_name_creates_one(database):
    outcomes = []

    async def add():
        try:
            outcomes.append(await users.add_user(database, "twin", "pw"))
        except users.AlreadyExists:
            outcomes.append("exists")

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(add)

    assert outcomes.count("exists") == 3
    assert len(await users.list_users(database)) == 1


@pytest.mark.parametrize(
    ("name", "password", "options", "message"),
    [
        ("", "pw", {}, "name must not be empty"),
        ("alice", "", {}, "password must not be empty"),
        ("a" * 33, "pw", {}, "at most 32"),
        ("alice", "pw", {"phone": "1" * 12}, "phone"),
        ("alice", "pw", {"sex": 3}, "sex"),
        ("alice", "pw", {"depart_id": -1}, "department"),
        ("alice", "pw", {"real_name": "Alice Smith"}, "real name"),
    ],
)
async def test_add_user_rejects_bad_input(database, name, password, options, message):
    with pytest.raises(ValueError, match=message):
        await users.add_user(database, name, password, **options)

    assert await users.list_users(database) == []


async def test_set_password_replaces_old(database):
    await users.add_user(database, "alice", "old")

    await users.set_password(database, "alice", "new")

    assert await users.validate_user(database, "alice", users.hash_client_password("old")) is None
    assert await users.validate_user(database, "alice", users.hash_client_password("new")) is not None


async def test_set_password_unknown_user(database):
    with pytest.raises(users.NotFound, match="nobody"):
        await users.set_password(database, "nobody", "pw")


async def test_set_password_empty(database):
    await users.add_user(database, "alice", "old")

    with pytest.raises(ValueError):
        await users.set_password(database, "alice", "")


async def test_set_user_status_unknown_user(database):
    with pytest.raises(users.NotFound):
        await users.set_user_status(database, "nobody", users.STATUS_DISABLED)


async def test_get_users_by_ids(database):
    first = await users.add_user(database, "a", "pw")
    second = await users.add_user(database, "b", "pw")

    rows = await users.get_users(database, [second, 999, first, second])

    assert [row.id for row in rows] == [first, second]
    assert await users.get_users(database, []) == []


async def test_list_users_includes_disabled(database):
    await users.add_user(database, "a", "pw")
    await users.add_user(database, "b", "pw")
    await users.set_user_status(database, "b", users.STATUS_DISABLED)

    rows = await users.list_users(database)

    assert [(row.name, row.status) for row in rows] == [("a", 0), ("b", users.STATUS_DISABLED)]


async def test_user_info_fields_build_user_info(database):
    await users.add_user(database, "alice", "pw", nick="Al", sex=2, phone="123", domain="alice")
    row = await users.get_user_by_name(database, "alice")

    info = IM_BaseDefine.UserInfo(**users.user_info_fields(row))

    assert info.user_id == row.id
    assert info.user_real_name == "alice"
    assert info.user_gender == 2
    assert info.user_tel == "123"
    assert info.IsInitialized()


# ---------------------------------------------------------------------------
# Departments


async def test_add_depart_and_list(database):
    root = await departs.add_depart(database, "研发部", priority=2)
    child = await departs.add_depart(database, "Backend", parent_id=root)

    rows = await departs.list_departs(database)

    assert [(row.id, row.name, row.parent_id, row.priority) for row in rows] == [
        (root, "研发部", 0, 2),
        (child, "Backend", root, 0),
    ]


async def test_add_depart_duplicate_under_same_parent(database):
    await departs.add_depart(database, "Sales")

    with pytest.raises(users.AlreadyExists):
        await departs.add_depart(database, "Sales")


async def test_add_depart_unknown_parent(database):
    with pytest.raises(users.NotFound, match="42"):
        await departs.add_depart(database, "Orphan", parent_id=42)


@pytest.mark.parametrize(("name", "options"), [("", {}), ("x" * 65, {}), ("ok", {"priority": -1})])
async def test_add_depart_rejects_bad_input(database, name, options):
    with pytest.raises(ValueError):
        await departs.add_depart(database, name, **options)


async def test_get_departs_changed_since(database):
    await departs.add_depart(database, "Old")

    def age(cursor):
        cursor.execute("UPDATE IMDepart SET updated = %s", (100,))

    await database.run("age", age)
    new_id = await departs.add_depart(database, "New")

    changed = await departs.get_departs_changed_since(database, 100)
    everything = await departs.get_departs_changed_since(database, 0)

    assert [row.id for row in changed] == [new_id]
    assert len(everything) == 2


async def test_depart_info_fields_build_depart_info(database):
    depart_id = await departs.add_depart(database, "Ops", priority=3)
    row = await departs.get_depart(database, depart_id)

    info = IM_BaseDefine.DepartInfo(**departs.depart_info_fields(row))

    assert info.dept_id == depart_id
    assert info.dept_name == "Ops"
    assert info.IsInitialized()
    assert await departs.get_depart(database, depart_id + 1) is None
