"""End-to-end tests of groups: db_proxy, route_server, login_server and msg_servers.

Every role runs in this process over loopback with real TCP links, on
both storage backends (embedded SQLite with the in-process cache, and
MySQL with Redis). Clients are the real ``teamtalk.client.Client``.

Each wait is bounded. To show that something did not arrive, a test
relies on the order of the PDUs on one connection: after a round trip
(``IMClientTimeReq``) on a connection, everything msg_server queued for it
before has arrived. A request that gets no response is shown by the log
line of the role that dropped it, then the same round trip. A copy of a
message delivered twice may come later than the original, so the big
group test gives duplicates a bounded 0.2 s to arrive.
"""

from __future__ import annotations

import contextlib
import functools
import logging

import pytest
import trio

from teamtalk.cli import main as cli_main
from teamtalk.client import Client, Event
from teamtalk.login_server.server import LoginServer
from teamtalk.msg_server.server import MsgServer
from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.pb import IM_Buddy, IM_Group, IM_Message, IM_Server
from teamtalk.route_server.server import RouteServer
from teamtalk.storage.departs import add_depart
from teamtalk.storage.groups import (
    change_members,
    create_group,
    get_shield_statuses,
    get_snapshots,
    publish_member_change,
    publish_new_group,
)
from teamtalk.storage.shards import group_message_table
from teamtalk.storage.users import add_user, list_users
from tests.cluster_fixtures import (  # noqa: F401  (fixtures are found by name)
    HOST,
    PASSWORD,
    WAIT,
    cluster,
    cluster2,
    cluster_settings,
    logged_in,
    msg_server_settings,
    run_cluster,
    users,
    wait_routed,
    wait_until,
)
from tests.raw_peer import RawPeer

GROUP = BD.SESSION_TYPE_GROUP
SINGLE = BD.SESSION_TYPE_SINGLE
ADD = BD.GROUP_MODIFY_TYPE_ADD
DEL = BD.GROUP_MODIFY_TYPE_DEL

# ---------------------------------------------------------------------------
# Helpers


async def new_group(storage, name: str, creator: int, members, group_type: int = BD.GROUP_TYPE_NORMAL) -> int:
    """Create a group as the admin tools do (tables, then caches) and return its id."""
    snapshot = await create_group(storage.master, name, creator, members, group_type=group_type)
    await publish_new_group(storage.caches, snapshot)
    return snapshot.group.id


async def group_state(storage, group_id: int) -> tuple[int, list[int]]:
    """(version, sorted member ids) of a group, from the tables."""
    snapshot = (await get_snapshots(storage.master, [group_id]))[group_id]
    return snapshot.group.version, snapshot.member_ids()


async def group_count(storage) -> int:
    def count_tx(cursor) -> int:
        cursor.execute("SELECT COUNT(*) FROM IMGroup")
        return int(cursor.fetchone()[0])

    return await storage.master.run("test group count", count_tx)


async def stored_group_messages(storage, group_id: int) -> list[tuple[int, int, bytes]]:
    """(msgId, userId, content) of every stored message of a group, by msgId."""

    def rows_tx(cursor) -> list[tuple[int, int, bytes]]:
        cursor.execute(f"SELECT msgId, userId, content FROM {group_message_table(group_id)} "
                       "WHERE groupId=%s ORDER BY msgId, id", (group_id,))
        rows = []
        for msg_id, user_id, content in cursor.fetchall():
            if isinstance(content, str):
                content = content.encode("utf-8")
            rows.append((int(msg_id), int(user_id), bytes(content)))
        return rows

    return await storage.shards.database_for_group(group_id).run("test group messages", rows_tx)


