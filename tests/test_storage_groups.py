"""Group storage on both backends: groups, members, group messages, counters, contacts and push settings."""

from __future__ import annotations

import pytest
import trio

from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.storage import buddies, departs, settings
from teamtalk.storage.group_messages import (
    GroupMessageStore,
    NewGroupMessage,
    get_group_max_msg_ids,
    get_group_messages,
    get_group_messages_by_id,
    get_latest_group_messages,
)
from teamtalk.storage.groups import (
    CHANGE_DENIED,
    CHANGE_EMPTY,
    CHANGE_NO_GROUP,
    CHANGE_NOTHING_TO_ADD,
    CHANGE_OK,
    GroupDirectory,
    change_members,
    create_group,
    get_group_unread_counts,
    get_shield_statuses,
    get_snapshots,
    get_user_groups,
    group_count_key,
    group_member_key,
    group_msg_id_key,
    mark_groups_read,
    publish_member_change,
    publish_new_group,
    set_shield_status,
    sync_member_hashes,
    user_group_count_key,
)
from teamtalk.storage.messages import MessageStore, NewMessage, get_unread_counts
from teamtalk.storage.sessions import get_sessions
from teamtalk.storage.users import add_user, get_users, set_user_status

NOW = 1_700_000_000
ADD = BD.GROUP_MODIFY_TYPE_ADD
DEL = BD.GROUP_MODIFY_TYPE_DEL


@pytest.fixture
async def people(storage) -> dict[str, int]:
    return {name: await add_user(storage.master, name, "secret") for name in ("alice", "bob", "carol", "dave")}


async def new_group(storage, people, members=("alice", "bob", "carol"), creator="alice",
                    group_type=BD.GROUP_TYPE_TMP, name="team"):
    snapshot = await create_group(storage.master, name, people[creator], [people[m] for m in members],
                                  group_type=group_type, now=NOW - 100)
    await publish_new_group(storage.caches, snapshot)
    return snapshot


def group_text(from_id: int, group_id: int, content: bytes = b"hi", create_time: int = NOW) -> NewGroupMessage:
    return NewGroupMessage(from_id=from_id, group_id=group_id, msg_type=BD.MSG_TYPE_GROUP_TEXT,
                           content=content, create_time=create_time)


def store_for(storage) -> GroupMessageStore:
    return GroupMessageStore.from_storage(storage, GroupDirectory.from_storage(storage))


async def stored_ids(storage, group_id: int) -> list[int]:
    return sorted(message.msg_id for message in await get_group_messages(storage.shards, group_id, 0, 100))


# Creating groups


async def test_create_group_stores_members(storage, people):
    snapshot = await new_group(storage, people)
    stored = (await get_snapshots(storage.master, [snapshot.group.id]))[snapshot.group.id]

    assert stored.group.version == 1
    assert stored.group.group_type == BD.GROUP_TYPE_TMP
    assert stored.group.creator == people["alice"]
    assert stored.group.user_cnt == 3
    assert stored.usable
    assert stored.member_ids() == sorted(people[name] for name in ("alice", "bob", "carol"))
    assert set(stored.members.values()) == {NOW - 100}


async def test_create_group_publishes_caches(storage, people):
    snapshot = await new_group(storage, people)
    group_id = snapshot.group.id

    members = await storage.caches.get("group_member").hgetall(group_member_key(group_id))
    assert members == {str(people[name]): str(NOW - 100) for name in ("alice", "bob", "carol")}
    assert await storage.caches.get("unread").get(group_msg_id_key(group_id)) == "0"


async def test_create_group_drops_unknown_users(storage, people):
    snapshot = await create_group(storage.master, "g", people["alice"], [people["alice"], 999_999, 0])

    assert snapshot.member_ids() == [people["alice"]]


@pytest.mark.parametrize(
    "name, members, group_type, reason",
    [
        ("", [1], BD.GROUP_TYPE_TMP, "name must not be empty"),
        ("x" * 257, [1], BD.GROUP_TYPE_TMP, "at most 256"),
        ("g", [], BD.GROUP_TYPE_TMP, "at least one member"),
        ("g", [999_999], BD.GROUP_TYPE_TMP, "existing user"),
        ("g", [1], 7, "group type"),
    ],
    ids=["empty_name", "long_name", "no_members", "unknown_members", "bad_type"],
)
async def test_create_group_rejects(storage, people, name, members, group_type, reason):
    with pytest.raises(ValueError, match=reason):
        await create_group(storage.master, name, people["alice"], members, group_type=group_type)

    assert await get_user_groups(storage.master, people["alice"]) == []


