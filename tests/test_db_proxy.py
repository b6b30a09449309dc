"""db_proxy_server over real loopback sockets, with a test acting as msg_server."""

from __future__ import annotations

import hashlib
import struct

import pytest
import trio

from teamtalk.db_proxy import DbProxyServer
from teamtalk.db_proxy.handlers_login import FailedLoginTracker
from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.pb import IM_Buddy, IM_Message, IM_Other, IM_Server
from teamtalk.pdu import encode_pdu
from teamtalk.protocol import decode_attach_data, encode_attach_data
from teamtalk.storage import open_embedded_storage
from teamtalk.storage.messages import get_messages
from teamtalk.storage.relations import count_relations, get_relation_id
from teamtalk.storage.sessions import get_sessions
from teamtalk.storage.users import add_user, hash_client_password, set_user_status
from tests.raw_peer import RawPeer

PASSWORD = "secret"


async def start_proxy(nursery, storage, **options) -> tuple[DbProxyServer, int]:
    server = DbProxyServer(storage, "127.0.0.1", 0, **options)
    port = await nursery.start(server.run)
    return server, port


@pytest.fixture
async def users(storage) -> dict[str, int]:
    return {
        "alice": await add_user(storage.master, "alice", PASSWORD, nick="Alice"),
        "bob": await add_user(storage.master, "bob", PASSWORD, nick="Bob", email="bob@example.com"),
        "carol": await add_user(storage.master, "carol", PASSWORD),
    }


@pytest.fixture
async def proxy(storage, users, nursery) -> tuple[DbProxyServer, int]:
    return await start_proxy(nursery, storage)


@pytest.fixture
async def peer(proxy):
    connected = await RawPeer.connect("127.0.0.1", proxy[1])
    yield connected
    await connected.aclose()


@pytest.fixture
async def embedded_storage(tmp_path):
    storage = await open_embedded_storage(tmp_path / "data")
    yield storage
    await storage.aclose()


def msg_data(from_id: int, to_id: int, content: bytes = b"hi", handle: int = 1,
             msg_type: int = BD.MSG_TYPE_SINGLE_TEXT) -> IM_Message.IMMsgData:
    return IM_Message.IMMsgData(
        from_user_id=from_id, to_session_id=to_id, msg_id=0, create_time=1_700_000_000,
        msg_type=msg_type, msg_data=content, attach_data=encode_attach_data(handle),
    )


def framed(service_id: int, command_id: int, message, seq_num: int) -> bytes:
    return encode_pdu(service_id, command_id, message.SerializeToString(), seq_num)


async def validate(peer: RawPeer, name: str, password: str, seq_num: int = 1):
    request = IM_Server.IMValidateReq(user_name=name, password=password, attach_data=encode_attach_data(42))
    await peer.send(BD.SID_OTHER, BD.CID_OTHER_VALIDATE_REQ, request, seq_num)
    return await peer.expect(BD.CID_OTHER_VALIDATE_RSP, IM_Server.IMValidateRsp)


async def send_messages(peer: RawPeer, messages: list[IM_Message.IMMsgData], first_seq: int = 1) -> None:
    """Send all messages in one write, without waiting for responses."""
    data = b"".join(framed(BD.SID_MSG, BD.CID_MSG_DATA, message, first_seq + i)
                    for i, message in enumerate(messages))
    await peer.send_raw(data)


async def receive_msg_data(peer: RawPeer, count: int) -> list[tuple[int, IM_Message.IMMsgData]]:
    """Return (seq_num, IMMsgData) of the next ``count`` CID_MSG_DATA responses."""
    answers = []
    while len(answers) < count:
        pdu, message = await peer.expect(BD.CID_MSG_DATA, IM_Message.IMMsgData, timeout=30)
        answers.append((pdu.seq_num, message))
    return answers


async def unread(peer: RawPeer, user_id: int, seq_num: int = 7) -> IM_Message.IMUnreadMsgCntRsp:
    request = IM_Message.IMUnreadMsgCntReq(user_id=user_id, attach_data=encode_attach_data(5))
    await peer.send(BD.SID_MSG, BD.CID_MSG_UNREAD_CNT_REQUEST, request, seq_num)
    pdu, answer = await peer.expect(BD.CID_MSG_UNREAD_CNT_RESPONSE, IM_Message.IMUnreadMsgCntRsp)
    assert pdu.seq_num == seq_num
    return answer


# Login validation


