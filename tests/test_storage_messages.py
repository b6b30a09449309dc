"""Single-chat message storage on both backends: rows, msg_ids, sessions, unread counts."""

from __future__ import annotations

import pytest

from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.storage import init_db
from teamtalk.storage.messages import (
    MessageStore,
    NewMessage,
    clear_unread,
    get_latest_msg_id,
    get_messages,
    get_messages_by_id,
    get_unread_counts,
    msg_id_key,
)
from teamtalk.storage.relations import count_relations, get_relation_id
from teamtalk.storage.sessions import get_recent_sessions, get_sessions
from teamtalk.storage.shards import message_table

ALICE = 1001
BOB = 1002
CAROL = 1003
NOW = 1_700_000_000


def text(from_id: int, to_id: int, content: bytes = b"hello", msg_type: int = BD.MSG_TYPE_SINGLE_TEXT):
    return NewMessage(from_id=from_id, to_id=to_id, msg_type=msg_type, content=content, create_time=NOW)


async def stored_msg_ids(storage, relate_id: int) -> list[int]:
    messages = await get_messages(storage.shards, relate_id, 0, 100)
    return sorted(message.msg_id for message in messages)


async def count_rows(storage, relate_id: int) -> int:
    def query(cursor):
        cursor.execute(f"SELECT COUNT(*) FROM {message_table(relate_id)} WHERE relateId=%s", (relate_id,))
        return cursor.fetchone()[0]

    return await storage.shards.database_for_relation(relate_id).run("count_rows", query)


async def test_store_relation_created_once(storage):
    store = MessageStore.from_storage(storage)
    await store.store_messages([text(ALICE, BOB), text(BOB, ALICE), text(ALICE, BOB)])
    await store.store_messages([text(BOB, ALICE)])
    restarted = MessageStore.from_storage(storage)
    await restarted.store_messages([text(ALICE, BOB)])

    assert await count_relations(storage.master, ALICE, BOB) == 1
    assert await get_relation_id(storage.master, BOB, ALICE) == await get_relation_id(storage.master, ALICE, BOB)


async def test_store_sessions_created_once(storage):
    store = MessageStore.from_storage(storage)
    await store.store_messages([text(ALICE, BOB), text(BOB, ALICE)])
    await MessageStore.from_storage(storage).store_messages([text(BOB, ALICE)])

    alice_sessions = await get_sessions(storage.master, ALICE, BOB, BD.SESSION_TYPE_SINGLE)
    bob_sessions = await get_sessions(storage.master, BOB, ALICE, BD.SESSION_TYPE_SINGLE)
    assert len(alice_sessions) == 1
    assert len(bob_sessions) == 1
    assert alice_sessions[0].status == 0
    assert bob_sessions[0].status == 0


async def test_store_msg_ids_continuous(storage):
    store = MessageStore.from_storage(storage)
    batches = [
        [text(ALICE, BOB)],
        [text(BOB, ALICE), text(ALICE, BOB), text(ALICE, CAROL), text(BOB, ALICE)],
        [text(ALICE, BOB) for _ in range(7)],
    ]
    handed_out = []
    for batch in batches:
        await store.store_messages(batch, now=NOW)
        handed_out += [message.msg_id for message in batch if message.to_id != CAROL and message.from_id != CAROL]

    relate_id = await get_relation_id(storage.master, ALICE, BOB)
    assert handed_out == list(range(1, 12))
    assert await stored_msg_ids(storage, relate_id) == list(range(1, 12))
    assert batches[1][2].msg_id == 1  # Alice -> Carol is a conversation of its own


async def test_store_msg_ids_follow_list_order(storage):
    store = MessageStore.from_storage(storage)
    batch = [text(ALICE if i % 3 else BOB, BOB if i % 3 else ALICE, b"m%d" % i) for i in range(30)]
    await store.store_messages(batch)

    assert [message.msg_id for message in batch] == list(range(1, 31))


async def test_store_recovers_after_cache_key_deleted(storage):
    store = MessageStore.from_storage(storage)
    await store.store_messages([text(ALICE, BOB) for _ in range(5)])
    relate_id = await get_relation_id(storage.master, ALICE, BOB)
    cache = storage.caches.get("unread")
    await cache.delete(msg_id_key(relate_id))

    restarted = MessageStore.from_storage(storage)
    batch = [text(BOB, ALICE) for _ in range(3)]
    await restarted.store_messages(batch)

    assert [message.msg_id for message in batch] == [6, 7, 8]
    assert await stored_msg_ids(storage, relate_id) == list(range(1, 9))
    assert await cache.get(msg_id_key(relate_id)) == "8"