async def test_user_groups_by_type(storage, people):
    temporary = await new_group(storage, people)
    normal = await new_group(storage, people, group_type=BD.GROUP_TYPE_NORMAL, name="fixed")

    assert await get_user_groups(storage.master, people["bob"], BD.GROUP_TYPE_NORMAL) == [(normal.group.id, 1)]
    assert {group_id for group_id, _ in await get_user_groups(storage.master, people["bob"])} == {
        temporary.group.id, normal.group.id}
    assert await get_user_groups(storage.master, people["dave"]) == []


# Changing members


async def test_change_add_bumps_version(storage, people):
    snapshot = await new_group(storage, people)
    change = await change_members(storage.master, snapshot.group.id, people["bob"], ADD, [people["dave"]])

    assert change.outcome == CHANGE_OK
    assert change.changed == [people["dave"]]
    assert change.snapshot.group.version == 2
    assert people["dave"] in change.snapshot.members
    stored = (await get_snapshots(storage.master, [snapshot.group.id]))[snapshot.group.id]
    assert stored.group.version == 2
    assert stored.group.user_cnt == 4
    assert stored.members == change.snapshot.members


async def test_change_add_existing_only_fails(storage, people):
    snapshot = await new_group(storage, people)
    change = await change_members(storage.master, snapshot.group.id, people["alice"], ADD,
                                  [people["bob"], people["carol"]])

    assert change.outcome == CHANGE_NOTHING_TO_ADD
    stored = (await get_snapshots(storage.master, [snapshot.group.id]))[snapshot.group.id]
    assert stored.group.version == 1
    assert stored.members == snapshot.members


async def test_change_add_mixed_adds_new_only(storage, people):
    snapshot = await new_group(storage, people)
    change = await change_members(storage.master, snapshot.group.id, people["alice"], ADD,
                                  [people["bob"], people["dave"], 999_999])

    assert change.outcome == CHANGE_OK
    assert change.changed == [people["dave"]]


async def test_change_remove_non_member_changes_nothing(storage, people):
    snapshot = await new_group(storage, people)
    change = await change_members(storage.master, snapshot.group.id, people["alice"], DEL, [people["dave"]])

    assert change.outcome == CHANGE_OK
    assert change.changed == []
    stored = (await get_snapshots(storage.master, [snapshot.group.id]))[snapshot.group.id]
    assert stored.group.version == 1
    assert stored.members == snapshot.members


async def test_change_remove_marks_session_removed(storage, people):
    snapshot = await new_group(storage, people)
    group_id = snapshot.group.id
    await store_for(storage).store_messages([group_text(people["bob"], group_id)], now=NOW)
    change = await change_members(storage.master, group_id, people["alice"], DEL, [people["bob"]])

    assert change.outcome == CHANGE_OK
    assert change.changed == [people["bob"]]
    assert change.snapshot.group.version == 2
    assert people["bob"] not in change.snapshot.members
    [bob_session] = await get_sessions(storage.master, people["bob"], group_id, BD.SESSION_TYPE_GROUP)
    [carol_session] = await get_sessions(storage.master, people["carol"], group_id, BD.SESSION_TYPE_GROUP)
    assert bob_session.status == 1
    assert carol_session.status == 0


async def test_change_readd_reuses_row(storage, people):
    snapshot = await new_group(storage, people)
    group_id = snapshot.group.id
    await change_members(storage.master, group_id, people["alice"], DEL, [people["bob"]], now=NOW)
    change = await change_members(storage.master, group_id, people["alice"], ADD, [people["bob"]], now=NOW + 5)

    def count_rows(cursor):
        cursor.execute("SELECT COUNT(*) FROM IMGroupMember WHERE groupId=%s AND userId=%s",
                       (group_id, people["bob"]))
        return cursor.fetchone()[0]

    assert change.outcome == CHANGE_OK
    assert change.snapshot.members[people["bob"]] == NOW + 5
    assert change.snapshot.group.version == 3
    assert await storage.master.run("count_rows", count_rows) == 1


