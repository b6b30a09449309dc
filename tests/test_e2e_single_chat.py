"""End-to-end tests of single chat: db_proxy, route_server, login_server and msg_servers.

Every role runs in this process over loopback, with real TCP links
between them, on both storage backends (embedded SQLite with the
in-process cache, and MySQL with Redis). Clients are the real
``teamtalk.client.Client``. Each wait is bounded. When a test must show
that something did not happen (no ack), it relies on the order in which
the responses on one connection arrive, not on a timer.
"""

from __future__ import annotations

import logging
import time

import pytest
import trio

from teamtalk.client import (
    Client,
    Event,
    LoginRefused,
    MsgServerUnavailable,
    fetch_msg_server,
    fetch_msg_server_tcp,
    md5_hex,
    open_client,
)
from teamtalk.db_proxy.server import DbProxyServer
from teamtalk.login_server.server import LoginServer
from teamtalk.msg_server.server import MsgServer
from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.pb import IM_Login, IM_Message, IM_Server
from teamtalk.pdu import encode_pdu
from teamtalk.route_server.server import RouteServer
from teamtalk.storage.messages import msg_id_key, unread_key
from teamtalk.storage.shards import message_table
from teamtalk.storage.users import STATUS_DISABLED, add_user, set_user_status
from tests.cluster_fixtures import (  # noqa: F401  (fixtures are found by name)
    HOST,
    PASSWORD,
    WAIT,
    cluster,
    cluster2,
    cluster_settings,
    logged_in,
    msg_server_settings,
    redial_fast,
    run_cluster,
    start_role,
    users,
    wait_routed,
    wait_until,
)
from tests.raw_peer import RawPeer

# ---------------------------------------------------------------------------
# Helpers: storage as the tests see it, and client events


def _relation_ids_tx(cursor, user_a: int, user_b: int) -> list[int]:
    cursor.execute("SELECT id FROM IMRelationShip WHERE smallId=%s AND bigId=%s",
                   (min(user_a, user_b), max(user_a, user_b)))
    return [int(row[0]) for row in cursor.fetchall()]


def _session_ids_tx(cursor, user_id: int, peer_id: int) -> list[int]:
    cursor.execute("SELECT id FROM IMRecentSession WHERE userId=%s AND peerId=%s AND type=%s",
                   (user_id, peer_id, BD.SESSION_TYPE_SINGLE))
    return [int(row[0]) for row in cursor.fetchall()]


def _message_rows_tx(cursor, relate_id: int) -> list[tuple[int, int, int, bytes]]:
    cursor.execute(f"SELECT msgId, fromId, toId, content FROM {message_table(relate_id)} "
                   "WHERE relateId=%s ORDER BY msgId, id", (relate_id,))
    rows = []
    for msg_id, from_id, to_id, content in cursor.fetchall():
        if isinstance(content, str):
            content = content.encode("utf-8")
        rows.append((int(msg_id), int(from_id), int(to_id), bytes(content)))
    return rows


async def relation_ids(storage, user_a: int, user_b: int) -> list[int]:
    return await storage.master.run("test relation ids", lambda cur: _relation_ids_tx(cur, user_a, user_b))


async def session_ids(storage, user_id: int, peer_id: int) -> list[int]:
    return await storage.master.run("test session ids", lambda cur: _session_ids_tx(cur, user_id, peer_id))


async def stored_messages(storage, user_a: int, user_b: int) -> list[tuple[int, int, int, bytes]]:
    """(msgId, fromId, toId, content) of every stored message of a pair, by msgId."""
    relations = await relation_ids(storage, user_a, user_b)
    if not relations:
        return []
    assert len(relations) == 1, f"{len(relations)} relation rows for users {user_a} and {user_b}"
    db = storage.shards.database_for_relation(relations[0])
    return await db.run("test message rows", lambda cur: _message_rows_tx(cur, relations[0]))


async def collect(client: Client, expected: dict[int, int], timeout: float = WAIT) -> dict[int, list[Event]]:
    """Read events until ``expected[command_id]`` of each command have arrived; set the others aside."""
    got: dict[int, list[Event]] = {command_id: [] for command_id in expected}
    with trio.move_on_after(timeout):
        while any(len(got[command_id]) < count for command_id, count in expected.items()):
            event = await client.events_receive.receive()
            if event.command_id in got:
                got[event.command_id].append(event)
            else:
                client.other_events.append(event)
        return got
    counts = {f"0x{command_id:04x}": len(events) for command_id, events in got.items()}
    pytest.fail(f"after {timeout} s, got {counts} of {expected} events from {client.peer}")