async def test_store_recovers_flush_mid_conversation(storage):
    store = MessageStore.from_storage(storage)
    await store.store_messages([text(ALICE, BOB) for _ in range(5)])
    relate_id = await get_relation_id(storage.master, ALICE, BOB)
    cache = storage.caches.get("unread")
    await cache.delete(msg_id_key(relate_id))

    batch = [text(ALICE, BOB), text(BOB, ALICE)]
    await store.store_messages(batch)

    assert [message.msg_id for message in batch] == [6, 7]
    assert await stored_msg_ids(storage, relate_id) == list(range(1, 8))


async def test_store_recovers_counter_set_back(storage):
    # A counter restored from an old snapshot sits below ids already used.
    store = MessageStore.from_storage(storage)
    await store.store_messages([text(ALICE, BOB) for _ in range(5)])
    relate_id = await get_relation_id(storage.master, ALICE, BOB)
    cache = storage.caches.get("unread")
    await cache.set(msg_id_key(relate_id), 2)

    message = text(BOB, ALICE)
    await store.store_messages([message])

    assert message.msg_id == 6
    assert await stored_msg_ids(storage, relate_id) == list(range(1, 7))


async def test_store_recovers_counter_set_back_after_restart(storage):
    await MessageStore.from_storage(storage).store_messages([text(ALICE, BOB) for _ in range(4)])
    relate_id = await get_relation_id(storage.master, ALICE, BOB)
    await storage.caches.get("unread").set(msg_id_key(relate_id), 1)

    message = text(ALICE, BOB)
    await MessageStore.from_storage(storage).store_messages([message])

    assert message.msg_id == 5


async def test_store_queries_list_by_id_latest(storage):
    store = MessageStore.from_storage(storage)
    await store.store_messages([text(ALICE if i % 2 else BOB, BOB if i % 2 else ALICE, b"m%d" % i)
                                for i in range(1, 11)])
    relate_id = await get_relation_id(storage.master, ALICE, BOB)

    newest = await get_messages(storage.shards, relate_id, 0, 3)
    middle = await get_messages(storage.shards, relate_id, 5, 3)
    oldest = await get_messages(storage.shards, relate_id, 2, 10)
    by_id = await get_messages_by_id(storage.shards, relate_id, [1, 3, 99, 3])

    assert [message.msg_id for message in newest] == [10, 9, 8]
    assert [message.msg_id for message in middle] == [5, 4, 3]
    assert [message.msg_id for message in oldest] == [2, 1]
    assert [message.msg_id for message in by_id] == [3, 1]
    assert by_id[0].content == b"m3"
    assert by_id[0].from_id == ALICE
    assert by_id[1].from_id == ALICE
    assert newest[0].from_id == BOB
    assert newest[0].created == NOW
    assert newest[0].msg_type == BD.MSG_TYPE_SINGLE_TEXT
    assert await get_latest_msg_id(storage.shards, relate_id) == 10


async def test_store_queries_bad_input(storage):
    store = MessageStore.from_storage(storage)
    await store.store_messages([text(ALICE, BOB)])
    relate_id = await get_relation_id(storage.master, ALICE, BOB)

    assert await get_messages(storage.shards, relate_id, 0, 0) == []
    assert await get_messages_by_id(storage.shards, relate_id, []) == []
    assert await get_latest_msg_id(storage.shards, relate_id + 999) == 0
    assert await get_relation_id(storage.master, ALICE, CAROL) is None


async def test_store_list_count_capped(storage):
    store = MessageStore.from_storage(storage)
    await store.store_messages([text(ALICE, BOB) for _ in range(120)])
    relate_id = await get_relation_id(storage.master, ALICE, BOB)

    messages = await get_messages(storage.shards, relate_id, 0, 1000)

    assert len(messages) == 100
    assert messages[0].msg_id == 120


async def test_store_emoji_and_max_length_round_trip(storage):
    store = MessageStore.from_storage(storage)
    emoji = "😀".encode() * 1024
    chinese = "你好，世界 🎉".encode()
    batch = [text(ALICE, BOB, emoji), text(BOB, ALICE, chinese)]
    await store.store_messages(batch)
    relate_id = await get_relation_id(storage.master, ALICE, BOB)

    stored = await get_messages_by_id(storage.shards, relate_id, [1, 2])

    assert len(emoji) == 4096
    assert [message.error for message in batch] == ["", ""]
    assert stored[1].content == emoji
    assert stored[0].content == chinese


async def test_store_rejects_too_long(storage):
    store = MessageStore.from_storage(storage)
    message = text(ALICE, BOB, b"x" * 4097)
    await store.store_messages([message])

    assert message.msg_id == 0
    assert "4097" in message.error
    assert await count_relations(storage.master, ALICE, BOB) == 0
    assert await get_sessions(storage.master, ALICE, BOB, BD.SESSION_TYPE_SINGLE) == []
    assert await get_unread_counts(storage.caches.get("unread"), BOB) == {}