async def test_validate_good_password(peer, users):
    pdu, answer = await validate(peer, "alice", hash_client_password(PASSWORD), seq_num=11)

    assert pdu.service_id == BD.SID_OTHER
    assert pdu.seq_num == 11
    assert answer.result_code == 0
    assert answer.user_name == "alice"
    assert answer.user_info.user_id == users["alice"]
    assert answer.user_info.user_nick_name == "Alice"
    assert answer.user_info.user_real_name == "alice"
    assert decode_attach_data(answer.attach_data)[1] == 42


@pytest.mark.parametrize(
    "name, password",
    [
        ("alice", hash_client_password("wrong")),
        ("alice", PASSWORD),  # the plain password instead of its MD5 hex
        ("nobody", hash_client_password(PASSWORD)),
        ("x' or '1'='1", hash_client_password(PASSWORD)),
        ("alice", "x' or '1'='1"),
        ("", ""),
    ],
    ids=["wrong_password", "plain_password", "unknown_user", "injection_name", "injection_password", "empty"],
)
async def test_validate_rejects(peer, name, password):
    pdu, answer = await validate(peer, name, password, seq_num=3)

    assert pdu.seq_num == 3
    assert answer.result_code != 0
    assert answer.result_string == "用户名或密码错误"
    assert not answer.HasField("user_info")
    assert decode_attach_data(answer.attach_data)[1] == 42


async def test_validate_disabled_user(peer, storage):
    await set_user_status(storage.master, "bob", 3)

    _, answer = await validate(peer, "bob", hash_client_password(PASSWORD))

    assert answer.result_code == 1
    assert not answer.HasField("user_info")


async def test_validate_locks_after_repeated_failures(peer):
    for attempt in range(10):
        _, answer = await validate(peer, "carol", hash_client_password("guess%d" % attempt))
        assert answer.result_code == 1

    _, locked = await validate(peer, "carol", hash_client_password(PASSWORD))
    _, other = await validate(peer, "alice", hash_client_password(PASSWORD))

    assert locked.result_code == 6
    assert locked.result_string
    assert other.result_code == 0


async def test_failed_login_tracker_window(autojump_clock):
    tracker = FailedLoginTracker(limit=3, window=60.0)
    for _ in range(3):
        tracker.record_failure("carol")
    locked = tracker.is_locked("carol")
    await trio.sleep(61)

    assert locked
    assert not tracker.is_locked("carol")
    assert not tracker.is_locked("alice")


async def test_failed_login_tracker_success_clears(autojump_clock):
    tracker = FailedLoginTracker(limit=2, window=60.0)
    tracker.record_failure("carol")
    tracker.clear("carol")
    tracker.record_failure("carol")

    assert not tracker.is_locked("carol")


# Messages


@pytest.mark.parametrize(
    "max_batch, max_queued",
    [(1000, 10_000), (7, 10_000), (1, 3)],
    ids=["one_batch", "batches_of_7", "batches_of_1_short_queue"],
)
async def test_msg_data_first_burst_both_directions(nursery, storage, users, max_batch, max_queued):
    server, port = await start_proxy(nursery, storage, max_batch=max_batch, max_queued=max_queued)
    alice, bob = users["alice"], users["bob"]
    alice_side = await RawPeer.connect("127.0.0.1", port)
    bob_side = await RawPeer.connect("127.0.0.1", port)
    answers = {}

    async def burst(peer, from_id, to_id, handle):
        messages = [msg_data(from_id, to_id, b"%d:%d" % (from_id, i), handle) for i in range(50)]
        await send_messages(peer, messages, first_seq=1)
        answers[from_id] = await receive_msg_data(peer, 50)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(burst, alice_side, alice, bob, 100)
        nursery.start_soon(burst, bob_side, bob, alice, 200)

    relate_id = await get_relation_id(storage.master, alice, bob)
    all_ids = sorted(answer.msg_id for side in answers.values() for _, answer in side)
    stored = await get_messages(storage.shards, relate_id, 0, 100)
    for from_id, handle in ((alice, 100), (bob, 200)):
        side = answers[from_id]
        assert [seq for seq, _ in side] == list(range(1, 51))
        assert [answer.msg_data for _, answer in side] == [b"%d:%d" % (from_id, i) for i in range(50)]
        ids = [answer.msg_id for _, answer in side]
        assert ids == sorted(ids)
        assert all(decode_attach_data(answer.attach_data)[1] == handle for _, answer in side)
    assert all_ids == list(range(1, 101))
    assert sorted(message.msg_id for message in stored) == list(range(1, 101))
    assert {message.msg_id: message.from_id for message in stored} == {
        answer.msg_id: from_id for from_id, side in answers.items() for _, answer in side
    }
    assert server.writer.batch_count >= 100 // max_batch
    assert await count_relations(storage.master, alice, bob) == 1
    assert len(await get_sessions(storage.master, alice, bob, BD.SESSION_TYPE_SINGLE)) == 1
    assert len(await get_sessions(storage.master, bob, alice, BD.SESSION_TYPE_SINGLE)) == 1
    await alice_side.aclose()
    await bob_side.aclose()