@pytest.mark.parametrize(
    "group_type, actor, change_type, target, outcome",
    [
        (BD.GROUP_TYPE_TMP, "bob", ADD, "dave", CHANGE_OK),
        (BD.GROUP_TYPE_TMP, "dave", ADD, "dave", CHANGE_DENIED),
        (BD.GROUP_TYPE_TMP, "bob", DEL, "carol", CHANGE_DENIED),
        (BD.GROUP_TYPE_TMP, "bob", DEL, "bob", CHANGE_DENIED),
        (BD.GROUP_TYPE_TMP, "alice", DEL, "carol", CHANGE_OK),
        (BD.GROUP_TYPE_NORMAL, "bob", ADD, "dave", CHANGE_DENIED),
        (BD.GROUP_TYPE_NORMAL, "alice", ADD, "dave", CHANGE_OK),
        (BD.GROUP_TYPE_NORMAL, "server", DEL, "bob", CHANGE_OK),
    ],
    ids=["tmp_member_adds", "tmp_outsider_adds", "tmp_member_removes_other", "tmp_member_removes_self",
         "tmp_creator_removes", "normal_member_adds", "normal_creator_adds", "normal_server_removes"],
)
async def test_change_permissions(storage, people, group_type, actor, change_type, target, outcome):
    snapshot = await new_group(storage, people, group_type=group_type)
    actor_id = 0 if actor == "server" else people[actor]
    change = await change_members(storage.master, snapshot.group.id, actor_id, change_type, [people[target]])
    stored = (await get_snapshots(storage.master, [snapshot.group.id]))[snapshot.group.id]

    assert change.outcome == outcome
    assert stored.group.version == (2 if outcome == CHANGE_OK else 1)


async def test_change_empty_list(storage, people):
    snapshot = await new_group(storage, people)

    for change_type in (ADD, DEL):
        change = await change_members(storage.master, snapshot.group.id, people["alice"], change_type, [])
        assert change.outcome == CHANGE_EMPTY


async def test_change_unknown_group(storage, people):
    change = await change_members(storage.master, 424_242, 0, ADD, [people["bob"]])

    assert change.outcome == CHANGE_NO_GROUP


async def test_change_bad_type_rejected(storage, people):
    snapshot = await new_group(storage, people)

    with pytest.raises(ValueError, match="change type"):
        await change_members(storage.master, snapshot.group.id, 0, 3, [people["dave"]])


async def test_publish_member_change_syncs_caches(storage, people):
    snapshot = await new_group(storage, people)
    group_id = snapshot.group.id
    await store_for(storage).store_messages([group_text(people["alice"], group_id) for _ in range(3)])
    change = await change_members(storage.master, group_id, people["alice"], ADD, [people["dave"]], now=NOW)
    await publish_member_change(storage.caches, change)

    hash_ = await storage.caches.get("group_member").hgetall(group_member_key(group_id))
    unread = await get_group_unread_counts(storage.caches.get("unread"), people["dave"], [group_id])
    assert hash_[str(people["dave"])] == str(NOW)
    assert set(hash_) == {str(user_id) for user_id in change.snapshot.members}
    assert unread == {}


# The directory


async def test_directory_sees_change_by_other_writer(storage, people):
    snapshot = await new_group(storage, people)
    group_id = snapshot.group.id
    directory = GroupDirectory.from_storage(storage)
    before = await directory.get_group(group_id)
    # Another process changes the tables, and this directory learns of it only by the version.
    await change_members(storage.master, group_id, 0, ADD, [people["dave"]], now=NOW)
    after = await directory.get_group(group_id)

    assert people["dave"] not in before.members
    assert after.members[people["dave"]] == NOW
    assert after.group.version == 2
    hash_ = await storage.caches.get("group_member").hgetall(group_member_key(group_id))
    assert set(hash_) == {str(user_id) for user_id in after.members}


async def test_directory_marks_newcomer_read(storage, people):
    snapshot = await new_group(storage, people)
    group_id = snapshot.group.id
    store = store_for(storage)
    await store.directory.get_group(group_id)
    await store.store_messages([group_text(people["alice"], group_id) for _ in range(4)])
    await change_members(storage.master, group_id, 0, ADD, [people["dave"]], now=NOW)
    await store.directory.get_group(group_id)

    unread = storage.caches.get("unread")
    assert await get_group_unread_counts(unread, people["dave"], [group_id]) == {}
    assert await get_group_unread_counts(unread, people["bob"], [group_id]) == {group_id: 4}