def buffered_events(client: Client) -> list[Event]:
    """Every event received so far and not yet taken, without waiting."""
    events = list(client.other_events)
    client.other_events.clear()
    while True:
        try:
            events.append(client.events_receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return events


def acks_of(events: list[Event]) -> dict[int, int]:
    """seq_num -> msg_id of the IMMsgDataAck events among ``events``."""
    return {event.seq_num: event.message.msg_id for event in events if event.command_id == BD.CID_MSG_DATA_ACK}


async def flush_cache(storage, storage_backend, user_ids) -> None:
    """Lose the cache as a restarted or flushed Redis would.

    On MySQL + Redis this is FLUSHDB on the private Redis. The embedded
    cache has no such command, so the msg_id counters of every pair of the
    given users and their unread hashes are deleted.
    """
    if storage_backend is not None:
        import redis

        redis_server = storage_backend[1]

        def flushdb() -> None:
            with redis.Redis(host=redis_server.host, port=redis_server.port, db=redis_server.db,
                             password=redis_server.password, socket_timeout=5) as client:
                client.flushdb()

        await trio.to_thread.run_sync(flushdb)
        return
    keys = [unread_key(user_id) for user_id in user_ids]
    for index, user_a in enumerate(user_ids):
        for user_b in user_ids[index + 1:]:
            keys += [msg_id_key(relate_id) for relate_id in await relation_ids(storage, user_a, user_b)]
    cache = storage.caches.get("unread")
    await cache.delete(*keys)
    for key in keys:
        assert not await cache.exists(key)


async def wait_routed_to(route: RouteServer, user_id: int) -> None:
    await wait_until(lambda: route.online.is_online(user_id), f"route_server to see user {user_id}")


def _login_request(user_name: str, client_type: int = BD.CLIENT_TYPE_WINDOWS) -> IM_Login.IMLoginReq:
    return IM_Login.IMLoginReq(user_name=user_name, password=md5_hex(PASSWORD),
                               online_status=BD.USER_STATUS_ONLINE, client_type=client_type,
                               client_version="e2e test")


async def send_raw_msg_data(client: Client, to_session_id: int, data: bytes, seq_num: int) -> None:
    """Send an IMMsgData with any body, even one the client library rejects.

    Use a high ``seq_num`` (60000 and up) that the client's own requests never reach in a test.
    """
    message = IM_Message.IMMsgData(from_user_id=client.user_id, to_session_id=to_session_id, msg_id=0,
                                   create_time=int(time.time()), msg_type=BD.MSG_TYPE_SINGLE_TEXT,
                                   msg_data=data)
    await client.send_message(BD.SID_MSG, BD.CID_MSG_DATA, message, seq_num)


# ---------------------------------------------------------------------------
# 1. Two users on one msg_server, found through login_server


async def test_single_chat_one_msg_server_ack_and_delivery(cluster, users):
    http_port = cluster.login.http_port
    async with open_client(HOST, http_port, "alice", PASSWORD) as alice, \
            open_client(HOST, http_port, "bob", PASSWORD) as bob:
        assert alice.port == cluster.msg_servers[0].port
        assert bob.port == cluster.msg_servers[0].port
        assert alice.user_id == users["alice"]
        assert bob.user_id == users["bob"]

        ack = await alice.send_text(users["bob"], "hello bob", timeout=WAIT)
        delivered = await bob.expect(BD.CID_MSG_DATA, timeout=WAIT)

        reply_ack = await bob.send_text(users["alice"], "hello alice", timeout=WAIT)
        reply = await alice.expect(BD.CID_MSG_DATA, timeout=WAIT)

        # Logging out closes the connection and is counted by route_server and login_server.
        logout = await bob.logout(timeout=WAIT)
        await bob.wait_closed(timeout=WAIT)
        await wait_routed(cluster, users["bob"], 0)
        await wait_until(lambda: cluster.login.registry.total_users == 1, "login_server to count alice only")
        assert not alice.closed

    assert logout.result_code == 0
    assert ack.user_id == users["alice"]
    assert ack.session_id == users["bob"]
    assert ack.msg_id == 1
    assert ack.session_type == BD.SESSION_TYPE_SINGLE
    assert delivered.msg_id == 1
    assert delivered.from_user_id == users["alice"]
    assert delivered.to_session_id == users["bob"]
    assert delivered.msg_data == b"hello bob"
    assert delivered.msg_type == BD.MSG_TYPE_SINGLE_TEXT
    assert reply_ack.msg_id == 2
    assert reply.msg_id == 2
    assert reply.msg_data == b"hello alice"
    assert await stored_messages(cluster.storage, users["alice"], users["bob"]) == [
        (1, users["alice"], users["bob"], b"hello bob"),
        (2, users["bob"], users["alice"], b"hello alice"),
    ]


async def test_single_chat_sender_id_comes_from_the_login(cluster, users):
    port = cluster.msg_servers[0].port
    async with logged_in(port, "alice") as alice, logged_in(port, "bob") as bob:
        forged = IM_Message.IMMsgData(from_user_id=users["carol"], to_session_id=users["bob"], msg_id=77,
                                      create_time=1, msg_type=BD.MSG_TYPE_SINGLE_TEXT, msg_data=b"from carol?")
        response = await alice.request(BD.SID_MSG, BD.CID_MSG_DATA, forged, BD.CID_MSG_DATA_ACK, timeout=WAIT)
        delivered = await bob.expect(BD.CID_MSG_DATA, timeout=WAIT)
    assert response.msg_id == 1
    assert response.user_id == users["alice"]
    assert delivered.from_user_id == users["alice"]
    assert delivered.msg_id == 1
    assert delivered.create_time > 1
    assert await stored_messages(cluster.storage, users["alice"], users["bob"]) == [
        (1, users["alice"], users["bob"], b"from carol?"),
    ]
    assert await relation_ids(cluster.storage, users["carol"], users["bob"]) == []


async def test_single_chat_message_before_login_is_dropped(cluster, users):
    peer = await RawPeer.connect(HOST, cluster.msg_servers[0].port)
    try:
        early = IM_Message.IMMsgData(from_user_id=users["alice"], to_session_id=users["bob"], msg_id=0,
                                     create_time=int(time.time()), msg_type=BD.MSG_TYPE_SINGLE_TEXT,
                                     msg_data=b"too early")
        await peer.send(BD.SID_MSG, BD.CID_MSG_DATA, early, seq_num=5)
        await peer.send(BD.SID_LOGIN, BD.CID_LOGIN_REQ_USERLOGIN, _login_request("alice"), seq_num=6)
        _, login = await peer.expect(BD.CID_LOGIN_RES_USERLOGIN, IM_Login.IMLoginRes, timeout=WAIT)
        early.msg_data = b"in time"
        await peer.send(BD.SID_MSG, BD.CID_MSG_DATA, early, seq_num=7)
        pdu, ack = await peer.expect(BD.CID_MSG_DATA_ACK, IM_Message.IMMsgDataAck, timeout=WAIT)
    finally:
        await peer.aclose()
    assert login.result_code == BD.REFUSE_REASON_NONE
    assert pdu.seq_num == 7
    assert ack.msg_id == 1
    assert [p for p in peer.received if p.command_id == BD.CID_MSG_DATA_ACK] == []
    assert await stored_messages(cluster.storage, users["alice"], users["bob"]) == [
        (1, users["alice"], users["bob"], b"in time"),
    ]


# ---------------------------------------------------------------------------
# 2. Two msg_servers, through route_server


async def test_single_chat_across_msg_servers_through_route_server(cluster2, users):
    first, second = (server.port for server in cluster2.msg_servers)
    async with logged_in(first, "alice") as alice, logged_in(second, "bob") as bob:
        await wait_routed(cluster2, users["alice"])
        await wait_routed(cluster2, users["bob"])

        ack = await alice.send_text(users["bob"], "over the route", timeout=WAIT)
        delivered = await bob.expect(BD.CID_MSG_DATA, timeout=WAIT)
        reply_ack = await bob.send_text(users["alice"], "and back", timeout=WAIT)
        reply = await alice.expect(BD.CID_MSG_DATA, timeout=WAIT)

    assert ack.msg_id == 1
    assert delivered.msg_id == 1
    assert delivered.from_user_id == users["alice"]
    assert delivered.msg_data == b"over the route"
    assert reply_ack.msg_id == 2
    assert reply.msg_id == 2
    assert reply.from_user_id == users["bob"]
    assert reply.msg_data == b"and back"


async def test_single_chat_copy_to_own_devices_across_servers(cluster2, users):
    first, second = (server.port for server in cluster2.msg_servers)
    async with logged_in(first, "alice") as alice, \
            logged_in(second, "alice", client_type=BD.CLIENT_TYPE_ANDROID) as alice_mobile:
        await wait_routed(cluster2, users["alice"], 2)
        ack = await alice.send_text(users["carol"], "are you there?", timeout=WAIT)
        copy = await alice_mobile.expect(BD.CID_MSG_DATA, timeout=WAIT)
    assert ack.msg_id == 1
    assert copy.msg_id == 1
    assert copy.from_user_id == users["alice"]
    assert copy.to_session_id == users["carol"]
    assert await stored_messages(cluster2.storage, users["alice"], users["carol"]) == [
        (1, users["alice"], users["carol"], b"are you there?"),
    ]


# ---------------------------------------------------------------------------
# 3. One user on PC and on mobile


async def _check_devices(cluster, users, pc_port: int, mobile_port: int, second_pc_port: int,
                         bob_port: int) -> None:
    alice_id, bob_id = users["alice"], users["bob"]
    routed = len({pc_port, mobile_port, second_pc_port, bob_port}) > 1
    async with logged_in(bob_port, "bob") as bob, \
            logged_in(pc_port, "alice", client_type=BD.CLIENT_TYPE_WINDOWS) as pc, \
            logged_in(mobile_port, "alice", client_type=BD.CLIENT_TYPE_ANDROID) as mobile:
        if routed:
            await wait_routed(cluster, alice_id, 2)
            await wait_routed(cluster, bob_id)

        # Both devices receive the message.
        ack = await bob.send_text(alice_id, "to both devices", timeout=WAIT)
        on_pc = await pc.expect(BD.CID_MSG_DATA, timeout=WAIT)
        on_mobile = await mobile.expect(BD.CID_MSG_DATA, timeout=WAIT)
        assert on_pc.msg_id == ack.msg_id
        assert on_mobile.msg_id == ack.msg_id
        assert on_pc.msg_data == b"to both devices"
        assert on_mobile.msg_data == b"to both devices"

        # What the PC sends reaches bob and the mobile, and not the PC itself.
        own = await pc.send_text(bob_id, "sent from the PC", timeout=WAIT)
        copy = await mobile.expect(BD.CID_MSG_DATA, timeout=WAIT)
        at_bob = await bob.expect(BD.CID_MSG_DATA, timeout=WAIT)
        assert copy.msg_id == own.msg_id
        assert copy.from_user_id == alice_id
        assert copy.to_session_id == bob_id
        assert copy.msg_data == b"sent from the PC"
        assert at_bob.msg_id == own.msg_id
        # Anything for the PC from its own send would come before this message.
        next_ack = await bob.send_text(alice_id, "your turn", timeout=WAIT)
        await pc.expect(BD.CID_MSG_DATA, timeout=WAIT, where=lambda msg: msg.msg_id == next_ack.msg_id)
        await mobile.expect(BD.CID_MSG_DATA, timeout=WAIT, where=lambda msg: msg.msg_id == next_ack.msg_id)
        assert [e.message.msg_id for e in buffered_events(pc) if e.command_id == BD.CID_MSG_DATA] == []

        # A read on the mobile is announced to the PC, not back to the mobile.
        await mobile.read_ack(bob_id, ack.msg_id)
        notify = await pc.expect(BD.CID_MSG_READ_NOTIFY, timeout=WAIT)
        assert notify.user_id == alice_id
        assert notify.session_id == bob_id
        assert notify.msg_id == ack.msg_id
        assert notify.session_type == BD.SESSION_TYPE_SINGLE

        # A second PC login (a Mac) kicks the first PC, and only it.
        async with logged_in(second_pc_port, "alice", client_type=BD.CLIENT_TYPE_MAC) as second_pc:
            kick = await pc.expect(BD.CID_LOGIN_KICK_USER, timeout=WAIT)
            await pc.wait_closed(timeout=WAIT)
            assert kick.user_id == alice_id
            assert kick.kick_reason == BD.KICK_REASON_DUPLICATE_USER
            assert pc.kick_reason == BD.KICK_REASON_DUPLICATE_USER
            if routed:
                await wait_routed(cluster, alice_id, 2)

            ack2 = await bob.send_text(alice_id, "after the kick", timeout=WAIT)
            on_mobile2 = await mobile.expect(BD.CID_MSG_DATA, timeout=WAIT)
            on_second_pc = await second_pc.expect(BD.CID_MSG_DATA, timeout=WAIT)
            assert not mobile.closed
            assert on_mobile2.msg_id == ack2.msg_id
            assert on_second_pc.msg_id == ack2.msg_id
            assert on_mobile2.msg_data == b"after the kick"
            mobile_events = buffered_events(mobile)
            assert not [e for e in mobile_events if e.command_id == BD.CID_LOGIN_KICK_USER]
            assert not [e for e in mobile_events if e.command_id == BD.CID_MSG_READ_NOTIFY]

            # The kicked device was counted out once: bob, the mobile and the new PC remain.
            await wait_until(lambda: cluster.login.registry.total_users == 3, "login_server to count 3 devices")
            assert sum(server.logged_in_count() for server in cluster.msg_servers) == 3


async def test_single_chat_pc_and_mobile_one_server(cluster, users):
    port = cluster.msg_servers[0].port
    await _check_devices(cluster, users, pc_port=port, mobile_port=port, second_pc_port=port, bob_port=port)


async def test_single_chat_pc_and_mobile_two_servers(cluster2, users):
    first, second = (server.port for server in cluster2.msg_servers)
    await _check_devices(cluster2, users, pc_port=first, mobile_port=second, second_pc_port=second,
                         bob_port=first)


async def test_single_chat_second_mobile_login_keeps_the_pc(cluster, users):
    port = cluster.msg_servers[0].port
    async with logged_in(port, "alice", client_type=BD.CLIENT_TYPE_WINDOWS) as pc, \
            logged_in(port, "alice", client_type=BD.CLIENT_TYPE_ANDROID) as phone:
        async with logged_in(port, "alice", client_type=BD.CLIENT_TYPE_IOS):
            kick = await phone.expect(BD.CID_LOGIN_KICK_USER, timeout=WAIT)
            await phone.wait_closed(timeout=WAIT)
            async with logged_in(port, "bob") as bob:
                await bob.send_text(users["alice"], "still on the PC", timeout=WAIT)
                delivered = await pc.expect(BD.CID_MSG_DATA, timeout=WAIT)
    assert kick.kick_reason == BD.KICK_REASON_DUPLICATE_USER
    assert delivered.msg_data == b"still on the PC"
    assert not [e for e in buffered_events(pc) if e.command_id == BD.CID_LOGIN_KICK_USER]


# ---------------------------------------------------------------------------
# 4. Offline recipient


async def test_single_chat_offline_recipient_fetches_unread(cluster, users):
    port = cluster.msg_servers[0].port
    alice_id, bob_id = users["alice"], users["bob"]
    async with logged_in(port, "alice") as alice:
        acks = [await alice.send_text(bob_id, f"offline {i}", timeout=WAIT) for i in range(5)]
    assert [ack.msg_id for ack in acks] == [1, 2, 3, 4, 5]

    async with logged_in(port, "bob") as bob:
        unread = await bob.unread_counts(timeout=WAIT)
        history = await bob.message_list(alice_id, count=20, timeout=WAIT)
        older = await bob.message_list(alice_id, msg_id_begin=3, count=2, timeout=WAIT)
        latest = await bob.latest_msg_id(alice_id, timeout=WAIT)
        by_id = await bob.messages_by_id(alice_id, BD.SESSION_TYPE_SINGLE, [2, 4, 99], timeout=WAIT)
        recent = await bob.recent_sessions(timeout=WAIT)

        await bob.read_ack(alice_id, latest)
        after_read = await bob.unread_counts(timeout=WAIT)
        pushed = [e for e in buffered_events(bob) if e.command_id == BD.CID_MSG_DATA]

    assert unread.total_cnt == 5
    assert len(unread.unreadinfo_list) == 1
    info = unread.unreadinfo_list[0]
    assert info.session_id == alice_id
    assert info.session_type == BD.SESSION_TYPE_SINGLE
    assert info.unread_cnt == 5
    assert info.latest_msg_id == 5
    assert info.latest_msg_data == b"offline 4"
    assert info.latest_msg_from_user_id == alice_id

    ids = [msg.msg_id for msg in history.msg_list]
    assert ids == [5, 4, 3, 2, 1]
    assert sorted(ids) == list(range(ids[-1], ids[-1] + len(ids)))
    assert [msg.msg_data for msg in history.msg_list] == [f"offline {i}".encode() for i in range(4, -1, -1)]
    assert all(msg.from_session_id == alice_id for msg in history.msg_list)
    assert [msg.msg_id for msg in older.msg_list] == [3, 2]
    assert latest == 5
    assert sorted(msg.msg_id for msg in by_id.msg_list) == [2, 4]
    assert {msg.msg_id: msg.msg_data for msg in by_id.msg_list} == {2: b"offline 1", 4: b"offline 3"}
    sessions = {session.session_id: session for session in recent.contact_session_list}
    assert set(sessions) == {alice_id}
    assert sessions[alice_id].latest_msg_id == 5
    assert after_read.total_cnt == 0
    assert list(after_read.unreadinfo_list) == []
    assert pushed == []


async def test_single_chat_history_of_a_stranger_is_empty(cluster, users):
    port = cluster.msg_servers[0].port
    async with logged_in(port, "carol") as carol:
        history = await carol.message_list(users["dave"], timeout=WAIT)
        latest = await carol.latest_msg_id(users["dave"], timeout=WAIT)
        by_id = await carol.messages_by_id(users["dave"], BD.SESSION_TYPE_SINGLE, [1], timeout=WAIT)
        unread = await carol.unread_counts(timeout=WAIT)
    assert list(history.msg_list) == []
    assert latest == 0
    assert list(by_id.msg_list) == []
    assert unread.total_cnt == 0


# ---------------------------------------------------------------------------
# 5. Concurrent bursts, and the per-connection rate limit


BURST = 40


@pytest.mark.parametrize("msg_server_count", [1, 2], ids=["one_msg_server", "two_msg_servers"])
async def test_single_chat_concurrent_bursts_number_without_gap(storage, users, msg_server_count):
    alice_id, bob_id = users["alice"], users["bob"]
    settings = cluster_settings(msg_server_count, max_msg_per_second=1000)
    async with run_cluster(storage, settings) as running:
        ports = [server.port for server in running.msg_servers]
        async with logged_in(ports[0], "alice") as alice, logged_in(ports[-1], "bob") as bob:
            await wait_routed(running, alice_id)
            await wait_routed(running, bob_id)
            sent: dict[str, dict[int, bytes]] = {"alice": {}, "bob": {}}

            async def burst(name: str, client: Client, peer_id: int) -> None:
                for i in range(BURST):
                    text = f"{name} {i}".encode()
                    sent[name][await client.send_text_nowait(peer_id, text)] = text

            # The very first messages of a pair that never talked, from both sides at once.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(burst, "alice", alice, bob_id)
                nursery.start_soon(burst, "bob", bob, alice_id)
            expected = {BD.CID_MSG_DATA_ACK: BURST, BD.CID_MSG_DATA: BURST}
            at_alice = await collect(alice, expected)
            at_bob = await collect(bob, expected)

    alice_acks = {e.seq_num: e.message.msg_id for e in at_alice[BD.CID_MSG_DATA_ACK]}
    bob_acks = {e.seq_num: e.message.msg_id for e in at_bob[BD.CID_MSG_DATA_ACK]}
    assert set(alice_acks) == set(sent["alice"])
    assert set(bob_acks) == set(sent["bob"])
    all_ids = sorted([*alice_acks.values(), *bob_acks.values()])
    assert all_ids == list(range(1, 2 * BURST + 1))

    # Each sender's messages are numbered, acknowledged and delivered in the order sent.
    alice_order = [alice_acks[seq] for seq in sent["alice"]]
    bob_order = [bob_acks[seq] for seq in sent["bob"]]
    assert alice_order == sorted(alice_order)
    assert bob_order == sorted(bob_order)
    assert [e.message.msg_data for e in at_bob[BD.CID_MSG_DATA]] == list(sent["alice"].values())
    assert [e.message.msg_id for e in at_bob[BD.CID_MSG_DATA]] == alice_order
    assert [e.message.msg_data for e in at_alice[BD.CID_MSG_DATA]] == list(sent["bob"].values())
    assert [e.message.msg_id for e in at_alice[BD.CID_MSG_DATA]] == bob_order

    rows = await stored_messages(storage, alice_id, bob_id)
    assert [row[0] for row in rows] == list(range(1, 2 * BURST + 1))
    by_msg_id = {row[0]: row[3] for row in rows}
    assert {by_msg_id[alice_acks[seq]] for seq in sent["alice"]} == set(sent["alice"].values())
    assert {by_msg_id[bob_acks[seq]] for seq in sent["bob"]} == set(sent["bob"].values())
    assert len(await relation_ids(storage, alice_id, bob_id)) == 1
    assert len(await session_ids(storage, alice_id, bob_id)) == 1
    assert len(await session_ids(storage, bob_id, alice_id)) == 1


async def test_single_chat_rate_limit_drops_21st_message(cluster, users):
    limit = cluster.msg_servers[0].settings.max_msg_per_second
    assert limit == 20
    peer = await RawPeer.connect(HOST, cluster.msg_servers[0].port)
    try:
        await peer.send(BD.SID_LOGIN, BD.CID_LOGIN_REQ_USERLOGIN, _login_request("alice"), seq_num=1)
        _, login = await peer.expect(BD.CID_LOGIN_RES_USERLOGIN, IM_Login.IMLoginRes, timeout=WAIT)
        assert login.result_code == BD.REFUSE_REASON_NONE

        # limit + 1 messages in one write, so they arrive well within one second.
        burst = bytearray()
        for seq_num in range(10, 10 + limit + 1):
            message = IM_Message.IMMsgData(from_user_id=users["alice"], to_session_id=users["bob"], msg_id=0,
                                           create_time=int(time.time()), msg_type=BD.MSG_TYPE_SINGLE_TEXT,
                                           msg_data=f"burst {seq_num}".encode())
            burst += encode_pdu(BD.SID_MSG, BD.CID_MSG_DATA, message.SerializeToString(), seq_num)
        await peer.send_raw(bytes(burst))
        acked = {}
        for _ in range(limit):
            pdu, ack = await peer.expect(BD.CID_MSG_DATA_ACK, IM_Message.IMMsgDataAck, timeout=WAIT)
            acked[pdu.seq_num] = ack.msg_id
        await wait_until(lambda: cluster.msg_servers[0].stats["msg_dropped"] == 1, "the dropped message")

        # A new second: the connection lives and its next message is acknowledged.
        # Acks of one connection come back in order, so an ack of the dropped
        # message would have arrived before this one.
        await trio.sleep(1.0)
        message = IM_Message.IMMsgData(from_user_id=users["alice"], to_session_id=users["bob"], msg_id=0,
                                       create_time=int(time.time()), msg_type=BD.MSG_TYPE_SINGLE_TEXT,
                                       msg_data=b"next second")
        await peer.send(BD.SID_MSG, BD.CID_MSG_DATA, message, seq_num=99)
        pdu, last = await peer.expect(BD.CID_MSG_DATA_ACK, IM_Message.IMMsgDataAck, timeout=WAIT)
    finally:
        await peer.aclose()

    assert sorted(acked) == list(range(10, 10 + limit))
    assert sorted(acked.values()) == list(range(1, limit + 1))
    assert pdu.seq_num == 99
    assert last.msg_id == limit + 1
    assert not [p for p in peer.received if p.command_id == BD.CID_MSG_DATA_ACK]
    rows = await stored_messages(cluster.storage, users["alice"], users["bob"])
    assert f"burst {10 + limit}".encode() not in [row[3] for row in rows]
    assert len(rows) == limit + 1


# ---------------------------------------------------------------------------
# 6. Lost cache, and a restart, keep msg_ids going


async def test_single_chat_msg_ids_continue_after_cache_flush(cluster, users, storage_backend):
    port = cluster.msg_servers[0].port
    alice_id, bob_id = users["alice"], users["bob"]
    async with logged_in(port, "alice") as alice, logged_in(port, "bob") as bob:
        before = [(await alice.send_text(bob_id, f"before {i}", timeout=WAIT)).msg_id for i in range(3)]

        await flush_cache(cluster.storage, storage_backend, [alice_id, bob_id])
        after_flush = [(await alice.send_text(bob_id, f"after {i}", timeout=WAIT)).msg_id for i in range(2)]

        # Lose db_proxy's memory of handed-out ids too, as a restarted db_proxy would.
        await flush_cache(cluster.storage, storage_backend, [alice_id, bob_id])
        cluster.db_proxy.store.forget_last_msg_ids()
        reply = await bob.send_text(alice_id, "reply", timeout=WAIT)
        delivered = (await collect(bob, {BD.CID_MSG_DATA: 5}))[BD.CID_MSG_DATA]

    assert before == [1, 2, 3]
    assert after_flush == [4, 5]
    assert reply.msg_id == 6
    assert [e.message.msg_id for e in delivered] == [1, 2, 3, 4, 5]
    rows = await stored_messages(cluster.storage, alice_id, bob_id)
    assert [row[0] for row in rows] == [1, 2, 3, 4, 5, 6]


async def test_single_chat_msg_ids_continue_after_cluster_restart(storage, users, storage_backend):
    alice_id, bob_id = users["alice"], users["bob"]
    ids = []
    for round_ in range(3):
        if round_ == 2:
            await flush_cache(storage, storage_backend, [alice_id, bob_id])
        async with run_cluster(storage) as running:
            async with logged_in(running.msg_servers[0].port, "alice") as alice:
                for i in range(2):
                    ids.append((await alice.send_text(bob_id, f"round {round_} #{i}", timeout=WAIT)).msg_id)
    assert ids == [1, 2, 3, 4, 5, 6]
    rows = await stored_messages(storage, alice_id, bob_id)
    assert [row[0] for row in rows] == [1, 2, 3, 4, 5, 6]
    assert len(await relation_ids(storage, alice_id, bob_id)) == 1


# ---------------------------------------------------------------------------
# 7. Bodies: emoji, the size limit, empty, and to oneself


async def test_single_chat_emoji_and_longest_body_round_trip(cluster, users):
    port = cluster.msg_servers[0].port
    emoji = "你好 😀👍🏽 👨‍👩‍👧 — ok".encode()
    longest = "😀".encode() * 1024
    assert len(longest) == 4096
    async with logged_in(port, "alice") as alice, logged_in(port, "bob") as bob:
        first = await alice.send_text(users["bob"], emoji, timeout=WAIT)
        second = await alice.send_text(users["bob"], longest, timeout=WAIT)
        delivered = (await collect(bob, {BD.CID_MSG_DATA: 2}))[BD.CID_MSG_DATA]
        history = await bob.message_list(users["alice"], timeout=WAIT)
    assert first.msg_id == 1
    assert second.msg_id == 2
    assert [e.message.msg_data for e in delivered] == [emoji, longest]
    assert [msg.msg_data for msg in history.msg_list] == [longest, emoji]
    rows = await stored_messages(cluster.storage, users["alice"], users["bob"])
    assert [row[3] for row in rows] == [emoji, longest]


async def test_single_chat_invalid_bodies_dropped(cluster, users, caplog):
    caplog.set_level(logging.INFO, logger="teamtalk.msg_server.client_handlers")
    port = cluster.msg_servers[0].port
    async with logged_in(port, "alice") as alice, logged_in(port, "bob") as bob:
        too_long, empty = 60001, 60002
        await send_raw_msg_data(alice, users["bob"], b"a" * 4097, too_long)
        await send_raw_msg_data(alice, users["bob"], b"", empty)
        to_self = await alice.send_text_nowait(users["alice"], "note to self")
        # Acks of one connection come back in order: had any of the above
        # been stored, its ack would arrive before this one.
        good = await alice.send_text(users["bob"], "fine", timeout=WAIT)
        delivered = await bob.expect(BD.CID_MSG_DATA, timeout=WAIT)
        acks = acks_of(buffered_events(alice))
        at_bob = buffered_events(bob)

    assert good.msg_id == 1
    assert delivered.msg_data == b"fine"
    assert too_long not in acks
    assert empty not in acks
    assert to_self not in acks
    assert not [e for e in at_bob if e.command_id == BD.CID_MSG_DATA]
    messages = [record.getMessage() for record in caplog.records
                if record.name == "teamtalk.msg_server.client_handlers"]
    assert any("msg_data of 4097 bytes exceeds 4096" in text for text in messages)
    assert any("empty msg_data" in text for text in messages)
    assert any("message to oneself" in text for text in messages)
    assert await stored_messages(cluster.storage, users["alice"], users["bob"]) == [
        (1, users["alice"], users["bob"], b"fine"),
    ]
    assert await relation_ids(cluster.storage, users["alice"], users["alice"]) == []


# ---------------------------------------------------------------------------
# 8. Refused logins


@pytest.mark.parametrize(
    ("user_name", "password"),
    [
        ("alice", "wrong password"),
        ("nobody", PASSWORD),
        ("dave", PASSWORD),
        ("x' or '1'='1", "x' or '1'='1"),
        ("alice' -- ", PASSWORD),
        ("a" * 5000, PASSWORD),
    ],
    ids=["wrong_password", "unknown_user", "disabled_user", "sql_injection", "sql_comment", "huge_name"],
)
async def test_single_chat_login_refused(cluster, users, user_name, password):
    await set_user_status(cluster.storage.master, "dave", STATUS_DISABLED)
    port = cluster.msg_servers[0].port
    async with Client.connect(HOST, port) as client:
        with pytest.raises(LoginRefused) as refused:
            await client.login(user_name, password, timeout=WAIT)
        await client.wait_closed(timeout=WAIT)
    assert refused.value.result_code == BD.REFUSE_REASON_DB_VALIDATE_FAILED
    assert refused.value.result_string

    # The server stays up: a good login works afterwards.
    async with logged_in(port, "alice") as alice:
        assert alice.user_id == users["alice"]
    assert cluster.msg_servers[0].stats["logins"] == 1


async def test_single_chat_chinese_user_name(cluster, users):
    user_id = await add_user(cluster.storage.master, "张三", PASSWORD)
    port = cluster.msg_servers[0].port
    async with logged_in(port, "张三") as zhang, logged_in(port, "alice") as alice:
        ack = await zhang.send_text(users["alice"], "你好", timeout=WAIT)
        delivered = await alice.expect(BD.CID_MSG_DATA, timeout=WAIT)
    assert zhang.user_id == user_id
    assert zhang.user_info.user_real_name == "张三"
    assert ack.msg_id == 1
    assert delivered.from_user_id == user_id
    assert delivered.msg_data == "你好".encode()


# ---------------------------------------------------------------------------
# 9. db_proxy stopped during traffic


STOP_CYCLES = 5


async def test_single_chat_survives_db_proxy_restarts(storage, users):
    alice_id, bob_id = users["alice"], users["bob"]
    async with trio.open_nursery() as nursery:
        db_proxy = await start_role(nursery, DbProxyServer(storage, HOST, 0))
        db_port = db_proxy.role.port
        route = RouteServer(HOST, 0)
        await nursery.start(route.run)
        login = LoginServer(client_host=HOST, client_port=0, http_host=HOST, http_port=0,
                            msg_server_host=HOST, msg_server_port=0)
        await nursery.start(login.run)
        msg_server = MsgServer(msg_server_settings(db_port, login.msg_server_listener.port, route.port,
                                                   max_msg_per_second=100_000))
        redial_fast(msg_server)
        await nursery.start(msg_server.run)
        db_link = msg_server.db_links[0]
        with trio.fail_after(WAIT):
            await db_link.wait_connected()
            await msg_server.route_link.wait_connected()
            await msg_server.login_links[0].wait_connected()
        port = msg_server.port

        async with logged_in(port, "alice") as alice, logged_in(port, "bob") as bob:
            sent: dict[int, bytes] = {}
            refusals = []
            stop_sending = trio.Event()

            async def keep_sending() -> None:
                for i in range(5000):
                    if stop_sending.is_set():
                        return
                    text = f"message {i}".encode()
                    sent[await alice.send_text_nowait(bob_id, text)] = text
                    if i % 10 == 9:
                        await trio.sleep(0.01)

            async with trio.open_nursery() as traffic:
                traffic.start_soon(keep_sending)
                for _ in range(STOP_CYCLES):
                    acked = msg_server.stats["msg_acked"]
                    await wait_until(lambda: msg_server.stats["msg_acked"] >= acked + 20, "acks before a stop")

                    # Stop db_proxy just after it has started storing a batch.
                    writer = db_proxy.role.writer
                    batches = writer.batch_count
                    with trio.fail_after(WAIT):
                        while writer.batch_count == batches:
                            await trio.sleep(0)
                    await db_proxy.stop()
                    await wait_until(lambda: not db_link.connected, "the db link to drop")
                    async with Client.connect(HOST, port) as carol:
                        with pytest.raises(LoginRefused) as refused:
                            await carol.login("carol", PASSWORD, timeout=WAIT)
                    refusals.append(refused.value.result_code)

                    # Back on the same port; the link dials again by itself.
                    db_proxy = await start_role(nursery, DbProxyServer(storage, HOST, db_port))
                    with trio.fail_after(WAIT):
                        await db_link.wait_connected()
                stop_sending.set()

            # Responses on one connection arrive in order, so this ack is the last one.
            last = await alice.send_text(bob_id, "the end", timeout=WAIT)
            await bob.expect(BD.CID_MSG_DATA, timeout=WAIT, where=lambda msg: msg.msg_id == last.msg_id)
            acks = acks_of(buffered_events(alice))
            delivered = [e.message.msg_id for e in buffered_events(bob) if e.command_id == BD.CID_MSG_DATA]
            async with logged_in(port, "carol") as carol:
                assert carol.user_id == users["carol"]
        nursery.cancel_scope.cancel()

    assert refusals == [BD.REFUSE_REASON_NO_DB_SERVER] * STOP_CYCLES
    assert db_link.connect_count == STOP_CYCLES + 1
    rows = await stored_messages(storage, alice_id, bob_id)
    stored_ids = [row[0] for row in rows]
    assert stored_ids == list(range(1, len(stored_ids) + 1))
    assert last.msg_id == stored_ids[-1]
    contents = {row[0]: row[3] for row in rows}
    assert contents[last.msg_id] == b"the end"
    assert len(acks) >= 20 * STOP_CYCLES
    assert {seq_num: contents.get(msg_id) for seq_num, msg_id in acks.items()} == \
        {seq_num: sent[seq_num] for seq_num in acks}
    assert sorted(delivered) == sorted(acks.values())


async def test_single_chat_survives_route_server_restart(storage, users):
    async with trio.open_nursery() as nursery:
        db_proxy = DbProxyServer(storage, HOST, 0)
        await nursery.start(db_proxy.run)
        route = await start_role(nursery, RouteServer(HOST, 0))
        route_port = route.role.port
        login = LoginServer(client_host=HOST, client_port=0, http_host=HOST, http_port=0,
                            msg_server_host=HOST, msg_server_port=0)
        await nursery.start(login.run)
        servers = []
        for _ in range(2):
            server = MsgServer(msg_server_settings(db_proxy.port, login.msg_server_listener.port, route_port))
            redial_fast(server)
            await nursery.start(server.run)
            with trio.fail_after(WAIT):
                for link in (*server.db_links, *server.login_links, server.route_link):
                    await link.wait_connected()
            servers.append(server)
        first, second = (server.port for server in servers)

        async with logged_in(first, "alice") as alice, logged_in(first, "carol") as carol, \
                logged_in(second, "bob") as bob:
            await route.stop()
            await wait_until(lambda: not any(server.route_link.connected for server in servers),
                             "the route links to drop")

            # Without route_server: no new logins, but chat within one msg_server goes on.
            async with Client.connect(HOST, second) as dave:
                with pytest.raises(LoginRefused) as refused:
                    await dave.login("dave", PASSWORD, timeout=WAIT)
            local = await alice.send_text(users["carol"], "same msg_server", timeout=WAIT)
            at_carol = await carol.expect(BD.CID_MSG_DATA, timeout=WAIT)

            # Back on the same port, each msg_server reports who is online.
            route = await start_role(nursery, RouteServer(HOST, route_port))
            for user_id in (users["alice"], users["carol"], users["bob"]):
                await wait_routed_to(route.role, user_id)
            ack = await alice.send_text(users["bob"], "through the new route_server", timeout=WAIT)
            at_bob = await bob.expect(BD.CID_MSG_DATA, timeout=WAIT)
        nursery.cancel_scope.cancel()

    assert refused.value.result_code == BD.REFUSE_REASON_NO_ROUTE_SERVER
    assert local.msg_id == 1
    assert at_carol.msg_id == 1
    assert ack.msg_id == 1
    assert at_bob.msg_id == 1
    assert at_bob.msg_data == b"through the new route_server"


async def test_single_chat_login_pending_when_db_link_drops(nursery):
    route = RouteServer(HOST, 0)
    await nursery.start(route.run)
    login = LoginServer(client_host=HOST, client_port=0, http_host=HOST, http_port=0,
                        msg_server_host=HOST, msg_server_port=0)
    await nursery.start(login.run)
    # A bare PDU peer plays db_proxy, so the link can drop while a login waits for it.
    listeners = await trio.open_tcp_listeners(0, host=HOST)
    db_port = listeners[0].socket.getsockname()[1]
    msg_server = MsgServer(msg_server_settings(db_port, login.msg_server_listener.port, route.port))
    await nursery.start(msg_server.run)
    with trio.fail_after(WAIT):
        fake_db_proxy = RawPeer(await listeners[0].accept())
        for link in (*msg_server.db_links, *msg_server.login_links, msg_server.route_link):
            await link.wait_connected()

    async with Client.connect(HOST, msg_server.port) as client:
        async with trio.open_nursery() as logins:
            async def log_in() -> None:
                with pytest.raises(LoginRefused) as refused:
                    await client.login("alice", PASSWORD, timeout=WAIT)
                assert refused.value.result_code == BD.REFUSE_REASON_NO_DB_SERVER

            logins.start_soon(log_in)
            _, request = await fake_db_proxy.expect(BD.CID_OTHER_VALIDATE_REQ, IM_Server.IMValidateReq,
                                                    timeout=WAIT)
            await fake_db_proxy.aclose()
        await client.wait_closed(timeout=WAIT)
    await listeners[0].aclose()
    assert request.user_name == "alice"
    assert msg_server.users == {}


# ---------------------------------------------------------------------------
# 10. Timeouts of silent clients


async def test_single_chat_silent_clients_are_closed(storage, users):
    settings = cluster_settings(login_timeout=0.5, pc_client_timeout=1.0, mobile_client_timeout=1.0)
    async with run_cluster(storage, settings) as running:
        server = running.msg_servers[0]
        port = server.port
        async with Client.connect(HOST, port, heartbeat_interval=None) as never_logs_in, \
                Client.connect(HOST, port, heartbeat_interval=0.1) as only_heartbeats, \
                Client.connect(HOST, port, heartbeat_interval=None) as silent_pc, \
                Client.connect(HOST, port, heartbeat_interval=None) as silent_mobile, \
                Client.connect(HOST, port, heartbeat_interval=0.1) as keeps_talking:
            await silent_pc.login("alice", PASSWORD, timeout=WAIT)
            await silent_mobile.login("carol", PASSWORD, client_type=BD.CLIENT_TYPE_IOS, timeout=WAIT)
            await keeps_talking.login("bob", PASSWORD, timeout=WAIT)
            await wait_until(lambda: running.login.registry.total_users == 3, "login_server to count 3 users")

            # Heartbeats do not stand in for a login.
            await never_logs_in.wait_closed(timeout=WAIT)
            await only_heartbeats.wait_closed(timeout=WAIT)
            await silent_pc.wait_closed(timeout=WAIT)
            await silent_mobile.wait_closed(timeout=WAIT)
            assert not keeps_talking.closed
            ack = await keeps_talking.send_text(users["dave"], "still here", timeout=WAIT)

            # The closed ones are logged out everywhere.
            await wait_routed(running, users["alice"], 0)
            await wait_routed(running, users["carol"], 0)
            await wait_until(lambda: running.login.registry.total_users == 1, "login_server to count bob only")
            assert set(server.users) == {users["bob"]}
    assert only_heartbeats.heartbeats_sent > 0
    for client in (never_logs_in, only_heartbeats, silent_pc, silent_mobile):
        assert client.close_reason == "server closed the connection"
    assert ack.msg_id == 1


# ---------------------------------------------------------------------------
# 11. login_server over HTTP and TCP


async def test_single_chat_login_server_answers_http_and_tcp(cluster2, users):
    ports = {server.port for server in cluster2.msg_servers}
    info = await fetch_msg_server(HOST, cluster2.login.http_port, timeout=WAIT)
    tcp = await fetch_msg_server_tcp(HOST, cluster2.login.client_listener.port, timeout=WAIT)
    assert info["code"] == 0
    assert isinstance(info["port"], str)
    assert int(info["port"]) in ports
    assert info["priorIP"] == HOST
    assert info["backupIP"] == HOST
    assert tcp.result_code == BD.REFUSE_REASON_NONE
    assert tcp.prior_ip == HOST
    assert tcp.port in ports

    # The least-loaded msg_server is offered: with alice on one, the other.
    async with open_client(HOST, cluster2.login.http_port, "alice", PASSWORD) as alice:
        await wait_until(lambda: cluster2.login.registry.total_users == 1, "login_server to count alice")
        other = await fetch_msg_server(HOST, cluster2.login.http_port, timeout=WAIT)
        other_tcp = await fetch_msg_server_tcp(HOST, cluster2.login.client_listener.port, timeout=WAIT)
        assert other["port"] == str(next(iter(ports - {alice.port})))
        assert other_tcp.port == int(other["port"])


async def test_single_chat_login_server_without_msg_server(nursery):
    login = LoginServer(client_host=HOST, client_port=0, http_host=HOST, http_port=0,
                        msg_server_host=HOST, msg_server_port=0)
    await nursery.start(login.run)
    with pytest.raises(MsgServerUnavailable) as over_http:
        await fetch_msg_server(HOST, login.http_port, timeout=WAIT)
    with pytest.raises(MsgServerUnavailable) as over_tcp:
        await fetch_msg_server_tcp(HOST, login.client_listener.port, timeout=WAIT)
    assert over_http.value.code == 1
    assert over_tcp.value.code == 1


# ---------------------------------------------------------------------------
# 12. A missing role refuses logins


@pytest.mark.parametrize("missing", ["route_server", "login_server"])
async def test_single_chat_login_refused_without_a_role(storage, users, closed_port, missing):
    async with trio.open_nursery() as nursery:
        db_proxy = DbProxyServer(storage, HOST, 0)
        await nursery.start(db_proxy.run)
        route_port = login_port = closed_port
        if missing != "route_server":
            route = RouteServer(HOST, 0)
            await nursery.start(route.run)
            route_port = route.port
        if missing != "login_server":
            login = LoginServer(client_host=HOST, client_port=0, http_host=HOST, http_port=0,
                                msg_server_host=HOST, msg_server_port=0)
            await nursery.start(login.run)
            login_port = login.msg_server_listener.port
        msg_server = MsgServer(msg_server_settings(db_proxy.port, login_port, route_port))
        await nursery.start(msg_server.run)
        with trio.fail_after(WAIT):
            await msg_server.db_links[0].wait_connected()
            if missing != "route_server":
                await msg_server.route_link.wait_connected()
            if missing != "login_server":
                await msg_server.login_links[0].wait_connected()

        async with Client.connect(HOST, msg_server.port) as client:
            with pytest.raises(LoginRefused) as refused:
                await client.login("alice", PASSWORD, timeout=WAIT)
            await client.wait_closed(timeout=WAIT)
        nursery.cancel_scope.cancel()

    expected = {"route_server": BD.REFUSE_REASON_NO_ROUTE_SERVER,
                "login_server": BD.REFUSE_REASON_NO_LOGIN_SERVER}[missing]
    assert refused.value.result_code == expected
    assert refused.value.result_string
    assert msg_server.users == {}