async def test_msg_data_answer_echoes_request(peer, users):
    request = msg_data(users["alice"], users["bob"], "你好 😀".encode(), handle=77)
    await send_messages(peer, [request], first_seq=900)
    [(seq_num, answer)] = await receive_msg_data(peer, 1)

    assert seq_num == 900
    assert answer.msg_id == 1
    assert answer.from_user_id == users["alice"]
    assert answer.to_session_id == users["bob"]
    assert answer.msg_data == "你好 😀".encode()
    assert answer.create_time == 1_700_000_000
    assert answer.attach_data == request.attach_data


async def test_msg_data_too_long_not_answered(peer, storage, users):
    alice, bob = users["alice"], users["bob"]
    await send_messages(peer, [msg_data(alice, bob, b"x" * 4097), msg_data(alice, bob, b"x" * 4096)])
    [(seq_num, answer)] = await receive_msg_data(peer, 1)
    relate_id = await get_relation_id(storage.master, alice, bob)

    assert seq_num == 2
    assert answer.msg_id == 1
    assert [message.msg_id for message in await get_messages(storage.shards, relate_id, 0, 10)] == [1]


async def test_msg_data_too_long_stores_nothing(peer, storage, users):
    alice, bob = users["alice"], users["bob"]
    await send_messages(peer, [msg_data(alice, bob, b"x" * 4097)], first_seq=1)
    _, answer = await validate(peer, "alice", hash_client_password(PASSWORD), seq_num=2)

    assert answer.result_code == 0
    assert peer.received == []
    assert await count_relations(storage.master, alice, bob) == 0


@pytest.mark.parametrize(
    "make",
    [
        lambda a, b: msg_data(a, b, b""),
        lambda a, b: msg_data(a, a),
        lambda a, b: msg_data(a, b, msg_type=BD.MSG_TYPE_GROUP_TEXT),
        lambda a, b: msg_data(a, b, b"\xff\xfe\xfd"),
    ],
    ids=["empty", "to_self", "group", "not_utf8"],
)
async def test_msg_data_invalid_not_answered(peer, users, make):
    invalid = make(users["alice"], users["bob"])
    await send_messages(peer, [invalid, msg_data(users["alice"], users["bob"])])
    [(seq_num, answer)] = await receive_msg_data(peer, 1)

    assert seq_num == 2
    assert answer.msg_id == 1


async def test_unread_count_and_read_ack(peer, users):
    alice, bob, carol = users["alice"], users["bob"], users["carol"]
    await send_messages(peer, [msg_data(alice, bob, b"a%d" % i) for i in range(3)]
                        + [msg_data(carol, bob, b"c"), msg_data(bob, alice, b"b")])
    await receive_msg_data(peer, 5)

    before = await unread(peer, bob)
    ack = IM_Message.IMMsgDataReadAck(user_id=bob, session_id=alice, msg_id=3,
                                      session_type=BD.SESSION_TYPE_SINGLE)
    await peer.send(BD.SID_MSG, BD.CID_MSG_READ_ACK, ack, 8)
    after = await unread(peer, bob, seq_num=9)

    by_peer = {info.session_id: info for info in before.unreadinfo_list}
    assert before.user_id == bob
    assert before.total_cnt == 4
    assert decode_attach_data(before.attach_data)[1] == 5
    assert by_peer[alice].unread_cnt == 3
    assert by_peer[alice].session_type == BD.SESSION_TYPE_SINGLE
    assert by_peer[alice].latest_msg_id == 4
    assert by_peer[alice].latest_msg_data == b"b"
    assert by_peer[alice].latest_msg_from_user_id == bob
    assert by_peer[carol].unread_cnt == 1
    assert by_peer[carol].latest_msg_id == 1
    assert by_peer[carol].latest_msg_data == b"c"
    assert by_peer[carol].latest_msg_type == BD.MSG_TYPE_SINGLE_TEXT
    assert after.total_cnt == 1
    assert [info.session_id for info in after.unreadinfo_list] == [carol]
    assert peer.received == []