async def test_directory_unknown_group(storage, people):
    directory = GroupDirectory.from_storage(storage)

    assert await directory.get_group(424_242) is None
    assert await directory.get_groups([0, -3]) == {}


async def test_sync_member_hashes_drops_stale_fields(storage, people):
    snapshot = await new_group(storage, people)
    cache = storage.caches.get("group_member")
    key = group_member_key(snapshot.group.id)
    await cache.hset(key, "777", "1")
    await cache.hset(key, str(people["bob"]), "5")
    await sync_member_hashes(cache, [snapshot])

    assert await cache.hgetall(key) == {str(user_id): str(NOW - 100) for user_id in snapshot.members}


# Group messages


async def test_group_msg_ids_per_group(storage, people):
    first = await new_group(storage, people)
    second = await new_group(storage, people, name="other")
    store = store_for(storage)
    batch = [group_text(people[name], group.group.id)
             for name, group in [("alice", first), ("bob", second), ("bob", first), ("carol", first)]]
    await store.store_messages(batch)
    await store.store_messages([group_text(people["alice"], second.group.id)])

    assert [message.msg_id for message in batch] == [1, 1, 2, 3]
    assert await stored_ids(storage, first.group.id) == [1, 2, 3]
    assert await stored_ids(storage, second.group.id) == [1, 2]


async def test_group_msg_concurrent_senders(storage, people):
    snapshot = await new_group(storage, people)
    group_id = snapshot.group.id
    store = store_for(storage)
    sent: dict[str, list[NewGroupMessage]] = {}

    async def sender(name):
        sent[name] = []
        for i in range(10):
            batch = [group_text(people[name], group_id, b"%s %d" % (name.encode(), i))]
            await store.store_messages(batch)
            sent[name].extend(batch)

    async with trio.open_nursery() as nursery:
        for name in ("alice", "bob", "carol"):
            nursery.start_soon(sender, name)

    all_ids = sorted(message.msg_id for messages in sent.values() for message in messages)
    assert all_ids == list(range(1, 31))
    for messages in sent.values():
        ids = [message.msg_id for message in messages]
        assert ids == sorted(ids)
    assert await stored_ids(storage, group_id) == list(range(1, 31))


async def test_group_msg_recovers_flush_mid_conversation(storage, people):
    snapshot = await new_group(storage, people)
    group_id = snapshot.group.id
    store = store_for(storage)
    await store.store_messages([group_text(people["alice"], group_id) for _ in range(5)])
    await storage.caches.get("unread").delete(group_msg_id_key(group_id))

    batch = [group_text(people["bob"], group_id), group_text(people["carol"], group_id)]
    await store.store_messages(batch)

    assert [message.msg_id for message in batch] == [6, 7]
    assert await stored_ids(storage, group_id) == list(range(1, 8))


async def test_group_msg_recovers_after_restart(storage, people):
    snapshot = await new_group(storage, people)
    group_id = snapshot.group.id
    await store_for(storage).store_messages([group_text(people["alice"], group_id) for _ in range(4)])
    await storage.caches.get("unread").delete(group_msg_id_key(group_id))

    message = group_text(people["bob"], group_id)
    await store_for(storage).store_messages([message])

    assert message.msg_id == 5
    assert await get_group_max_msg_ids(storage.shards, [group_id]) == {group_id: 5}
    assert await storage.caches.get("unread").get(group_msg_id_key(group_id)) == "5"


async def test_group_msg_rejects_non_member_and_unknown_group(storage, people):
    snapshot = await new_group(storage, people)
    group_id = snapshot.group.id
    outsider = group_text(people["dave"], group_id)
    nowhere = group_text(people["alice"], 424_242)
    good = group_text(people["alice"], group_id)
    await store_for(storage).store_messages([outsider, nowhere, good])

    assert outsider.msg_id == 0
    assert "not a member" in outsider.error
    assert nowhere.msg_id == 0
    assert "does not exist" in nowhere.error
    assert good.msg_id == 1
    assert await stored_ids(storage, group_id) == [1]
    assert await storage.caches.get("unread").hget(group_count_key(group_id), "count") == "1"