async def test_store_rejects_too_long_next_to_valid(storage):
    store = MessageStore.from_storage(storage)
    batch = [text(ALICE, BOB), text(ALICE, BOB, b"x" * 4097), text(ALICE, BOB)]
    await store.store_messages(batch)
    relate_id = await get_relation_id(storage.master, ALICE, BOB)

    assert [message.msg_id for message in batch] == [1, 0, 2]
    assert await count_rows(storage, relate_id) == 2


@pytest.mark.parametrize(
    "message, reason",
    [
        (text(ALICE, BOB, b""), "empty"),
        (text(ALICE, ALICE), "itself"),
        (text(0, BOB), "invalid user id"),
        (text(ALICE, BOB, msg_type=BD.MSG_TYPE_GROUP_TEXT), "not a single-chat type"),
        (text(ALICE, BOB, b"\xff\xfe"), "UTF-8"),
    ],
    ids=["empty", "to_self", "no_sender", "group_type", "not_utf8"],
)
async def test_store_rejects_invalid(storage, message, reason):
    store = MessageStore.from_storage(storage)
    await store.store_messages([message])

    assert message.msg_id == 0
    assert reason in message.error
    assert await count_relations(storage.master, message.from_id, message.to_id) == 0


async def test_store_bumps_unread_counts(storage):
    store = MessageStore.from_storage(storage)
    cache = storage.caches.get("unread")
    await store.store_messages([text(ALICE, BOB), text(ALICE, BOB), text(CAROL, BOB), text(BOB, ALICE)])
    await store.store_messages([text(ALICE, BOB)])

    assert await get_unread_counts(cache, BOB) == {ALICE: 3, CAROL: 1}
    assert await get_unread_counts(cache, ALICE) == {BOB: 1}
    assert await cache.hget(f"unread_{BOB}", str(ALICE)) == "3"

    await clear_unread(cache, BOB, ALICE)

    assert await get_unread_counts(cache, BOB) == {CAROL: 1}


async def test_store_unread_ignores_bad_fields(storage):
    cache = storage.caches.get("unread")
    await cache.hmset(f"unread_{BOB}", {"x": "1", str(ALICE): "zero", str(CAROL): "0", "7": "2"})

    assert await get_unread_counts(cache, BOB) == {7: 2}


async def test_store_updates_recent_sessions(storage):
    store = MessageStore.from_storage(storage)
    await store.store_messages([text(ALICE, BOB)], now=NOW)
    await store.store_messages([text(CAROL, ALICE)], now=NOW + 10)

    sessions = await get_recent_sessions(storage.master, ALICE, 0)
    later = await get_recent_sessions(storage.master, ALICE, NOW)

    assert [(session.peer_id, session.updated) for session in sessions] == [(CAROL, NOW + 10), (BOB, NOW)]
    assert [session.peer_id for session in later] == [CAROL]


async def test_store_revives_removed_session(storage):
    store = MessageStore.from_storage(storage)
    await store.store_messages([text(ALICE, BOB)], now=NOW)

    def remove(cursor):
        cursor.execute("UPDATE IMRecentSession SET status=1 WHERE userId=%s AND peerId=%s", (BOB, ALICE))

    await storage.master.run("remove_session", remove)
    assert await get_recent_sessions(storage.master, BOB, 0) == []

    await store.store_messages([text(ALICE, BOB)], now=NOW + 1)

    sessions = await get_recent_sessions(storage.master, BOB, 0)
    assert [(session.peer_id, session.status) for session in sessions] == [(ALICE, 0)]


async def test_store_insert_failure_gives_msg_ids_back(storage):
    store = MessageStore.from_storage(storage)
    await store.store_messages([text(ALICE, BOB), text(ALICE, BOB)])
    relate_id = await get_relation_id(storage.master, ALICE, BOB)
    table = message_table(relate_id)
    db = storage.shards.database_for_relation(relate_id)

    def drop(cursor):
        cursor.execute(f"DROP TABLE {table}")

    await db.run("drop_table", drop)
    failed = [text(ALICE, BOB), text(BOB, ALICE)]
    await store.store_messages(failed)
    await init_db(db)
    after = text(BOB, ALICE)
    await store.store_messages([after])

    assert [message.msg_id for message in failed] == [0, 0]
    assert all("insert failed" in message.error for message in failed)
    assert after.msg_id == 3
    assert await get_unread_counts(storage.caches.get("unread"), ALICE) == {BOB: 1}
    # The counters bumped alongside the failed insert were taken back.
    assert await get_unread_counts(storage.caches.get("unread"), BOB) == {ALICE: 2}