async def test_unread_count_empty(peer, users):
    answer = await unread(peer, users["alice"])

    assert answer.total_cnt == 0
    assert len(answer.unreadinfo_list) == 0


async def test_msg_list_by_id_and_latest(peer, users):
    alice, bob = users["alice"], users["bob"]
    await send_messages(peer, [msg_data(alice, bob, b"m%d" % i) for i in range(1, 11)])
    await receive_msg_data(peer, 10)

    list_request = IM_Message.IMGetMsgListReq(user_id=bob, session_type=BD.SESSION_TYPE_SINGLE,
                                              session_id=alice, msg_id_begin=5, msg_cnt=3,
                                              attach_data=encode_attach_data(9))
    await peer.send(BD.SID_MSG, BD.CID_MSG_LIST_REQUEST, list_request, 20)
    list_pdu, listed = await peer.expect(BD.CID_MSG_LIST_RESPONSE, IM_Message.IMGetMsgListRsp)

    by_id_request = IM_Message.IMGetMsgByIdReq(user_id=alice, session_type=BD.SESSION_TYPE_SINGLE,
                                               session_id=bob, msg_id_list=[2, 10, 50])
    await peer.send(BD.SID_MSG, BD.CID_MSG_GET_BY_MSG_ID_REQ, by_id_request, 21)
    by_id_pdu, by_id = await peer.expect(BD.CID_MSG_GET_BY_MSG_ID_RES, IM_Message.IMGetMsgByIdRsp)

    latest_request = IM_Message.IMGetLatestMsgIdReq(user_id=bob, session_type=BD.SESSION_TYPE_SINGLE,
                                                    session_id=alice)
    await peer.send(BD.SID_MSG, BD.CID_MSG_GET_LATEST_MSG_ID_REQ, latest_request, 22)
    latest_pdu, latest = await peer.expect(BD.CID_MSG_GET_LATEST_MSG_ID_RSP, IM_Message.IMGetLatestMsgIdRsp)

    assert list_pdu.seq_num == 20
    assert [info.msg_id for info in listed.msg_list] == [5, 4, 3]
    assert listed.msg_list[0].msg_data == b"m5"
    assert listed.msg_list[0].from_session_id == alice
    assert listed.msg_list[0].create_time == 1_700_000_000
    assert listed.msg_id_begin == 5
    assert decode_attach_data(listed.attach_data)[1] == 9
    assert by_id_pdu.seq_num == 21
    assert [info.msg_id for info in by_id.msg_list] == [10, 2]
    assert latest_pdu.seq_num == 22
    assert latest.latest_msg_id == 10


async def test_msg_list_from_newest_and_strangers(peer, users):
    alice, bob, carol = users["alice"], users["bob"], users["carol"]
    await send_messages(peer, [msg_data(alice, bob, b"m%d" % i) for i in range(1, 4)])
    await receive_msg_data(peer, 3)

    newest = IM_Message.IMGetMsgListReq(user_id=alice, session_type=BD.SESSION_TYPE_SINGLE,
                                        session_id=bob, msg_id_begin=0, msg_cnt=20)
    strangers = IM_Message.IMGetMsgListReq(user_id=alice, session_type=BD.SESSION_TYPE_SINGLE,
                                           session_id=carol, msg_id_begin=0, msg_cnt=20)
    no_latest = IM_Message.IMGetLatestMsgIdReq(user_id=carol, session_type=BD.SESSION_TYPE_SINGLE,
                                               session_id=bob)
    await peer.send(BD.SID_MSG, BD.CID_MSG_LIST_REQUEST, newest, 1)
    _, newest_answer = await peer.expect(BD.CID_MSG_LIST_RESPONSE, IM_Message.IMGetMsgListRsp)
    await peer.send(BD.SID_MSG, BD.CID_MSG_LIST_REQUEST, strangers, 2)
    _, strangers_answer = await peer.expect(BD.CID_MSG_LIST_RESPONSE, IM_Message.IMGetMsgListRsp)
    await peer.send(BD.SID_MSG, BD.CID_MSG_GET_LATEST_MSG_ID_REQ, no_latest, 3)
    _, latest = await peer.expect(BD.CID_MSG_GET_LATEST_MSG_ID_RSP, IM_Message.IMGetLatestMsgIdRsp)

    assert [info.msg_id for info in newest_answer.msg_list] == [3, 2, 1]
    assert len(strangers_answer.msg_list) == 0
    assert latest.latest_msg_id == 0