@pytest.mark.parametrize(
    "message, reason",
    [
        (NewGroupMessage(1, 1, BD.MSG_TYPE_GROUP_TEXT, b"", NOW), "empty"),
        (NewGroupMessage(1, 1, BD.MSG_TYPE_GROUP_TEXT, b"x" * 4097, NOW), "maximum"),
        (NewGroupMessage(1, 1, BD.MSG_TYPE_GROUP_TEXT, b"\xff\xfe", NOW), "UTF-8"),
        (NewGroupMessage(1, 1, BD.MSG_TYPE_SINGLE_TEXT, b"x", NOW), "not a group type"),
        (NewGroupMessage(0, 1, BD.MSG_TYPE_GROUP_TEXT, b"x", NOW), "invalid id"),
    ],
    ids=["empty", "too_long", "not_utf8", "single_type", "no_sender"],
)
async def test_group_msg_rejects_invalid(storage, people, message, reason):
    await store_for(storage).store_messages([message])

    assert message.msg_id == 0
    assert reason in message.error


async def test_group_msg_deleted_group_rejected(storage, people):
    snapshot = await new_group(storage, people)

    def delete_group(cursor):
        cursor.execute("UPDATE IMGroup SET status=1, version=version+1 WHERE id=%s", (snapshot.group.id,))

    await storage.master.run("delete_group", delete_group)
    message = group_text(people["alice"], snapshot.group.id)
    await store_for(storage).store_messages([message])

    assert message.msg_id == 0
    assert "does not exist" in message.error


async def test_group_msg_sessions_for_every_member(storage, people):
    snapshot = await new_group(storage, people)
    group_id = snapshot.group.id
    store = store_for(storage)
    await store.store_messages([group_text(people["alice"], group_id)], now=NOW)
    await store_for(storage).store_messages([group_text(people["bob"], group_id)], now=NOW + 7)

    for name in ("alice", "bob", "carol"):
        sessions = await get_sessions(storage.master, people[name], group_id, BD.SESSION_TYPE_GROUP)
        assert len(sessions) == 1
        assert sessions[0].updated == NOW + 7
        assert sessions[0].status == 0
    assert await get_sessions(storage.master, people["dave"], group_id, BD.SESSION_TYPE_GROUP) == []
    stored = (await get_snapshots(storage.master, [group_id]))[group_id]
    assert stored.group.last_chated == NOW + 7


async def test_group_msg_counters(storage, people):
    snapshot = await new_group(storage, people)
    group_id = snapshot.group.id
    unread = storage.caches.get("unread")
    store = store_for(storage)
    await store.store_messages([group_text(people["alice"], group_id), group_text(people["bob"], group_id),
                                group_text(people["alice"], group_id)])

    assert await unread.hget(group_count_key(group_id), "count") == "3"
    assert await get_group_unread_counts(unread, people["alice"], [group_id]) == {}
    assert await get_group_unread_counts(unread, people["bob"], [group_id]) == {group_id: 1}
    assert await get_group_unread_counts(unread, people["carol"], [group_id]) == {group_id: 3}

    await mark_groups_read(unread, [(people["carol"], group_id)])
    assert await get_group_unread_counts(unread, people["carol"], [group_id]) == {}
    assert await unread.hget(user_group_count_key(people["carol"], group_id), "count") == "3"


async def test_group_history_from_join_time(storage, people):
    snapshot = await new_group(storage, people)
    group_id = snapshot.group.id
    store = store_for(storage)
    await store.store_messages([group_text(people["alice"], group_id, b"m%d" % i, create_time=NOW + i)
                                for i in range(1, 6)])
    newest = await get_group_messages(storage.shards, group_id, 0, 3)
    from_three = await get_group_messages(storage.shards, group_id, 3, 10)
    since_four = await get_group_messages(storage.shards, group_id, 0, 10, created_since=NOW + 4)
    by_id = await get_group_messages_by_id(storage.shards, group_id, [5, 1, 99])
    by_id_late = await get_group_messages_by_id(storage.shards, group_id, [5, 1], created_since=NOW + 4)
    latest = await get_latest_group_messages(storage.shards, [group_id, 424_242])

    assert [message.msg_id for message in newest] == [5, 4, 3]
    assert newest[0].content == b"m5"
    assert newest[0].from_id == people["alice"]
    assert [message.msg_id for message in from_three] == [3, 2, 1]
    assert [message.msg_id for message in since_four] == [5, 4]
    assert [message.msg_id for message in by_id] == [5, 1]
    assert [message.msg_id for message in by_id_late] == [5]
    assert list(latest) == [group_id]
    assert latest[group_id].msg_id == 5