def buffered_events(client: Client) -> list[Event]:
    """Every event received so far and not yet taken, without waiting."""
    events = list(client.other_events)
    client.other_events.clear()
    while True:
        try:
            events.append(client.events_receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return events


def of_command(events: list[Event], command_id: int) -> list:
    return [event.message for event in events if event.command_id == command_id]


async def events_until_msg(client: Client, msg_id: int) -> list[Event]:
    """Every event up to and including the delivery of ``msg_id`` (a group or single message)."""
    events = buffered_events(client)
    with trio.fail_after(WAIT):
        while not any(e.command_id == BD.CID_MSG_DATA and e.message.msg_id == msg_id for e in events):
            events.append(await client.events_receive.receive())
    return events


async def settled_events(client: Client) -> list[Event]:
    """Events received so far, after a round trip that flushes what msg_server queued before."""
    await client.client_time(timeout=WAIT)
    return buffered_events(client)


async def group_info(client: Client, versions: dict[int, int]) -> dict[int, BD.GroupInfo]:
    """IMGroupInfoListReq with the given {group_id: version}; return {group_id: GroupInfo}."""
    request = IM_Group.IMGroupInfoListReq(user_id=client.user_id)
    for group_id, version in versions.items():
        request.group_version_list.add(group_id=group_id, version=version)
    response = await client.request(BD.SID_GROUP, BD.CID_GROUP_INFO_REQUEST, request,
                                    BD.CID_GROUP_INFO_RESPONSE, timeout=WAIT)
    return {info.group_id: info for info in response.group_info_list}


async def departments(client: Client, since: int = 0) -> IM_Buddy.IMDepartmentRsp:
    request = IM_Buddy.IMDepartmentReq(user_id=client.user_id, latest_update_time=since)
    return await client.request(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_DEPARTMENT_REQUEST, request,
                                BD.CID_BUDDY_LIST_DEPARTMENT_RESPONSE, timeout=WAIT)


async def shield_group(client: Client, group_id: int, status: int) -> IM_Group.IMGroupShieldRsp:
    request = IM_Group.IMGroupShieldReq(user_id=client.user_id, group_id=group_id, shield_status=status)
    return await client.request(BD.SID_GROUP, BD.CID_GROUP_SHIELD_GROUP_REQUEST, request,
                                BD.CID_GROUP_SHIELD_GROUP_RESPONSE, timeout=WAIT)


def unread_by_session(response: IM_Message.IMUnreadMsgCntRsp) -> dict[tuple[int, int], BD.UnreadInfo]:
    return {(info.session_id, info.session_type): info for info in response.unreadinfo_list}


async def wait_logged(caplog, text: str) -> None:
    """Wait until a log record containing ``text`` was written."""
    await wait_until(lambda: any(text in record.getMessage() for record in caplog.records),
                     f"a log line containing {text!r}")


async def wait_member_caches_expired(cluster, group_id: int) -> None:
    """Wait until no msg_server has a fresh member list of the group."""

    def expired() -> bool:
        now = trio.current_time()
        for server in cluster.msg_servers:
            entry = server.groups.groups.get(group_id)
            if entry is not None and entry.members is not None and now - entry.fetched_at < server.groups.ttl:
                return False
        return True

    await wait_until(expired, f"member caches of group {group_id} to expire")


# ---------------------------------------------------------------------------
# 1. What a client asks for after login


async def test_group_startup_sequence_consistent(storage, users):
    master = storage.master
    alice, bob, carol, dave = (users[name] for name in ("alice", "bob", "carol", "dave"))
    top = await add_depart(master, "总部")
    middle = await add_depart(master, "研发中心", parent_id=top, priority=1)
    bottom = await add_depart(master, "服务端组", parent_id=middle, priority=2)
    erin = await add_user(master, "erin", PASSWORD, depart_id=bottom)
    frank = await add_user(master, "frank", PASSWORD, depart_id=middle)
    both = await new_group(storage, "everyone", alice, [alice, bob, carol])
    pair = await new_group(storage, "pair", dave, [alice, dave])
    others = await new_group(storage, "others", bob, [bob, carol])

    async with run_cluster(storage) as running:
        port = running.msg_servers[0].port
        async with logged_in(port, "bob") as bob_client, logged_in(port, "dave") as dave_client, \
                logged_in(port, "carol") as carol_client:
            for i in range(2):
                await bob_client.send_text(alice, f"hi alice {i}", timeout=WAIT)
            for i in range(3):
                await bob_client.send_text(both, f"to everyone {i}", session_type=GROUP, timeout=WAIT)
            await dave_client.send_text(pair, "to the pair", session_type=GROUP, timeout=WAIT)
            await carol_client.send_text(others, "not for alice", session_type=GROUP, timeout=WAIT)

        async with logged_in(port, "alice") as client:
            all_users = await client.all_users(0, timeout=WAIT)
            departs = await departments(client, 0)
            departs_again = await departments(client, departs.latest_update_time)
            recent = await client.recent_sessions(0, timeout=WAIT)
            listed = await client.normal_groups(timeout=WAIT)
            versions = {info.group_id: info.version for info in listed.group_version_list}
            described = await group_info(client, {group_id: 0 for group_id in versions})
            unchanged = await group_info(client, versions)

            # dave adds carol to the pair: only that group is described again.
            change = await change_members(master, pair, dave, ADD, [carol])
            await publish_member_change(storage.caches, change)
            relisted = await client.normal_groups(timeout=WAIT)
            changed = await group_info(client, versions)
            unread = await client.unread_counts(timeout=WAIT)

    rows = {row.id: row for row in await list_users(master)}
    assert {info.user_id for info in all_users.user_list} == {alice, bob, carol, dave, erin, frank}
    assert {info.user_id: info.department_id for info in all_users.user_list}[erin] == bottom
    assert {info.user_id: info.department_id for info in all_users.user_list}[frank] == middle
    assert all_users.latest_update_time == max(row.updated for row in rows.values())

    assert {d.dept_id: (d.parent_dept_id, d.dept_name) for d in departs.dept_list} == {
        top: (0, "总部"), middle: (top, "研发中心"), bottom: (middle, "服务端组")}
    assert departs.latest_update_time > 0
    assert list(departs_again.dept_list) == []
    assert departs_again.latest_update_time == departs.latest_update_time

    sessions = {(s.session_id, s.session_type): s for s in recent.contact_session_list}
    assert set(sessions) == {(bob, SINGLE), (both, GROUP), (pair, GROUP)}
    assert sessions[(bob, SINGLE)].latest_msg_id == 2
    assert sessions[(bob, SINGLE)].latest_msg_data == b"hi alice 1"
    assert sessions[(both, GROUP)].latest_msg_id == 3
    assert sessions[(both, GROUP)].latest_msg_data == b"to everyone 2"
    assert sessions[(both, GROUP)].latest_msg_from_user_id == bob
    assert sessions[(pair, GROUP)].latest_msg_id == 1
    assert sessions[(pair, GROUP)].latest_msg_from_user_id == dave

    assert versions == {both: 1, pair: 1}
    assert set(described) == {both, pair}
    assert described[both].group_name == "everyone"
    assert described[both].group_creator_id == alice
    assert described[both].group_type == BD.GROUP_TYPE_NORMAL
    assert described[both].shield_status == 0
    assert list(described[both].group_member_list) == sorted([alice, bob, carol])
    assert list(described[pair].group_member_list) == sorted([alice, dave])
    assert unchanged == {}
    assert {info.group_id: info.version for info in relisted.group_version_list} == {both: 1, pair: 2}
    assert set(changed) == {pair}
    assert changed[pair].version == 2
    assert list(changed[pair].group_member_list) == sorted([alice, carol, dave])

    counts = unread_by_session(unread)
    assert set(counts) == {(bob, SINGLE), (both, GROUP), (pair, GROUP)}
    assert counts[(bob, SINGLE)].unread_cnt == 2
    assert counts[(both, GROUP)].unread_cnt == 3
    assert counts[(pair, GROUP)].unread_cnt == 1
    assert unread.total_cnt == 6
    assert counts[(both, GROUP)].latest_msg_from_user_id == bob
    # The unread counts and the recent sessions tell the same story.
    for key, info in counts.items():
        assert info.latest_msg_id == sessions[key].latest_msg_id
        assert info.latest_msg_data == sessions[key].latest_msg_data


# ---------------------------------------------------------------------------
# 2. A big group over three msg_servers


MEMBERS = 200
SERVERS = 3
MESSAGES = 5


def _offline(index: int) -> bool:
    return index % 10 == 9


async def test_group_200_members_over_three_msg_servers(storage):
    names = [f"member{i:03d}" for i in range(MEMBERS)]
    ids = [await add_user(storage.master, name, PASSWORD) for name in names]
    group_id = await new_group(storage, "all hands", ids[0], ids)

    settings = cluster_settings(msg_server_count=SERVERS, max_msg_per_second=1000)
    async with run_cluster(storage, settings) as running, contextlib.AsyncExitStack() as stack:
        ports = [server.port for server in running.msg_servers]
        online = [i for i in range(MEMBERS) if not _offline(i)]
        clients: dict[int, Client] = {}
        for i in online:
            clients[i] = await stack.enter_async_context(Client.connect(HOST, ports[i % SERVERS]))

        # Mobile clients, so that logins are not announced to 180 PC clients.
        limit = trio.CapacityLimiter(30)

        async def log_in(i: int) -> None:
            async with limit:
                await clients[i].login(names[i], PASSWORD, client_type=BD.CLIENT_TYPE_ANDROID, timeout=WAIT)

        async with trio.open_nursery() as nursery:
            for i in online:
                nursery.start_soon(log_in, i)
        await wait_until(lambda: len(running.route.online.users) == len(online), "route_server to see every member")
        spread = [server.logged_in_count() for server in running.msg_servers]

        sender = clients[0]
        acks = [await sender.send_text(group_id, f"message {n}", session_type=GROUP, timeout=WAIT)
                for n in range(MESSAGES)]
        marker = await sender.send_text(group_id, "marker", session_type=GROUP, timeout=WAIT)
        events = {i: await events_until_msg(clients[i], marker.msg_id) for i in online[1:]}
        # A copy sent twice would be on its way by now: give it a bounded while to arrive.
        await trio.sleep(0.2)
        delivered = {}
        for i in online:
            received = events.get(i, []) + await settled_events(clients[i])
            delivered[i] = [msg.msg_id for msg in of_command(received, BD.CID_MSG_DATA)]

        # The offline members come online, on every msg_server.
        later = {}
        for i in (i for i in range(MEMBERS) if _offline(i)):
            async with logged_in(ports[i % SERVERS], names[i]) as client:
                unread = await client.unread_counts(timeout=WAIT)
                history = await client.message_list(group_id, GROUP, count=20, timeout=WAIT)
                later[i] = (unread, history)

    all_ids = list(range(1, MESSAGES + 2))
    assert sum(spread) == len(online)
    assert min(spread) >= len(online) // SERVERS - 1
    assert [ack.msg_id for ack in acks] == all_ids[:-1]
    assert {ack.session_type for ack in acks} == {GROUP}
    assert {ack.session_id for ack in acks} == {group_id}
    assert marker.msg_id == all_ids[-1]
    assert delivered[0] == []
    wrong = {i: got for i, got in delivered.items() if i != 0 and got != all_ids}
    assert wrong == {}
    assert len(later) == MEMBERS - len(online)
    for unread, history in later.values():
        assert unread.total_cnt == MESSAGES + 1
        assert [(info.session_id, info.session_type, info.unread_cnt, info.latest_msg_id)
                for info in unread.unreadinfo_list] == [(group_id, GROUP, MESSAGES + 1, marker.msg_id)]
        assert [msg.msg_id for msg in history.msg_list] == all_ids[::-1]
        assert [msg.msg_data for msg in history.msg_list] == \
            [b"marker", *(f"message {n}".encode() for n in reversed(range(MESSAGES)))]
        assert {msg.from_session_id for msg in history.msg_list} == {ids[0]}
    assert len(await stored_group_messages(storage, group_id)) == MESSAGES + 1


# ---------------------------------------------------------------------------
# 3. Bad requests: the original's result code or no response, and no change


async def test_group_message_from_non_member_is_dropped(cluster, users):
    group_id = await new_group(cluster.storage, "two", users["alice"], [users["alice"], users["bob"]])
    port = cluster.msg_servers[0].port
    async with logged_in(port, "bob") as bob, logged_in(port, "dave") as dave:
        dropped = await dave.send_text_nowait(group_id, "let me in", session_type=GROUP)
        # dave's next message gets its ack, so the servers handled the first one before it.
        single = await dave.send_text(users["bob"], "hello bob", timeout=WAIT)
        await bob.expect(BD.CID_MSG_DATA, timeout=WAIT, where=lambda msg: msg.msg_id == single.msg_id)
        dave_events = await settled_events(dave)
        bob_events = await settled_events(bob)
        unread = await bob.unread_counts(timeout=WAIT)
    assert [e for e in dave_events if e.command_id == BD.CID_MSG_DATA_ACK and e.seq_num == dropped] == []
    assert [msg for msg in of_command(bob_events, BD.CID_MSG_DATA) if msg.to_session_id == group_id] == []
    assert await stored_group_messages(cluster.storage, group_id) == []
    assert unread.total_cnt == 1
    assert [info.session_type for info in unread.unreadinfo_list] == [SINGLE]


async def test_group_unknown_group_gets_no_response(cluster, users, caplog):
    caplog.set_level(logging.INFO)
    unknown = 4242
    port = cluster.msg_servers[0].port
    async with logged_in(port, "alice") as alice:
        dropped = await alice.send_text_nowait(unknown, "anyone?", session_type=GROUP)
        after = await alice.send_text(users["bob"], "after", timeout=WAIT)

        change = IM_Group.IMGroupChangeMemberReq(user_id=alice.user_id, change_type=ADD, group_id=unknown,
                                                 member_id_list=[users["bob"]])
        await alice.send_message(BD.SID_GROUP, BD.CID_GROUP_CHANGE_MEMBER_REQUEST, change, seq_num=60001)
        await wait_logged(caplog, f"changes members of group {unknown}, which does not exist")
        shield = IM_Group.IMGroupShieldReq(user_id=alice.user_id, group_id=unknown, shield_status=1)
        await alice.send_message(BD.SID_GROUP, BD.CID_GROUP_SHIELD_GROUP_REQUEST, shield, seq_num=60002)
        await wait_logged(caplog, f"shields group {unknown}, which does not exist")
        info = await group_info(alice, {unknown: 0})
        events = await settled_events(alice)
    assert after.msg_id == 1
    assert [e for e in events if e.command_id == BD.CID_MSG_DATA_ACK and e.seq_num == dropped] == []
    assert [e for e in events if e.seq_num in (60001, 60002)] == []
    assert info == {}
    assert await stored_group_messages(cluster.storage, unknown) == []
    assert await group_count(cluster.storage) == 0


async def test_group_create_without_members_fails(cluster, users):
    async with logged_in(cluster.msg_servers[0].port, "alice") as alice:
        empty = await alice.create_group("nobody", [], timeout=WAIT)
        strangers = await alice.create_group("strangers", [9001, 9002], timeout=WAIT)
        unnamed = await alice.create_group("", [users["bob"]], timeout=WAIT)
        created = await alice.create_group("team", [users["alice"], users["bob"]], timeout=WAIT)
    assert empty.result_code == 1
    assert strangers.result_code == 1
    assert unnamed.result_code == 1
    assert created.result_code == 0
    assert list(created.user_id_list) == sorted([users["alice"], users["bob"]])
    assert await group_count(cluster.storage) == 1


async def test_group_create_normal_by_client_is_dropped(cluster, users, caplog):
    caplog.set_level(logging.INFO)
    async with logged_in(cluster.msg_servers[0].port, "alice") as alice:
        request = IM_Group.IMGroupCreateReq(user_id=alice.user_id, group_type=BD.GROUP_TYPE_NORMAL,
                                            group_name="official", group_avatar="",
                                            member_id_list=[users["alice"], users["bob"]])
        await alice.send_message(BD.SID_GROUP, BD.CID_GROUP_CREATE_REQUEST, request, seq_num=60003)
        await wait_logged(caplog, "only temporary groups may be created by clients")
        events = await settled_events(alice)
    assert [e for e in events if e.command_id == BD.CID_GROUP_CREATE_RESPONSE] == []
    assert await group_count(cluster.storage) == 0


async def test_group_bad_member_changes_change_nothing(cluster2, users):
    storage = cluster2.storage
    alice_id, bob_id, carol_id, dave_id = (users[name] for name in ("alice", "bob", "carol", "dave"))
    group_id = await new_group(storage, "team", alice_id, [alice_id, bob_id, carol_id])
    first, second = (server.port for server in cluster2.msg_servers)
    async with logged_in(first, "alice") as alice, logged_in(second, "bob") as bob:
        await wait_routed(cluster2, bob_id)
        empty_add = await alice.change_group_members(group_id, ADD, [], timeout=WAIT)
        empty_del = await alice.change_group_members(group_id, DEL, [], timeout=WAIT)
        already_in = await alice.change_group_members(group_id, ADD, [bob_id, carol_id], timeout=WAIT)
        not_in = await alice.change_group_members(group_id, DEL, [dave_id], timeout=WAIT)
        # Not the creator of a normal group: neither removing nor adding.
        bob_removes = await bob.change_group_members(group_id, DEL, [carol_id], timeout=WAIT)
        bob_adds = await bob.change_group_members(group_id, ADD, [dave_id], timeout=WAIT)
        state = await group_state(storage, group_id)

        # A real change afterwards: its notify is the first one bob receives.
        added = await alice.change_group_members(group_id, ADD, [dave_id], timeout=WAIT)
        notify = await bob.expect(BD.CID_GROUP_CHANGE_MEMBER_NOTIFY, timeout=WAIT)

        # In a temporary group a member may add people, and only the creator may remove them.
        temporary = await alice.create_group("chat", [alice_id, bob_id, carol_id], timeout=WAIT)
        temp_id = temporary.group_id
        bob_adds_temp = await bob.change_group_members(temp_id, ADD, [dave_id], timeout=WAIT)
        bob_removes_temp = await bob.change_group_members(temp_id, DEL, [carol_id], timeout=WAIT)
        temp_state = await group_state(storage, temp_id)
    for response in (empty_add, empty_del, already_in, bob_removes, bob_adds):
        assert response.result_code == 1
        assert list(response.chg_user_id_list) == []
    assert not_in.result_code == 0
    assert list(not_in.chg_user_id_list) == []
    assert state == (1, sorted([alice_id, bob_id, carol_id]))
    assert added.result_code == 0
    assert list(notify.chg_user_id_list) == [dave_id]
    assert await group_state(storage, group_id) == (2, sorted([alice_id, bob_id, carol_id, dave_id]))
    assert temporary.result_code == 0
    assert bob_adds_temp.result_code == 0
    assert bob_removes_temp.result_code == 1
    assert temp_state == (2, sorted([alice_id, bob_id, carol_id, dave_id]))


# ---------------------------------------------------------------------------
# 4. Member changes reach every msg_server


async def test_group_member_change_reaches_every_msg_server(storage, users):
    alice_id, bob_id, carol_id, dave_id = (users[name] for name in ("alice", "bob", "carol", "dave"))
    group_id = await new_group(storage, "moving", alice_id, [alice_id, bob_id])
    async with run_cluster(storage, cluster_settings(msg_server_count=3)) as running:
        ports = [server.port for server in running.msg_servers]
        async with logged_in(ports[0], "alice") as alice, \
                logged_in(ports[2], "alice", client_type=BD.CLIENT_TYPE_ANDROID) as alice_phone, \
                logged_in(ports[1], "bob") as bob, logged_in(ports[1], "dave") as dave, \
                logged_in(ports[2], "carol") as carol:
            await wait_routed(running, alice_id, 2)
            for user_id in (bob_id, carol_id, dave_id):
                await wait_routed(running, user_id)

            # Every msg_server caches the members with the first message.
            first = await alice.send_text(group_id, "before", session_type=GROUP, timeout=WAIT)
            for client in (bob, alice_phone):
                await client.expect(BD.CID_MSG_DATA, timeout=WAIT, where=lambda m: m.msg_id == first.msg_id)

            added = await alice.change_group_members(group_id, ADD, [carol_id, dave_id], timeout=WAIT)
            add_notes = {name: await client.expect(BD.CID_GROUP_CHANGE_MEMBER_NOTIFY, timeout=WAIT)
                         for name, client in (("bob", bob), ("dave", dave), ("carol", carol),
                                              ("alice_phone", alice_phone))}
            second = await alice.send_text(group_id, "welcome", session_type=GROUP, timeout=WAIT)
            got_second = {name: await client.expect(BD.CID_MSG_DATA, timeout=WAIT,
                                                    where=lambda m: m.msg_id == second.msg_id)
                          for name, client in (("bob", bob), ("dave", dave), ("carol", carol),
                                               ("alice_phone", alice_phone))}

            removed = await alice.change_group_members(group_id, DEL, [bob_id], timeout=WAIT)
            del_notes = {name: await client.expect(BD.CID_GROUP_CHANGE_MEMBER_NOTIFY, timeout=WAIT)
                         for name, client in (("bob", bob), ("dave", dave), ("carol", carol),
                                              ("alice_phone", alice_phone))}
            third = await alice.send_text(group_id, "bob is gone", session_type=GROUP, timeout=WAIT)
            for client in (dave, carol, alice_phone):
                await client.expect(BD.CID_MSG_DATA, timeout=WAIT, where=lambda m: m.msg_id == third.msg_id)
            # dave is on bob's msg_server, which has fanned the message out by now.
            bob_events = await settled_events(bob)
            alice_events = await settled_events(alice)
            dave_unread = await dave.unread_counts(timeout=WAIT)
            bob_unread = await bob.unread_counts(timeout=WAIT)
            bob_sessions = await bob.recent_sessions(timeout=WAIT)

    assert added.result_code == 0
    assert list(added.chg_user_id_list) == sorted([carol_id, dave_id])
    assert list(added.cur_user_id_list) == sorted([alice_id, bob_id, carol_id, dave_id])
    for notify in add_notes.values():
        assert notify.user_id == alice_id
        assert notify.group_id == group_id
        assert notify.change_type == ADD
        assert list(notify.chg_user_id_list) == sorted([carol_id, dave_id])
        assert list(notify.cur_user_id_list) == sorted([alice_id, bob_id, carol_id, dave_id])
    assert {name: msg.msg_data for name, msg in got_second.items()} == dict.fromkeys(got_second, b"welcome")
    assert removed.result_code == 0
    for notify in del_notes.values():
        assert notify.change_type == DEL
        assert list(notify.chg_user_id_list) == [bob_id]
        assert list(notify.cur_user_id_list) == sorted([alice_id, carol_id, dave_id])
    assert [msg.msg_id for msg in of_command(bob_events, BD.CID_MSG_DATA)] == []
    # Only the messages sent since dave joined are unread for him, and bob's group is gone.
    assert [(info.session_id, info.unread_cnt) for info in dave_unread.unreadinfo_list] == [(group_id, 2)]
    assert list(bob_unread.unreadinfo_list) == []
    assert [s.session_id for s in bob_sessions.contact_session_list if s.session_type == GROUP] == []
    # The requesting connection gets the response, and the notify goes to the other devices.
    assert of_command(alice_events, BD.CID_GROUP_CHANGE_MEMBER_NOTIFY) == []
    assert of_command(alice_events, BD.CID_MSG_DATA) == []


async def test_group_admin_change_reaches_the_fan_out(storage, storage_backend, users, tmp_path):
    alice_id, bob_id, carol_id = (users[name] for name in ("alice", "bob", "carol"))
    group_id = await new_group(storage, "admin", alice_id, [alice_id, bob_id])
    async with run_cluster(storage, cluster_settings(msg_server_count=2)) as running:
        for server in running.msg_servers:
            server.groups.ttl = 0.3
        first, second = (server.port for server in running.msg_servers)
        async with logged_in(first, "alice") as alice, logged_in(second, "bob") as bob, \
                logged_in(second, "carol") as carol:
            for user_id in (alice_id, bob_id, carol_id):
                await wait_routed(running, user_id)
            before = await alice.send_text(group_id, "before", session_type=GROUP, timeout=WAIT)
            await bob.expect(BD.CID_MSG_DATA, timeout=WAIT, where=lambda m: m.msg_id == before.msg_id)

            # The admin adds carol and removes bob while the servers run: on the
            # embedded backend with the command line, which writes only the tables,
            # and on MySQL + Redis with the storage functions the command calls.
            if storage_backend is None:
                status = await trio.to_thread.run_sync(cli_main, [
                    "group", "members", str(group_id), "--add", "carol", "--remove", "bob",
                    "--data-dir", str(tmp_path / "data")])
                assert status == 0
            else:
                for change_type, user_id in ((ADD, carol_id), (DEL, bob_id)):
                    change = await change_members(storage.master, group_id, 0, change_type, [user_id])
                    await publish_member_change(storage.caches, change)
            await wait_member_caches_expired(running, group_id)

            after = await alice.send_text(group_id, "after", session_type=GROUP, timeout=WAIT)
            at_carol = await carol.expect(BD.CID_MSG_DATA, timeout=WAIT, where=lambda m: m.msg_id == after.msg_id)
            bob_events = await settled_events(bob)
            carol_unread = await carol.unread_counts(timeout=WAIT)

    assert at_carol.msg_data == b"after"
    assert [msg.msg_id for msg in of_command(bob_events, BD.CID_MSG_DATA)] == []
    assert await group_state(storage, group_id) == (3, sorted([alice_id, carol_id]))
    # Messages sent before carol joined are not unread for her.
    assert [(info.session_id, info.unread_cnt) for info in carol_unread.unreadinfo_list] == [(group_id, 1)]


class ScriptedDbProxy:
    """A bare PDU peer in the place of db_proxy, answering as the test tells it."""

    def __init__(self, peer: RawPeer) -> None:
        self.peer = peer

    async def expect(self, command_id: int, message_class):
        return await self.peer.expect(command_id, message_class, timeout=WAIT)

    async def respond(self, request_pdu, service_id: int, command_id: int, message) -> None:
        await self.peer.send(service_id, command_id, message, seq_num=request_pdu.seq_num)

    async def validate(self, user_ids: dict[str, int]) -> None:
        """Accept one login."""
        pdu, request = await self.expect(BD.CID_OTHER_VALIDATE_REQ, IM_Server.IMValidateReq)
        response = IM_Server.IMValidateRsp(user_name=request.user_name, result_code=0,
                                           attach_data=request.attach_data)
        response.user_info.CopyFrom(BD.UserInfo(
            user_id=user_ids[request.user_name], user_gender=0, user_nick_name="", avatar_url="",
            department_id=0, email="", user_real_name=request.user_name, user_tel="", user_domain="",
            status=0))
        await self.respond(pdu, BD.SID_OTHER, BD.CID_OTHER_VALIDATE_RSP, response)

    async def store(self, msg_id: int) -> None:
        """Store the next IMMsgData with ``msg_id``."""
        pdu, message = await self.expect(BD.CID_MSG_DATA, IM_Message.IMMsgData)
        message.msg_id = msg_id
        await self.respond(pdu, BD.SID_MSG, BD.CID_MSG_DATA, message)

    async def describe(self, request_pdu, request, group_id: int, members: list[int]) -> None:
        response = IM_Group.IMGroupInfoListRsp(user_id=request.user_id, attach_data=request.attach_data)
        response.group_info_list.add(group_id=group_id, version=1, group_name="g", group_avatar="",
                                     group_creator_id=members[0], group_type=BD.GROUP_TYPE_TMP,
                                     shield_status=0, group_member_list=members)
        await self.respond(request_pdu, BD.SID_GROUP, BD.CID_GROUP_INFO_RESPONSE, response)


async def test_group_change_during_member_fetch_is_not_lost(nursery):
    # A member change that reaches msg_server while it fetches the members makes it fetch again.
    route = RouteServer(HOST, 0)
    await nursery.start(route.run)
    login = LoginServer(client_host=HOST, client_port=0, http_host=HOST, http_port=0,
                        msg_server_host=HOST, msg_server_port=0)
    await nursery.start(login.run)
    listeners = await trio.open_tcp_listeners(0, host=HOST)
    msg_server = MsgServer(msg_server_settings(listeners[0].socket.getsockname()[1],
                                               login.msg_server_listener.port, route.port))
    await nursery.start(msg_server.run)
    with trio.fail_after(WAIT):
        db = ScriptedDbProxy(RawPeer(await listeners[0].accept()))
        for link in (*msg_server.db_links, *msg_server.login_links, msg_server.route_link):
            await link.wait_connected()
    ids = {"alice": 1, "bob": 2, "dave": 4}
    group_id = 7

    async with Client.connect(HOST, msg_server.port) as alice, Client.connect(HOST, msg_server.port) as bob, \
            Client.connect(HOST, msg_server.port) as dave:
        for name, client in (("alice", alice), ("bob", bob), ("dave", dave)):
            async with trio.open_nursery() as logins:
                logins.start_soon(functools.partial(client.login, name, PASSWORD, timeout=WAIT))
                await db.validate(ids)

        # The first message makes msg_server fetch the members, and the fetch waits.
        await alice.send_text_nowait(group_id, "one", session_type=GROUP)
        await db.store(1)
        pending_pdu, pending_fetch = await db.expect(BD.CID_GROUP_INFO_REQUEST, IM_Group.IMGroupInfoListReq)

        # Meanwhile dave joins.
        change = IM_Group.IMGroupChangeMemberReq(user_id=ids["alice"], change_type=ADD, group_id=group_id,
                                                 member_id_list=[ids["dave"]])
        await alice.send_message(BD.SID_GROUP, BD.CID_GROUP_CHANGE_MEMBER_REQUEST, change, seq_num=60020)
        pdu, request = await db.expect(BD.CID_GROUP_CHANGE_MEMBER_REQUEST, IM_Group.IMGroupChangeMemberReq)
        await db.respond(pdu, BD.SID_GROUP, BD.CID_GROUP_CHANGE_MEMBER_RESPONSE, IM_Group.IMGroupChangeMemberRsp(
            user_id=ids["alice"], change_type=ADD, result_code=0, group_id=group_id,
            cur_user_id_list=[1, 2, 4], chg_user_id_list=[4], attach_data=request.attach_data))
        await dave.expect(BD.CID_GROUP_CHANGE_MEMBER_NOTIFY, timeout=WAIT)

        # The fetch from before the change gets the old members, so msg_server fetches again.
        await db.describe(pending_pdu, pending_fetch, group_id, [1, 2])
        again_pdu, again = await db.expect(BD.CID_GROUP_INFO_REQUEST, IM_Group.IMGroupInfoListReq)
        await db.describe(again_pdu, again, group_id, [1, 2, 4])
        at_bob = await bob.expect(BD.CID_MSG_DATA, timeout=WAIT)

        await alice.send_text_nowait(group_id, "two", session_type=GROUP)
        await db.store(2)
        at_dave = await dave.expect(BD.CID_MSG_DATA, timeout=WAIT, where=lambda m: m.msg_id == 2)
        acks = [await alice.expect(BD.CID_MSG_DATA_ACK, timeout=WAIT) for _ in range(2)]
    await db.peer.aclose()
    await listeners[0].aclose()

    assert at_bob.msg_id == 1
    assert at_dave.msg_data == b"two"
    assert [ack.msg_id for ack in acks] == [1, 2]


# ---------------------------------------------------------------------------
# 5. Unread counts of a group


async def test_group_unread_is_total_minus_read(cluster, users):
    alice_id, bob_id, carol_id = (users[name] for name in ("alice", "bob", "carol"))
    group_id = await new_group(cluster.storage, "counting", alice_id, [alice_id, bob_id, carol_id])
    port = cluster.msg_servers[0].port

    def group_unread(response) -> int:
        return sum(info.unread_cnt for info in response.unreadinfo_list
                   if (info.session_id, info.session_type) == (group_id, GROUP))

    async with logged_in(port, "bob") as bob:
        for i in range(3):
            await bob.send_text(group_id, f"bob {i}", session_type=GROUP, timeout=WAIT)
        bob_after_sending = await bob.unread_counts(timeout=WAIT)
        async with logged_in(port, "carol") as carol:
            carol_first = await carol.unread_counts(timeout=WAIT)
            ack = await carol.send_text(group_id, "carol here", session_type=GROUP, timeout=WAIT)
            await bob.expect(BD.CID_MSG_DATA, timeout=WAIT, where=lambda m: m.msg_id == ack.msg_id)
            carol_after_sending = await carol.unread_counts(timeout=WAIT)
            bob_before_read = await bob.unread_counts(timeout=WAIT)
            await bob.read_ack(group_id, ack.msg_id, GROUP)
            bob_after_read = await bob.unread_counts(timeout=WAIT)
    async with logged_in(port, "alice") as alice:
        alice_first = await alice.unread_counts(timeout=WAIT)
        await alice.read_ack(group_id, ack.msg_id, GROUP)
        alice_after_read = await alice.unread_counts(timeout=WAIT)

    assert group_unread(bob_after_sending) == 0
    assert bob_after_sending.total_cnt == 0
    assert group_unread(carol_first) == 3
    assert carol_first.total_cnt == 3
    # Sending is reading: carol's own message leaves nothing unread for her.
    assert group_unread(carol_after_sending) == 0
    assert group_unread(bob_before_read) == 1
    assert group_unread(bob_after_read) == 0
    assert bob_after_read.total_cnt == 0
    assert group_unread(alice_first) == 4
    assert unread_by_session(alice_first)[(group_id, GROUP)].latest_msg_id == ack.msg_id
    assert group_unread(alice_after_read) == 0
    assert list(alice_after_read.unreadinfo_list) == []


# ---------------------------------------------------------------------------
# 6. Shielded groups


async def test_group_shield_is_stored_and_reported(cluster, users):
    alice_id, bob_id = users["alice"], users["bob"]
    storage = cluster.storage
    group_id = await new_group(storage, "quiet", alice_id, [alice_id, bob_id])
    port = cluster.msg_servers[0].port
    peer = await RawPeer.connect(HOST, cluster.db_proxy.port)

    async def shield_of_members() -> dict[int, int]:
        request = IM_Server.IMGroupGetShieldReq(group_id=group_id, user_id=[alice_id, bob_id])
        await peer.send(BD.SID_OTHER, BD.CID_OTHER_GET_SHIELD_REQ, request, seq_num=7)
        pdu, response = await peer.expect(BD.CID_OTHER_GET_SHIELD_RSP, IM_Server.IMGroupGetShieldRsp,
                                          timeout=WAIT)
        assert pdu.seq_num == 7
        assert response.group_id == group_id
        return {status.user_id: status.shield_status for status in response.shield_status_list}

    try:
        async with logged_in(port, "alice") as alice, logged_in(port, "bob") as bob, \
                logged_in(port, "carol") as carol:
            shielded = await shield_group(alice, group_id, 1)
            alice_view = await group_info(alice, {group_id: 0})
            bob_view = await group_info(bob, {group_id: 0})
            over_db_proxy = await shield_of_members()
            in_storage = await get_shield_statuses(storage.caches.get("group_set"), group_id, [alice_id, bob_id])

            bad_status = await shield_group(bob, group_id, 2)
            not_member = await shield_group(carol, group_id, 1)
            unshielded = await shield_group(alice, group_id, 0)
            alice_again = await group_info(alice, {group_id: 0})
            after = await shield_of_members()
    finally:
        await peer.aclose()

    assert shielded.result_code == 0
    assert shielded.group_id == group_id
    assert alice_view[group_id].shield_status == 1
    assert bob_view[group_id].shield_status == 0
    assert over_db_proxy == {alice_id: 1, bob_id: 0}
    assert in_storage == {alice_id: 1, bob_id: 0}
    assert bad_status.result_code == 1
    assert not_member.result_code == 1
    assert unshielded.result_code == 0
    assert alice_again[group_id].shield_status == 0
    assert after == {alice_id: 0, bob_id: 0}