async def test_recent_sessions(peer, users):
    alice, bob, carol = users["alice"], users["bob"], users["carol"]
    await send_messages(peer, [msg_data(alice, bob, b"first"), msg_data(bob, alice, b"reply")])
    await receive_msg_data(peer, 2)
    await send_messages(peer, [msg_data(carol, alice, b"hello")], first_seq=3)
    await receive_msg_data(peer, 1)

    request = IM_Buddy.IMRecentContactSessionReq(user_id=alice, latest_update_time=0,
                                                 attach_data=encode_attach_data(3))
    await peer.send(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_RECENT_CONTACT_SESSION_REQUEST, request, 30)
    pdu, answer = await peer.expect(BD.CID_BUDDY_LIST_RECENT_CONTACT_SESSION_RESPONSE,
                                    IM_Buddy.IMRecentContactSessionRsp)

    by_peer = {info.session_id: info for info in answer.contact_session_list}
    assert pdu.seq_num == 30
    assert answer.user_id == alice
    assert decode_attach_data(answer.attach_data)[1] == 3
    assert set(by_peer) == {bob, carol}
    assert by_peer[bob].latest_msg_id == 2
    assert by_peer[bob].latest_msg_data == b"reply"
    assert by_peer[bob].latest_msg_from_user_id == bob
    assert by_peer[bob].session_status == BD.SESSION_STATUS_OK
    assert by_peer[carol].latest_msg_id == 1
    assert by_peer[carol].latest_msg_from_user_id == carol
    updated = [info.updated_time for info in answer.contact_session_list]
    assert updated == sorted(updated, reverse=True)


async def test_recent_sessions_after_time(peer, users):
    alice, bob = users["alice"], users["bob"]
    await send_messages(peer, [msg_data(alice, bob)])
    await receive_msg_data(peer, 1)

    request = IM_Buddy.IMRecentContactSessionReq(user_id=alice, latest_update_time=0xFFFFFFFF)
    await peer.send(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_RECENT_CONTACT_SESSION_REQUEST, request, 1)
    _, answer = await peer.expect(BD.CID_BUDDY_LIST_RECENT_CONTACT_SESSION_RESPONSE,
                                  IM_Buddy.IMRecentContactSessionRsp)

    assert len(answer.contact_session_list) == 0


async def test_users_info(peer, users):
    request = IM_Buddy.IMUsersInfoReq(user_id=users["alice"], user_id_list=[users["bob"], 999_999, users["bob"]],
                                      attach_data=encode_attach_data(4))
    await peer.send(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_USER_INFO_REQUEST, request, 40)
    pdu, answer = await peer.expect(BD.CID_BUDDY_LIST_USER_INFO_RESPONSE, IM_Buddy.IMUsersInfoRsp)

    assert pdu.seq_num == 40
    assert [info.user_id for info in answer.user_info_list] == [users["bob"]]
    assert answer.user_info_list[0].email == "bob@example.com"
    assert decode_attach_data(answer.attach_data)[1] == 4


# Bad input and framing


async def test_bad_body_dropped_connection_lives(peer):
    await peer.send_raw(encode_pdu(BD.SID_MSG, BD.CID_MSG_DATA, b"\xff\xff\xff", 1))
    await peer.send_raw(encode_pdu(BD.SID_OTHER, BD.CID_OTHER_VALIDATE_REQ, b"", 2))
    _, answer = await validate(peer, "alice", hash_client_password(PASSWORD), seq_num=3)

    assert answer.result_code == 0
    assert peer.received == []


async def test_unknown_command_ignored(peer, proxy):
    await peer.send_raw(encode_pdu(BD.SID_MSG, 0x03FF, b"", 1))
    await peer.send_raw(encode_pdu(0x7777, 0x0001, b"abc", 2))
    pdu, answer = await validate(peer, "alice", hash_client_password(PASSWORD), seq_num=3)

    assert pdu.seq_num == 3
    assert answer.result_code == 0
    assert proxy[0].dispatcher.unknown_count == 2


async def test_framing_length_below_header_closes(peer):
    await peer.send_raw(struct.pack(">IHHHHHH", 8, 1, 0, BD.SID_OTHER, BD.CID_OTHER_HEARTBEAT, 0, 0))

    await peer.expect_closed()