async def test_group_and_single_stores_side_by_side(storage, people):
    snapshot = await new_group(storage, people)
    single = NewMessage(people["alice"], people["bob"], BD.MSG_TYPE_SINGLE_TEXT, b"hi", NOW)
    group = group_text(people["alice"], snapshot.group.id)
    await MessageStore.from_storage(storage).store_messages([single])
    await store_for(storage).store_messages([group])

    assert single.msg_id == 1
    assert group.msg_id == 1
    assert await get_unread_counts(storage.caches.get("unread"), people["bob"]) == {people["alice"]: 1}


# Shield settings


async def test_shield_set_and_get(storage, people):
    snapshot = await new_group(storage, people)
    group_set = storage.caches.get("group_set")
    await set_shield_status(group_set, snapshot.group.id, people["bob"], 1)
    statuses = await get_shield_statuses(group_set, snapshot.group.id, [people["alice"], people["bob"]])

    assert statuses == {people["alice"]: 0, people["bob"]: 1}
    assert await group_set.hget(f"group_set_{snapshot.group.id}", f"{people['bob']}_1") == "1"
    with pytest.raises(ValueError):
        await set_shield_status(group_set, snapshot.group.id, people["bob"], 2)


# Contacts


async def test_users_changed_since(storage, people):
    await set_user_status(storage.master, "dave", 3)

    def set_updated(cursor):
        for name, updated in (("alice", 100), ("bob", 200), ("carol", 300), ("dave", 250)):
            cursor.execute("UPDATE IMUser SET updated=%s WHERE name=%s", (updated, name))

    await storage.master.run("set_updated", set_updated)
    first = await buddies.get_users_changed_since(storage.master, 0)
    later = await buddies.get_users_changed_since(storage.master, 200)
    nothing = await buddies.get_users_changed_since(storage.master, 301)

    assert [user.name for user in first.users] == ["alice", "bob", "carol"]
    assert first.latest_update_time == 300
    assert [user.name for user in later.users] == ["bob", "carol", "dave"]
    assert later.latest_update_time == 300
    assert nothing.users == []
    assert nothing.latest_update_time == 301


async def test_profile_changes(storage, people):
    assert await buddies.set_avatar(storage.master, people["bob"], "http://msfs/a.png")
    assert await buddies.set_sign_info(storage.master, people["bob"], "忙碌中 😀")
    assert await buddies.set_push_shield(storage.master, people["bob"], 1)
    [bob] = await get_users(storage.master, [people["bob"]])

    assert bob.avatar == "http://msfs/a.png"
    assert bob.sign_info == "忙碌中 😀"
    assert bob.push_shield_status == 1
    assert await buddies.get_push_shield(storage.master, people["bob"]) == 1
    assert await buddies.get_push_shield(storage.master, 999_999) is None


async def test_profile_changes_bad_input(storage, people):
    assert not await buddies.set_avatar(storage.master, 999_999, "x")
    assert not await buddies.set_sign_info(storage.master, 999_999, "x")
    with pytest.raises(ValueError):
        await buddies.set_avatar(storage.master, people["bob"], "x" * 256)
    with pytest.raises(ValueError):
        await buddies.set_sign_info(storage.master, people["bob"], "x" * 129)
    with pytest.raises(ValueError):
        await buddies.set_push_shield(storage.master, people["bob"], 2)


async def test_remove_session(storage, people):
    await MessageStore.from_storage(storage).store_messages(
        [NewMessage(people["alice"], people["bob"], BD.MSG_TYPE_SINGLE_TEXT, b"hi", NOW)])

    removed = await buddies.remove_session(storage.master, people["bob"], people["alice"], BD.SESSION_TYPE_SINGLE)
    again = await buddies.remove_session(storage.master, people["bob"], people["alice"], BD.SESSION_TYPE_SINGLE)
    never = await buddies.remove_session(storage.master, people["bob"], people["carol"], BD.SESSION_TYPE_SINGLE)

    [session] = await get_sessions(storage.master, people["bob"], people["alice"], BD.SESSION_TYPE_SINGLE)
    assert removed
    assert not again
    assert not never
    assert session.status == 1


async def test_departs_changed_since_tree(storage):
    root = await departs.add_depart(storage.master, "Company")
    middle = await departs.add_depart(storage.master, "Engineering", root)
    leaf = await departs.add_depart(storage.master, "Servers", middle)

    def set_updated(cursor):
        for depart_id, updated in ((root, 100), (middle, 200), (leaf, 300)):
            cursor.execute("UPDATE IMDepart SET updated=%s WHERE id=%s", (updated, depart_id))

    await storage.master.run("set_updated", set_updated)
    changed = await departs.get_departs_changed_since(storage.master, 150)

    assert [(depart.id, depart.parent_id) for depart in changed] == [(middle, root), (leaf, middle)]


# Push settings


async def test_device_token_set_and_get(storage, people):
    cache = storage.caches.get("token")
    await settings.set_device_token(cache, people["bob"], BD.CLIENT_TYPE_IOS, "abcdef01")
    await settings.set_device_token(cache, people["carol"], BD.CLIENT_TYPE_ANDROID, "fcm:token-1")
    await settings.set_device_token(cache, people["dave"], BD.CLIENT_TYPE_WINDOWS, "pc-token")
    tokens = await settings.get_device_tokens(cache, [people["bob"], people["carol"], people["dave"], 999])

    assert await cache.get(f"device_{people['bob']}") == "ios:abcdef01"
    assert await cache.get("device_abcdef01") == str(people["bob"])
    assert await cache.get(f"device_{people['dave']}") == "pc-token"
    assert [(token.user_id, token.client_type, token.token) for token in tokens] == [
        (people["bob"], BD.CLIENT_TYPE_IOS, "abcdef01"),
        (people["carol"], BD.CLIENT_TYPE_ANDROID, "fcm:token-1"),
    ]


async def test_device_token_replaced_and_moved(storage, people):
    cache = storage.caches.get("token")
    await settings.set_device_token(cache, people["bob"], BD.CLIENT_TYPE_IOS, "old0token")
    await settings.set_device_token(cache, people["bob"], BD.CLIENT_TYPE_IOS, "new0token")
    await settings.set_device_token(cache, people["carol"], BD.CLIENT_TYPE_IOS, "new0token")

    assert await cache.get("device_old0token") is None
    assert await cache.get(f"device_{people['bob']}") is None
    assert await cache.get(f"device_{people['carol']}") == "ios:new0token"
    assert await cache.get("device_new0token") == str(people["carol"])


async def test_device_token_cleared(storage, people):
    cache = storage.caches.get("token")
    await settings.set_device_token(cache, people["bob"], BD.CLIENT_TYPE_IOS, "abc0token")
    await settings.set_device_token(cache, people["bob"], BD.CLIENT_TYPE_IOS, "")

    assert await cache.get(f"device_{people['bob']}") is None
    assert await cache.get("device_abc0token") is None
    assert await settings.get_device_tokens(cache, [people["bob"]]) == []


@pytest.mark.parametrize("token", ["12345", "has space", "x" * 1025], ids=["digits", "space", "too_long"])
async def test_device_token_rejected(storage, people, token):
    cache = storage.caches.get("token")

    with pytest.raises(ValueError):
        await settings.set_device_token(cache, people["bob"], BD.CLIENT_TYPE_IOS, token)
    assert await cache.get(f"device_{people['bob']}") is None


async def test_count_unread_single_and_group(storage, people):
    snapshot = await new_group(storage, people)
    await MessageStore.from_storage(storage).store_messages(
        [NewMessage(people["alice"], people["bob"], BD.MSG_TYPE_SINGLE_TEXT, b"hi", NOW) for _ in range(2)])
    await store_for(storage).store_messages([group_text(people["alice"], snapshot.group.id) for _ in range(3)])

    counts = await settings.count_unread(storage.master, storage.caches.get("unread"),
                                         [people["alice"], people["bob"], people["dave"]])

    assert counts == {people["alice"]: 0, people["bob"]: 5, people["dave"]: 0}