async def test_framing_oversized_closes(nursery, storage):
    _, port = await start_proxy(nursery, storage, max_pdu_length=4096)
    peer = await RawPeer.connect("127.0.0.1", port)
    await peer.send_raw(struct.pack(">IHHHHHH", 4097, 1, 0, BD.SID_MSG, BD.CID_MSG_DATA, 1, 0))

    await peer.expect_closed()
    await peer.aclose()


async def test_framing_truncated_pdu_then_close(peer, proxy):
    whole = framed(BD.SID_OTHER, BD.CID_OTHER_VALIDATE_REQ,
                   IM_Server.IMValidateReq(user_name="alice", password="x"), 1)
    await peer.send_raw(whole[:-3])
    await peer.stream.send_eof()

    assert await peer.next_pdu() is None


# Heartbeats, timeouts and shutdown


async def test_heartbeat_sent_to_idle_peer(nursery, embedded_storage, autojump_clock):
    _, port = await start_proxy(nursery, embedded_storage, heartbeat_interval=5.0, server_timeout=30.0)
    peer = await RawPeer.connect("127.0.0.1", port)
    started = trio.current_time()
    pdu = await peer.next_pdu(timeout=20)

    assert pdu.command_id == BD.CID_OTHER_HEARTBEAT
    assert pdu.service_id == BD.SID_OTHER
    assert trio.current_time() - started >= 5.0
    await peer.aclose()


async def test_silent_peer_closed_after_timeout(nursery, embedded_storage, autojump_clock):
    _, port = await start_proxy(nursery, embedded_storage, heartbeat_interval=5.0, server_timeout=30.0)
    peer = await RawPeer.connect("127.0.0.1", port)
    started = trio.current_time()
    await peer.expect_closed(timeout=120)

    assert trio.current_time() - started >= 30.0
    await peer.aclose()


async def test_heartbeating_peer_kept_open(nursery, embedded_storage, autojump_clock):
    server, port = await start_proxy(nursery, embedded_storage, heartbeat_interval=5.0, server_timeout=30.0)
    peer = await RawPeer.connect("127.0.0.1", port)
    heartbeat = IM_Other.IMHeartBeat()
    for _ in range(20):
        await peer.send(BD.SID_OTHER, BD.CID_OTHER_HEARTBEAT, heartbeat)
        await trio.sleep(5)

    assert len(server.server.connections) == 1
    await peer.aclose()


async def test_stop_accepting_and_drain(peer, proxy, users):
    server, port = proxy
    await send_messages(peer, [msg_data(users["alice"], users["bob"], b"last words")], first_seq=5)
    with trio.fail_after(5):
        while not server.writer.busy and server.writer.batch_count == 0:
            await trio.sleep(0.001)
    server.stop_accepting()
    await server.drain()
    drained = not server.writer.busy
    pdus = [await peer.next_pdu(), await peer.next_pdu()]
    by_command = {pdu.command_id: pdu for pdu in pdus}
    answer = IM_Message.IMMsgData.FromString(by_command[BD.CID_MSG_DATA].body)

    assert drained
    assert server.writer.batch_count == 1
    assert by_command[BD.CID_MSG_DATA].seq_num == 5
    assert answer.msg_id == 1
    assert BD.CID_OTHER_STOP_RECV_PACKET in by_command
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)


async def test_validate_pipelined_burst_answers_each(peer, users):
    # Forty requests sent at once are checked in batches; each gets its own response, in order.
    names = ["alice", "bob", "nobody", "x' or '1'='1"] * 10
    passwords = {"alice": PASSWORD, "bob": PASSWORD}
    data = b""
    for seq_num, name in enumerate(names, start=1):
        request = IM_Server.IMValidateReq(user_name=name, password=hashlib.md5(
            passwords.get(name, "wrong").encode()).hexdigest(), attach_data=seq_num.to_bytes(12, "big"))
        data += framed(BD.SID_OTHER, BD.CID_OTHER_VALIDATE_REQ, request, seq_num)
    await peer.send_raw(data)
    for seq_num, name in enumerate(names, start=1):
        pdu, response = await peer.expect(BD.CID_OTHER_VALIDATE_RSP, IM_Server.IMValidateRsp)
        assert pdu.seq_num == seq_num
        assert response.user_name == name
        assert response.attach_data == seq_num.to_bytes(12, "big")
        if name in passwords:
            assert response.result_code == 0
            assert response.user_info.user_id == users[name]
        else:
            assert response.result_code != 0
            assert not response.HasField("user_info")
