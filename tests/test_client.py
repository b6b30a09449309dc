"""Tests of the client library and the terminal chat against fake servers.

The fake msg_server is a Trio listener on 127.0.0.1 that frames PDUs with
PduReader/encode_pdu and responds to the requests a client makes with
canned data. The fake login_server HTTP port sends one canned response per
connection.
"""

import argparse
import base64
import contextlib
import functools
import hashlib
import io
import json
import os
import signal
import subprocess
import sys

import pytest
import trio
import trio.testing

from teamtalk import chat
from teamtalk.client import (
    Client,
    ClientError,
    ClientTimeout,
    ConnectionClosed,
    LoginRefused,
    MsgServerUnavailable,
    fetch_msg_server,
    fetch_msg_server_tcp,
    md5_hex,
    open_client,
)
from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.pb import IM_Buddy, IM_Login, IM_Message
from teamtalk.pdu import PduReader, encode_pdu
from teamtalk.protocol import encode_message

PASSWORD = "secret"
SAFETY_TIMEOUT = 30  # seconds; only stops a broken test from hanging


def make_user(user_id, nick, real_name, domain):
    return BD.UserInfo(user_id=user_id, user_gender=0, user_nick_name=nick, avatar_url="", department_id=1,
                       email=f"{domain}@example.com", user_real_name=real_name, user_tel="",
                       user_domain=domain, status=0)


USERS = {
    1: make_user(1, "Alice", "Alice Liddell", "alice"),
    2: make_user(2, "Bob", "Bob Builder", "bob"),
    3: make_user(3, "小红", "王小红", "xiaohong"),
    4: make_user(4, "Bobby", "Bobby Tables", "bobby"),
}
ACCOUNTS = {"alice": 1, "bob": 2, "xiaohong": 3}


class FakeMsgServer:
    """A msg_server stand-in that records every PDU and responds with canned data."""

    def __init__(self):
        self.port = 0
        self.received = []
        self.connections = []
        self.user_of = {}
        self.send_locks = {}  # stream -> trio.Lock: tests push while handlers reply
        self.silent = set()  # command ids left unanswered
        self.pushes_before_ack = []  # encoded PDUs sent just before each IMMsgDataAck
        self.next_msg_id = 100
        self.unread = []  # UnreadInfo list
        self.sessions = []  # ContactSessionInfo list
        self.history = {}  # session_id -> MsgInfo list, oldest first
        self.msg_serv_result = BD.REFUSE_REASON_NONE
        self._changed = trio.Event()

    async def start(self, nursery):
        listeners = await nursery.start(functools.partial(trio.serve_tcp, self.handle, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]

    async def handle(self, stream):
        self.connections.append(stream)
        self.send_locks[stream] = trio.Lock()
        reader = PduReader()
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    break
                reader.feed(data)
                for pdu in reader:
                    self.received.append(pdu)
                    self._changed.set()
                    self._changed = trio.Event()
                    await self.answer(stream, pdu)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    def of(self, command_id):
        return [pdu for pdu in self.received if pdu.command_id == command_id]

    async def wait_for(self, command_id, count=1, timeout=SAFETY_TIMEOUT):
        with trio.fail_after(timeout):
            while len(self.of(command_id)) < count:
                await self._changed.wait()
        return self.of(command_id)

    async def send(self, stream, data):
        async with self.send_locks[stream]:
            await stream.send_all(data)

    async def push(self, service_id, command_id, message, seq_num=0, stream=None):
        await self.push_raw(encode_message(service_id, command_id, message, seq_num), stream)

    async def push_raw(self, data, stream=None):
        await self.send(stream or self.connections[-1], data)

    async def close_all(self):
        for stream in self.connections:
            await trio.aclose_forcefully(stream)

    async def answer(self, stream, pdu):
        command_id = pdu.command_id
        if command_id in self.silent:
            return
        handler = getattr(self, f"on_0x{command_id:04x}", None)
        if handler is not None:
            await handler(stream, pdu)

    async def reply(self, stream, pdu, command_id, message):
        await self.send(stream, encode_message(pdu.service_id, command_id, message, pdu.seq_num))

    async def on_0x0701(self, stream, pdu):  # heartbeat: echoed, as msg_server does
        await self.send(stream, encode_pdu(pdu.service_id, pdu.command_id, pdu.body, pdu.seq_num))

    async def on_0x0101(self, stream, pdu):  # IMMsgServReq
        response = IM_Login.IMMsgServRsp(result_code=self.msg_serv_result)
        if self.msg_serv_result == BD.REFUSE_REASON_NONE:
            response.prior_ip = "127.0.0.1"
            response.backip_ip = "127.0.0.1"
            response.port = self.port
        await self.reply(stream, pdu, BD.CID_LOGIN_RES_MSGSERVER, response)

    async def on_0x0103(self, stream, pdu):  # IMLoginReq
        request = IM_Login.IMLoginReq.FromString(pdu.body)
        user_id = ACCOUNTS.get(request.user_name)
        if user_id is None or request.password != md5_hex(PASSWORD):
            response = IM_Login.IMLoginRes(server_time=1_700_000_000,
                                           result_code=BD.REFUSE_REASON_DB_VALIDATE_FAILED,
                                           result_string="用户名或密码错误")
            await self.reply(stream, pdu, BD.CID_LOGIN_RES_USERLOGIN, response)
            await stream.aclose()
            return
        self.user_of[stream] = user_id
        response = IM_Login.IMLoginRes(server_time=1_700_000_000, result_code=BD.REFUSE_REASON_NONE,
                                       online_status=request.online_status, user_info=USERS[user_id])
        await self.reply(stream, pdu, BD.CID_LOGIN_RES_USERLOGIN, response)

    async def on_0x0105(self, stream, pdu):  # IMLogoutReq
        await self.reply(stream, pdu, BD.CID_LOGIN_RES_LOGINOUT, IM_Login.IMLogoutRsp(result_code=0))
        await stream.aclose()

    async def on_0x0301(self, stream, pdu):  # IMMsgData
        msg = IM_Message.IMMsgData.FromString(pdu.body)
        for data in self.pushes_before_ack:
            await self.send(stream, data)
        self.next_msg_id += 1
        session_type = BD.SESSION_TYPE_GROUP if msg.msg_type & 0x10 else BD.SESSION_TYPE_SINGLE
        ack = IM_Message.IMMsgDataAck(user_id=self.user_of.get(stream, 0), session_id=msg.to_session_id,
                                      msg_id=self.next_msg_id, session_type=session_type)
        await self.reply(stream, pdu, BD.CID_MSG_DATA_ACK, ack)

    async def on_0x0305(self, stream, pdu):  # IMClientTimeReq
        await self.reply(stream, pdu, BD.CID_MSG_TIME_RESPONSE, IM_Message.IMClientTimeRsp(server_time=1_700_000_123))

    async def on_0x0307(self, stream, pdu):  # IMUnreadMsgCntReq
        response = IM_Message.IMUnreadMsgCntRsp(user_id=self.user_of.get(stream, 0),
                                                total_cnt=sum(info.unread_cnt for info in self.unread),
                                                unreadinfo_list=self.unread)
        await self.reply(stream, pdu, BD.CID_MSG_UNREAD_CNT_RESPONSE, response)

    async def on_0x0309(self, stream, pdu):  # IMGetMsgListReq: newest first, like the original
        request = IM_Message.IMGetMsgListReq.FromString(pdu.body)
        messages = list(reversed(self.history.get(request.session_id, [])))
        if request.msg_id_begin:
            messages = [msg for msg in messages if msg.msg_id <= request.msg_id_begin]
        response = IM_Message.IMGetMsgListRsp(user_id=request.user_id, session_type=request.session_type,
                                              session_id=request.session_id, msg_id_begin=request.msg_id_begin,
                                              msg_list=messages[:request.msg_cnt])
        await self.reply(stream, pdu, BD.CID_MSG_LIST_RESPONSE, response)

    async def on_0x030b(self, stream, pdu):  # IMGetLatestMsgIdReq
        request = IM_Message.IMGetLatestMsgIdReq.FromString(pdu.body)
        messages = self.history.get(request.session_id, [])
        response = IM_Message.IMGetLatestMsgIdRsp(user_id=request.user_id, session_type=request.session_type,
                                                  session_id=request.session_id,
                                                  latest_msg_id=messages[-1].msg_id if messages else 0)
        await self.reply(stream, pdu, BD.CID_MSG_GET_LATEST_MSG_ID_RSP, response)

    async def on_0x030d(self, stream, pdu):  # IMGetMsgByIdReq
        request = IM_Message.IMGetMsgByIdReq.FromString(pdu.body)
        wanted = set(request.msg_id_list)
        messages = [msg for msg in self.history.get(request.session_id, []) if msg.msg_id in wanted]
        response = IM_Message.IMGetMsgByIdRsp(user_id=request.user_id, session_type=request.session_type,
                                              session_id=request.session_id, msg_list=messages)
        await self.reply(stream, pdu, BD.CID_MSG_GET_BY_MSG_ID_RES, response)

    async def on_0x0201(self, stream, pdu):  # IMRecentContactSessionReq
        response = IM_Buddy.IMRecentContactSessionRsp(user_id=self.user_of.get(stream, 0),
                                                      contact_session_list=self.sessions)
        await self.reply(stream, pdu, BD.CID_BUDDY_LIST_RECENT_CONTACT_SESSION_RESPONSE, response)

    async def on_0x0204(self, stream, pdu):  # IMUsersInfoReq
        request = IM_Buddy.IMUsersInfoReq.FromString(pdu.body)
        users = [USERS[user_id] for user_id in request.user_id_list if user_id in USERS]
        response = IM_Buddy.IMUsersInfoRsp(user_id=request.user_id, user_info_list=users)
        await self.reply(stream, pdu, BD.CID_BUDDY_LIST_USER_INFO_RESPONSE, response)

    async def on_0x0208(self, stream, pdu):  # IMAllUserReq
        request = IM_Buddy.IMAllUserReq.FromString(pdu.body)
        response = IM_Buddy.IMAllUserRsp(user_id=request.user_id, latest_update_time=1_700_000_000,
                                         user_list=list(USERS.values()))
        await self.reply(stream, pdu, BD.CID_BUDDY_LIST_ALL_USER_RESPONSE, response)


def parse(pdu, message_class):
    return message_class.FromString(pdu.body)


def msg_data(from_user_id, to_session_id, msg_id, text, msg_type=BD.MSG_TYPE_SINGLE_TEXT):
    return IM_Message.IMMsgData(from_user_id=from_user_id, to_session_id=to_session_id, msg_id=msg_id,
                                create_time=1_700_000_000, msg_type=msg_type, msg_data=text.encode("utf-8"))


@pytest.fixture
async def fake(nursery):
    server = FakeMsgServer()
    await server.start(nursery)
    return server


async def serve_http_once(nursery, response: bytes):
    """Serve ``response`` to every connection; return (port, list of received requests)."""
    requests = []

    async def handle(stream):
        data = bytearray()
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            data += chunk
        requests.append(bytes(data))
        await stream.send_all(response)
        await stream.aclose()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1], requests


def http_json(payload, status="200 OK"):
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    head = f"HTTP/1.1 {status}\r\nContent-Type: text/html;charset=utf-8\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode("ascii") + body


def msg_server_json(port, code=0):
    return {"code": code, "msg": "", "priorIP": "127.0.0.1", "backupIP": "127.0.0.1", "port": str(port),
            "msfsPrior": "http://127.0.0.1:8700/", "msfsBackup": "http://127.0.0.1:8700/", "discovery": ""}


# ----------------------------------------------------------------------
# Login


async def test_login_success_sets_user(fake):
    async with Client.connect("127.0.0.1", fake.port) as client:
        response = await client.login("alice", PASSWORD)

        assert response.result_code == BD.REFUSE_REASON_NONE
        assert client.user_id == 1
        assert client.user_info.user_nick_name == "Alice"
        assert client.server_time == 1_700_000_000


async def test_login_sends_md5_hex_password(fake):
    async with Client.connect("127.0.0.1", fake.port) as client:
        await client.login("alice", PASSWORD, client_type=BD.CLIENT_TYPE_MAC)

    request = parse(fake.of(BD.CID_LOGIN_REQ_USERLOGIN)[0], IM_Login.IMLoginReq)
    assert request.password == hashlib.md5(PASSWORD.encode()).hexdigest()
    assert request.password == request.password.lower()
    assert request.client_type == BD.CLIENT_TYPE_MAC
    assert request.online_status == BD.USER_STATUS_ONLINE
    assert request.client_version == "teamtalk-py"


async def test_login_password_already_md5(fake):
    async with Client.connect("127.0.0.1", fake.port) as client:
        await client.login("alice", md5_hex(PASSWORD), password_is_md5=True)

        assert client.user_id == 1


async def test_login_refused_raises_with_code(fake):
    async with Client.connect("127.0.0.1", fake.port) as client:
        with pytest.raises(LoginRefused) as info:
            await client.login("alice", "wrong")

        assert info.value.result_code == BD.REFUSE_REASON_DB_VALIDATE_FAILED
        assert info.value.result_string == "用户名或密码错误"
        assert client.user_id == 0
        await client.wait_closed(SAFETY_TIMEOUT)


async def test_login_rejects_bad_arguments(fake):
    async with Client.connect("127.0.0.1", fake.port) as client:
        with pytest.raises(ValueError):
            await client.login("", PASSWORD)
        with pytest.raises(ValueError):
            await client.login("alice", "NOT-AN-MD5", password_is_md5=True)
        with pytest.raises(ValueError):
            await client.login("alice", md5_hex(PASSWORD).upper(), password_is_md5=True)

    assert fake.of(BD.CID_LOGIN_REQ_USERLOGIN) == []


async def test_connect_refused_raises_client_error():
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()

    with pytest.raises(ClientError):
        async with Client.connect("127.0.0.1", port):
            pass


def test_client_rejects_bad_options():
    with pytest.raises(ValueError):
        Client("127.0.0.1", 8000, heartbeat_interval=0)
    with pytest.raises(ValueError):
        Client("127.0.0.1", 8000, first_seq_num=0)
    with pytest.raises(ValueError):
        Client("127.0.0.1", 8000, first_seq_num=65536)


# ----------------------------------------------------------------------
# Requests, seq_num and events


async def test_send_text_matches_ack_by_seq_num(fake):
    async with Client.connect("127.0.0.1", fake.port, first_seq_num=500) as client:
        await client.login("alice", PASSWORD)
        seq_num = 501  # login took 500
        # Before the ack come a delivered message and two pushes that carry
        # the very seq_num of the request but another command. The read
        # notify even has the field layout of IMMsgDataAck.
        fake.pushes_before_ack = [
            encode_message(BD.SID_MSG, BD.CID_MSG_DATA, msg_data(2, 1, 7, "hi")),
            encode_message(BD.SID_MSG, BD.CID_MSG_READ_NOTIFY,
                           IM_Message.IMMsgDataReadNotify(user_id=1, session_id=2, msg_id=5, session_type=1),
                           seq_num),
            encode_message(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_STATUS_NOTIFY,
                           IM_Buddy.IMUserStatNotify(user_stat=BD.UserStat(user_id=2, status=1)), seq_num),
        ]

        ack = await client.send_text(2, "hello")

        assert fake.of(BD.CID_MSG_DATA)[0].seq_num == seq_num
        assert ack.msg_id == 101
        assert ack.session_id == 2
        delivered = await client.expect(BD.CID_MSG_DATA, timeout=SAFETY_TIMEOUT)
        assert delivered.msg_data == b"hi"
        read_notify = await client.expect(BD.CID_MSG_READ_NOTIFY, timeout=SAFETY_TIMEOUT)
        assert read_notify.msg_id == 5
        notify = await client.expect(BD.CID_BUDDY_LIST_STATUS_NOTIFY, timeout=SAFETY_TIMEOUT)
        assert notify.user_stat.user_id == 2
        assert client.pending_count == 0

    sent = parse(fake.of(BD.CID_MSG_DATA)[0], IM_Message.IMMsgData)
    assert sent.from_user_id == 1
    assert sent.to_session_id == 2
    assert sent.msg_type == BD.MSG_TYPE_SINGLE_TEXT
    assert sent.msg_data == b"hello"
    assert sent.create_time > 0


async def test_send_text_group_uses_group_type(fake):
    async with Client.connect("127.0.0.1", fake.port) as client:
        await client.login("alice", PASSWORD)
        ack = await client.send_text(9, b"\xe4\xbd\xa0\xe5\xa5\xbd", session_type=BD.SESSION_TYPE_GROUP)

        assert ack.session_type == BD.SESSION_TYPE_GROUP

    sent = parse(fake.of(BD.CID_MSG_DATA)[0], IM_Message.IMMsgData)
    assert sent.msg_type == BD.MSG_TYPE_GROUP_TEXT
    assert sent.msg_data.decode("utf-8") == "你好"


async def test_send_text_rejects_bad_input(fake):
    async with Client.connect("127.0.0.1", fake.port) as client:
        await client.login("alice", PASSWORD)
        with pytest.raises(ValueError):
            await client.send_text(2, "")
        with pytest.raises(ValueError):
            await client.send_text(0, "hi")
        with pytest.raises(ValueError):
            await client.send_text(2, "hi", session_type=3)
        with pytest.raises(TypeError):
            await client.send_text("2", "hi")

    assert fake.of(BD.CID_MSG_DATA) == []


async def test_send_text_nowait_ack_is_event(fake):
    async with Client.connect("127.0.0.1", fake.port) as client:
        await client.login("alice", PASSWORD)
        first = await client.send_text_nowait(2, "one")
        second = await client.send_text_nowait(2, "two")

        acks = [await client.next_event(SAFETY_TIMEOUT), await client.next_event(SAFETY_TIMEOUT)]

    assert second == first + 1
    assert [event.command_id for event in acks] == [BD.CID_MSG_DATA_ACK] * 2
    assert [event.seq_num for event in acks] == [first, second]
    assert [event.message.msg_id for event in acks] == [101, 102]


async def test_auto_ack_of_delivered_message(fake):
    async with Client.connect("127.0.0.1", fake.port) as client:
        await client.login("alice", PASSWORD)
        await fake.push(BD.SID_MSG, BD.CID_MSG_DATA, msg_data(2, 1, 7, "hi"))
        await fake.push(BD.SID_MSG, BD.CID_MSG_DATA, msg_data(3, 9, 41, "all", BD.MSG_TYPE_GROUP_TEXT))

        acks = await fake.wait_for(BD.CID_MSG_DATA_ACK, count=2)

    single = parse(acks[0], IM_Message.IMMsgDataAck)
    assert (single.user_id, single.session_id, single.msg_id) == (1, 2, 7)
    assert single.session_type == BD.SESSION_TYPE_SINGLE
    group = parse(acks[1], IM_Message.IMMsgDataAck)
    assert (group.user_id, group.session_id, group.msg_id) == (1, 9, 41)
    assert group.session_type == BD.SESSION_TYPE_GROUP


async def test_auto_ack_off_sends_nothing(fake):
    async with Client.connect("127.0.0.1", fake.port, auto_ack=False) as client:
        await client.login("alice", PASSWORD)
        await fake.push(BD.SID_MSG, BD.CID_MSG_DATA, msg_data(2, 1, 7, "hi"))
        await client.expect(BD.CID_MSG_DATA, timeout=SAFETY_TIMEOUT)
        # The connection is ordered: once this response is back, an ack sent
        # on delivery would have reached the server already.
        await client.client_time()

    assert fake.of(BD.CID_MSG_DATA_ACK) == []
    assert client.acks_sent == 0


async def test_read_ack_is_sent(fake):
    async with Client.connect("127.0.0.1", fake.port) as client:
        await client.login("alice", PASSWORD)
        await client.read_ack(2, 7)
        with pytest.raises(ValueError):
            await client.read_ack(2, 7, session_type=0)

        pdus = await fake.wait_for(BD.CID_MSG_READ_ACK)

    ack = parse(pdus[0], IM_Message.IMMsgDataReadAck)
    assert (ack.user_id, ack.session_id, ack.msg_id) == (1, 2, 7)
    assert ack.session_type == BD.SESSION_TYPE_SINGLE
    assert len(pdus) == 1


async def test_expect_sets_aside_other_events(fake):
    async with Client.connect("127.0.0.1", fake.port) as client:
        await client.login("alice", PASSWORD)
        await fake.push(BD.SID_MSG, BD.CID_MSG_READ_NOTIFY,
                        IM_Message.IMMsgDataReadNotify(user_id=1, session_id=2, msg_id=5, session_type=1))
        await fake.push(BD.SID_MSG, BD.CID_MSG_DATA, msg_data(2, 1, 6, "x"))
        await fake.push(BD.SID_MSG, BD.CID_MSG_DATA, msg_data(2, 1, 7, "y"))

        second = await client.expect(BD.CID_MSG_DATA, SAFETY_TIMEOUT, where=lambda msg: msg.msg_id == 7)
        first = await client.expect(BD.CID_MSG_DATA, SAFETY_TIMEOUT)
        notify = await client.expect(BD.CID_MSG_READ_NOTIFY, SAFETY_TIMEOUT)

        assert second.msg_data == b"y"
        assert first.msg_data == b"x"
        assert notify.msg_id == 5
        assert client.other_events == []


async def test_unknown_command_becomes_raw_event(fake):
    async with Client.connect("127.0.0.1", fake.port) as client:
        await client.login("alice", PASSWORD)
        await fake.push_raw(encode_pdu(BD.SID_OTHER, 0x07FF, b"\x01\x02"))

        event = await client.next_event(SAFETY_TIMEOUT)

        assert event.command_id == 0x07FF
        assert event.message is None
        assert event.body == b"\x01\x02"
        assert event.name == "command 0x07ff"


async def test_bad_push_body_is_dropped(fake):
    async with Client.connect("127.0.0.1", fake.port) as client:
        await client.login("alice", PASSWORD)
        await fake.push_raw(encode_pdu(BD.SID_MSG, BD.CID_MSG_DATA, b"\xff\xff\xff"))
        await fake.push(BD.SID_MSG, BD.CID_MSG_DATA, msg_data(2, 1, 7, "ok"))

        event = await client.next_event(SAFETY_TIMEOUT)

        assert event.message.msg_data == b"ok"
        assert client.bad_bodies == 1
        assert not client.closed


async def test_query_helpers_fill_user_id(fake):
    fake.history[2] = [
        BD.MsgInfo(msg_id=1, from_session_id=2, create_time=1_700_000_000, msg_type=1, msg_data=b"a"),
        BD.MsgInfo(msg_id=2, from_session_id=1, create_time=1_700_000_001, msg_type=1, msg_data=b"b"),
    ]
    async with Client.connect("127.0.0.1", fake.port) as client:
        await client.login("alice", PASSWORD)

        assert await client.client_time() == 1_700_000_123
        assert await client.latest_msg_id(2) == 2
        listing = await client.message_list(2, BD.SESSION_TYPE_SINGLE, 0, 10)
        assert [msg.msg_id for msg in listing.msg_list] == [2, 1]
        by_id = await client.messages_by_id(2, BD.SESSION_TYPE_SINGLE, [1])
        assert [msg.msg_data for msg in by_id.msg_list] == [b"a"]
        users = await client.users_info([2, 99])
        assert [user.user_id for user in users.user_info_list] == [2]
        everyone = await client.all_users()
        assert len(everyone.user_list) == len(USERS)
        unread = await client.unread_counts()
        assert unread.total_cnt == 0
        sessions = await client.recent_sessions()
        assert list(sessions.contact_session_list) == []
        with pytest.raises(ValueError):
            await client.message_list(2, BD.SESSION_TYPE_SINGLE, 0, 0)

    request = parse(fake.of(BD.CID_MSG_LIST_REQUEST)[0], IM_Message.IMGetMsgListReq)
    assert request.user_id == 1
    assert request.msg_cnt == 10
    assert parse(fake.of(BD.CID_BUDDY_LIST_ALL_USER_REQUEST)[0], IM_Buddy.IMAllUserReq).user_id == 1
    assert parse(fake.of(BD.CID_MSG_UNREAD_CNT_REQUEST)[0], IM_Message.IMUnreadMsgCntReq).user_id == 1


async def test_request_timeout_raises(fake, autojump_clock):
    fake.silent.add(BD.CID_MSG_TIME_REQUEST)
    async with Client.connect("127.0.0.1", fake.port, heartbeat_interval=None) as client:
        with pytest.raises(ClientTimeout):
            await client.client_time(timeout=5)

        assert client.pending_count == 0
        assert not client.closed


async def test_request_unknown_response_needs_class(fake):
    async with Client.connect("127.0.0.1", fake.port) as client:
        with pytest.raises(ValueError):
            await client.request(BD.SID_MSG, BD.CID_MSG_TIME_REQUEST, IM_Message.IMClientTimeReq(), 0x03FF)


async def test_seq_num_wraps_and_skips_zero(fake):
    async with Client.connect("127.0.0.1", fake.port, first_seq_num=65534) as client:
        for _ in range(3):
            assert await client.client_time() == 1_700_000_123

    assert [pdu.seq_num for pdu in fake.of(BD.CID_MSG_TIME_REQUEST)] == [65534, 65535, 1]


async def test_seq_num_skips_pending(fake):
    fake.silent.add(BD.CID_MSG_LIST_REQUEST)
    async with Client.connect("127.0.0.1", fake.port, first_seq_num=65535) as client:
        async with trio.open_nursery() as nursery:
            async def stuck_request():
                with pytest.raises(ConnectionClosed):
                    await client.message_list(2, timeout=SAFETY_TIMEOUT)

            nursery.start_soon(stuck_request)
            await fake.wait_for(BD.CID_MSG_LIST_REQUEST)
            client._seq_num = 65534  # the next candidate, 65535, is still pending
            await client.client_time()
            await client.aclose()

    assert fake.of(BD.CID_MSG_LIST_REQUEST)[0].seq_num == 65535
    assert fake.of(BD.CID_MSG_TIME_REQUEST)[0].seq_num == 1


# ----------------------------------------------------------------------
# Heartbeat and closing


async def test_heartbeat_sent_every_interval(fake, autojump_clock):
    async with Client.connect("127.0.0.1", fake.port) as client:
        await client.login("alice", PASSWORD)
        await trio.sleep(29)
        assert client.heartbeats_sent == 0
        await trio.sleep(2)
        assert client.heartbeats_sent == 1

        heartbeats = await fake.wait_for(BD.CID_OTHER_HEARTBEAT, count=2, timeout=100)
        # The fake echoes each heartbeat before it responds to this request.
        await client.client_time()

        assert client.heartbeats_sent == 2
        assert client.heartbeats_received == 2
    assert [pdu.seq_num for pdu in heartbeats] == [0, 0]


async def test_heartbeat_disabled(fake, autojump_clock):
    async with Client.connect("127.0.0.1", fake.port, heartbeat_interval=None) as client:
        await trio.sleep(100)
        await client.client_time()

    assert fake.of(BD.CID_OTHER_HEARTBEAT) == []


async def test_server_close_sets_closed(fake):
    fake.silent.add(BD.CID_MSG_UNREAD_CNT_REQUEST)
    async with Client.connect("127.0.0.1", fake.port) as client:
        await client.login("alice", PASSWORD)
        async with trio.open_nursery() as nursery:
            async def waiting_request():
                with pytest.raises(ConnectionClosed):
                    await client.unread_counts(timeout=SAFETY_TIMEOUT)

            nursery.start_soon(waiting_request)
            await fake.wait_for(BD.CID_MSG_UNREAD_CNT_REQUEST)
            await fake.close_all()

        reason = await client.wait_closed(SAFETY_TIMEOUT)

        assert client.closed
        assert reason == "server closed the connection"
        with pytest.raises(ConnectionClosed):
            await client.client_time()
        with pytest.raises(ConnectionClosed):
            await client.next_event(SAFETY_TIMEOUT)


async def test_kick_sets_reason(fake):
    async with Client.connect("127.0.0.1", fake.port) as client:
        await client.login("alice", PASSWORD)
        await fake.push(BD.SID_LOGIN, BD.CID_LOGIN_KICK_USER,
                        IM_Login.IMKickUser(user_id=1, kick_reason=BD.KICK_REASON_DUPLICATE_USER))
        kick = await client.expect(BD.CID_LOGIN_KICK_USER, SAFETY_TIMEOUT)
        await fake.close_all()

        reason = await client.wait_closed(SAFETY_TIMEOUT)

        assert kick.kick_reason == BD.KICK_REASON_DUPLICATE_USER
        assert client.kick_reason == BD.KICK_REASON_DUPLICATE_USER
        assert "KICK_REASON_DUPLICATE_USER" in reason


async def test_oversized_pdu_closes(fake):
    async with Client.connect("127.0.0.1", fake.port, max_pdu_length=1024) as client:
        await client.login("alice", PASSWORD)
        await fake.push_raw(encode_pdu(BD.SID_MSG, BD.CID_MSG_DATA, bytes(2000)))

        reason = await client.wait_closed(SAFETY_TIMEOUT)

        assert reason.startswith("protocol error")


async def test_wait_closed_timeout(fake, autojump_clock):
    async with Client.connect("127.0.0.1", fake.port, heartbeat_interval=None) as client:
        with pytest.raises(ClientTimeout):
            await client.wait_closed(5)


async def test_logout_then_server_closes(fake):
    async with Client.connect("127.0.0.1", fake.port) as client:
        await client.login("alice", PASSWORD)
        response = await client.logout()

        await client.wait_closed(SAFETY_TIMEOUT)

        assert response.result_code == 0


async def test_exit_flushes_queued_read_ack(fake):
    async with Client.connect("127.0.0.1", fake.port) as client:
        await client.login("alice", PASSWORD)
        await client.read_ack(2, 9)

    pdus = await fake.wait_for(BD.CID_MSG_READ_ACK)
    assert parse(pdus[0], IM_Message.IMMsgDataReadAck).msg_id == 9


async def test_error_in_block_propagates_unwrapped(fake):
    with pytest.raises(KeyError):
        async with Client.connect("127.0.0.1", fake.port) as client:
            await client.login("alice", PASSWORD)
            raise KeyError("boom")

    assert client.closed
    assert client.close_reason == "closed by the client"


# ----------------------------------------------------------------------
# login_server look-up


async def test_fetch_msg_server_good_json(nursery):
    port, requests = await serve_http_once(nursery, http_json(msg_server_json(8000)))

    info = await fetch_msg_server("127.0.0.1", port)

    assert info["priorIP"] == "127.0.0.1"
    assert info["port"] == "8000"
    assert info["msfsPrior"] == "http://127.0.0.1:8700/"
    assert requests[0].startswith(b"GET /msg_server HTTP/1.1\r\n")
    assert b"\r\nConnection: close\r\n" in requests[0]


async def test_fetch_msg_server_without_content_length(nursery):
    body = json.dumps(msg_server_json(8000)).encode()
    port, _ = await serve_http_once(nursery, b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n" + body)

    info = await fetch_msg_server("127.0.0.1", port)

    assert info["port"] == "8000"


async def test_fetch_msg_server_chunked(nursery):
    body = json.dumps(msg_server_json(8000)).encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    port, _ = await serve_http_once(nursery, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked)

    info = await fetch_msg_server("127.0.0.1", port)

    assert info["port"] == "8000"


async def test_fetch_msg_server_code_one(nursery):
    port, _ = await serve_http_once(nursery, http_json({"code": 1, "msg": "没有msg_server"}))

    with pytest.raises(MsgServerUnavailable) as info:
        await fetch_msg_server("127.0.0.1", port)

    assert info.value.code == 1
    assert info.value.message == "没有msg_server"


@pytest.mark.parametrize("response", [
    b"garbage without any HTTP",
    b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nnot json!",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]",
    b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"code\": 0}",
    http_json({"code": "0", "priorIP": "127.0.0.1", "port": "8000"}),
    http_json({"code": 0, "port": "8000"}),
    http_json({"code": 0, "priorIP": "127.0.0.1", "port": "eighty"}),
    http_json({"code": 0, "priorIP": "127.0.0.1", "port": "70000"}),
    b"",
], ids=["no-http", "not-json", "not-object", "short-body", "string-code", "no-ip", "bad-port", "port-range",
        "empty"])
async def test_fetch_msg_server_garbage(nursery, response):
    port, _ = await serve_http_once(nursery, response)

    with pytest.raises(ClientError):
        await fetch_msg_server("127.0.0.1", port)


async def test_fetch_msg_server_http_404(nursery):
    response = b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found"
    port, _ = await serve_http_once(nursery, response)

    with pytest.raises(ClientError) as info:
        await fetch_msg_server("127.0.0.1", port)

    assert "404" in str(info.value)
    assert not isinstance(info.value, MsgServerUnavailable)


async def test_fetch_msg_server_timeout(nursery, autojump_clock):
    async def never_answer(stream):
        await trio.sleep_forever()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, never_answer, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]

    with pytest.raises(ClientTimeout):
        await fetch_msg_server("127.0.0.1", port, timeout=5)


async def test_fetch_msg_server_tcp_ok(fake):
    response = await fetch_msg_server_tcp("127.0.0.1", fake.port)

    assert response.prior_ip == "127.0.0.1"
    assert response.port == fake.port
    assert fake.of(BD.CID_LOGIN_REQ_MSGSERVER)[0].seq_num == 1


async def test_fetch_msg_server_tcp_refused(fake):
    fake.msg_serv_result = BD.REFUSE_REASON_NO_MSG_SERVER

    with pytest.raises(MsgServerUnavailable) as info:
        await fetch_msg_server_tcp("127.0.0.1", fake.port)

    assert info.value.code == BD.REFUSE_REASON_NO_MSG_SERVER


async def test_fetch_msg_server_tcp_closed_early(fake):
    async def close_on_request(stream, pdu):
        await stream.aclose()

    fake.on_0x0101 = close_on_request  # replaces the answering handler

    with pytest.raises(ClientError):
        await fetch_msg_server_tcp("127.0.0.1", fake.port)


async def test_open_client_logs_in(nursery, fake):
    port, _ = await serve_http_once(nursery, http_json(msg_server_json(fake.port)))

    async with open_client("127.0.0.1", port, "bob", PASSWORD) as client:
        assert client.user_id == 2
        assert client.port == fake.port


async def test_open_client_login_refused(nursery, fake):
    port, _ = await serve_http_once(nursery, http_json(msg_server_json(fake.port)))

    with pytest.raises(LoginRefused):
        async with open_client("127.0.0.1", port, "bob", "wrong"):
            pass


# ----------------------------------------------------------------------
# Terminal chat


def chat_args(*argv):
    parser = argparse.ArgumentParser(prog="teamtalk")
    subparsers = parser.add_subparsers(dest="command")
    chat.add_chat_command(subparsers)
    return parser.parse_args(["chat", *argv])


@pytest.fixture
def english(monkeypatch):
    monkeypatch.delenv("LC_ALL", raising=False)
    monkeypatch.delenv("LC_MESSAGES", raising=False)
    monkeypatch.setenv("LANG", "en_US.UTF-8")


class WatchedOutput(io.StringIO):
    """A StringIO whose readers can wait until a text has been written."""

    def __init__(self):
        super().__init__()
        self._changed = trio.Event()

    def write(self, text):
        written = super().write(text)
        self._changed.set()
        self._changed = trio.Event()
        return written

    async def wait_for(self, text, count=1):
        with trio.fail_after(SAFETY_TIMEOUT):
            while self.getvalue().count(text) < count:
                await self._changed.wait()


async def run_scripted_chat(args, text):
    """Run the chat with ``text`` as its whole input; return (exit status, output)."""
    send_stream, receive_stream = trio.testing.memory_stream_one_way_pair()
    await send_stream.send_all(text.encode("utf-8"))
    await send_stream.aclose()
    output = io.StringIO()
    with trio.fail_after(SAFETY_TIMEOUT):
        status = await chat.run_chat(args, stdin=receive_stream, stdout=output)
    return status, output.getvalue()


async def test_chat_sends_to_peer(fake, english):
    args = chat_args("--msg-server", f"127.0.0.1:{fake.port}", "--user", "alice", "--password", PASSWORD)

    status, output = await run_scripted_chat(args, "/to 2\nhello\n/quit\n")

    assert status == 0
    sent = parse(fake.of(BD.CID_MSG_DATA)[0], IM_Message.IMMsgData)
    assert sent.to_session_id == 2
    assert sent.msg_data == b"hello"
    assert "Logged in as Alice (user id 1)" in output
    assert "Now talking to Bob (2)." in output
    assert "sent (msg_id 101)" in output
    assert "Bye." in output
    assert len(fake.of(BD.CID_LOGIN_REQ_LOGINOUT)) == 1


async def test_chat_chinese_locale(fake, monkeypatch):
    monkeypatch.delenv("LC_ALL", raising=False)
    monkeypatch.delenv("LC_MESSAGES", raising=False)
    monkeypatch.setenv("LANG", "zh_CN.UTF-8")
    args = chat_args("--msg-server", f"127.0.0.1:{fake.port}", "--user", "alice", "--password", PASSWORD)

    status, output = await run_scripted_chat(args, "/to 2\n你好\n/quit\n")

    assert status == 0
    assert parse(fake.of(BD.CID_MSG_DATA)[0], IM_Message.IMMsgData).msg_data == "你好".encode("utf-8")
    assert "已登录：Alice（用户 ID 1）" in output
    assert "现在与 Bob（2）聊天。" in output
    assert "已发送（msg_id 101）" in output
    assert "再见。" in output
    assert "Logged in" not in output


@pytest.mark.parametrize("language", ["en", "zh"])
async def test_chat_send_without_ack(fake, language, autojump_clock):
    expected = {"en": "No acknowledgement from the server within 3 s; the message may not have been delivered.",
                "zh": "服务器在 3 秒内没有确认收到，消息可能没有送达。"}[language]
    fake.silent.add(BD.CID_MSG_DATA)
    args = chat_args("--msg-server", f"127.0.0.1:{fake.port}", "--user", "alice", "--password", PASSWORD,
                     "--lang", language, "--timeout", "3")

    status, output = await run_scripted_chat(args, "/to 2\nhello\n/quit\n")

    assert status == 0
    assert expected in output
    assert "IMMsgDataAck" not in output
    assert "seq_num" not in output
    assert len(fake.of(BD.CID_MSG_DATA)) == 1


async def test_chat_send_failure_keeps_error(nursery, fake, english):
    args = chat_args("--msg-server", f"127.0.0.1:{fake.port}", "--user", "alice", "--password", PASSWORD)
    fake.silent.add(BD.CID_MSG_DATA)
    send_stream, receive_stream = trio.testing.memory_stream_one_way_pair()
    output = io.StringIO()

    async def close_when_sent():
        await fake.wait_for(BD.CID_MSG_DATA)
        await fake.close_all()

    nursery.start_soon(close_when_sent)
    await send_stream.send_all(b"/to 2\nhello\n")
    with trio.fail_after(SAFETY_TIMEOUT):
        status = await chat.run_chat(args, stdin=receive_stream, stdout=output)

    assert status == 1
    assert "Not sent: connection closed: server closed the connection" in output.getvalue()


async def test_chat_via_login_server(nursery, fake, english):
    port, requests = await serve_http_once(nursery, http_json(msg_server_json(fake.port)))
    args = chat_args("--http-port", str(port), "--user", "bob", "--password", PASSWORD)

    status, output = await run_scripted_chat(args, "/quit\n")

    assert status == 0
    assert len(requests) == 1
    assert "Logged in as Bob (user id 2)" in output


async def test_chat_password_from_input(fake, english):
    args = chat_args("--msg-server", f"127.0.0.1:{fake.port}", "--user", "alice")

    status, output = await run_scripted_chat(args, f"{PASSWORD}\n/quit\n")

    assert status == 0
    assert output.startswith("Password: ")
    assert "Logged in as Alice" in output


async def test_chat_login_refused(fake, english):
    args = chat_args("--msg-server", f"127.0.0.1:{fake.port}", "--user", "alice", "--password", "wrong")

    status, output = await run_scripted_chat(args, "/quit\n")

    assert status == 1
    assert "Login rejected: wrong user name or password (code 6)." in output
    assert "用户名" not in output


async def test_chat_login_refused_in_chinese(fake, monkeypatch):
    monkeypatch.setenv("LC_ALL", "zh_CN.UTF-8")
    args = chat_args("--msg-server", f"127.0.0.1:{fake.port}", "--user", "alice", "--password", "wrong")

    status, output = await run_scripted_chat(args, "/quit\n")

    assert status == 1
    assert "登录被拒绝：用户名或密码错误（错误码 6）。" in output


def reject_login_with(fake, result_code, result_string):
    async def refuse(stream, pdu):
        response = IM_Login.IMLoginRes(server_time=1_700_000_000, result_code=result_code,
                                       result_string=result_string)
        await fake.reply(stream, pdu, BD.CID_LOGIN_RES_USERLOGIN, response)
        await stream.aclose()

    fake.on_0x0103 = refuse  # replaces the handler that accepts PASSWORD


@pytest.mark.parametrize("code, english_text, chinese_text", [
    (BD.REFUSE_REASON_NO_MSG_SERVER, "no msg_server is available", "没有可用的消息服务器"),
    (BD.REFUSE_REASON_MSG_SERVER_FULL, "every msg_server is full", "所有消息服务器都已满"),
    (BD.REFUSE_REASON_NO_DB_SERVER, "msg_server cannot reach db_proxy_server; try again later",
     "消息服务器连不上数据库代理服务器，请稍后再试"),
    (BD.REFUSE_REASON_NO_LOGIN_SERVER, "msg_server cannot reach login_server; try again later",
     "消息服务器连不上登录服务器，请稍后再试"),
    (BD.REFUSE_REASON_NO_ROUTE_SERVER, "msg_server cannot reach route_server; try again later",
     "消息服务器连不上路由服务器，请稍后再试"),
    (BD.REFUSE_REASON_DB_VALIDATE_FAILED, "wrong user name or password", "用户名或密码错误"),
    (BD.REFUSE_REASON_VERSION_TOO_OLD, "this client version is too old", "客户端版本太旧"),
])
@pytest.mark.parametrize("language", ["en", "zh"])
async def test_chat_login_refused_codes_translated(fake, code, english_text, chinese_text, language):
    reject_login_with(fake, code, "服务器的原文")
    args = chat_args("--msg-server", f"127.0.0.1:{fake.port}", "--user", "alice", "--password", PASSWORD,
                     "--lang", language)

    status, output = await run_scripted_chat(args, "")

    assert status == 1
    if language == "en":
        assert f"Login rejected: {english_text} (code {code})." in output
    else:
        assert f"登录被拒绝：{chinese_text}（错误码 {code}）。" in output
    assert "服务器的原文" not in output


def test_refuse_reason_unknown_code():
    # IMLoginRes.result_code is a proto2 enum, so a code outside ResultType
    # cannot arrive in it today; login_server's HTTP code can (see below).
    english = chat.Screen(io.StringIO(), "en")
    chinese = chat.Screen(io.StringIO(), "zh")

    assert chat.refuse_reason(english, 42, "账号已冻结") == "账号已冻结"
    assert chat.refuse_reason(english, 42, "") == "no reason given"
    assert chat.refuse_reason(chinese, 42, "") == "服务器没有说明原因"
    assert chat.refuse_reason(english, BD.REFUSE_REASON_DB_VALIDATE_FAILED, "用户名或密码错误") == \
        "wrong user name or password"


@pytest.mark.parametrize("code, reason", [(1, "no msg_server is available"), (2, "every msg_server is full"),
                                          (9, "维护中")])
async def test_chat_login_server_without_msg_server(nursery, english, code, reason):
    port, _ = await serve_http_once(nursery, http_json({"code": code, "msg": "维护中"}))
    args = chat_args("--http-port", str(port), "--user", "alice", "--password", PASSWORD)

    status, output = await run_scripted_chat(args, "")

    assert status == 1
    assert f"login_server 127.0.0.1:{port} has no msg_server to offer: {reason} (code {code})." in output


async def test_chat_no_login_server(english):
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()
    args = chat_args("--http-port", str(port), "--user", "alice", "--password", PASSWORD)

    status, output = await run_scripted_chat(args, "")

    assert status == 1
    assert "Error: cannot connect to login_server" in output
    assert "does not answer HTTP" not in output


def test_chat_login_port_alias():
    assert chat_args("--user", "alice").http_port == 8080
    assert chat_args("--user", "alice", "--http-port", "9080").http_port == 9080
    assert chat_args("--user", "alice", "--login-port", "9081").http_port == 9081
    assert not hasattr(chat_args("--user", "alice", "--login-port", "9081"), "login_port")


def test_chat_help_names_http_port():
    parser = argparse.ArgumentParser(prog="teamtalk")
    chat_parser = chat.add_chat_command(parser.add_subparsers())

    text = " ".join(chat_parser.format_help().split())

    assert "--http-port HTTP_PORT login_server's HTTP port" in text
    assert "--login-port" not in text


@pytest.mark.parametrize("port", ["0", "65536", "http", "-1", ""])
@pytest.mark.parametrize("option", ["--http-port", "--login-port"])
def test_chat_port_option_rejects_bad_port(option, port, capsys):
    with pytest.raises(SystemExit):
        chat_args("--user", "alice", option, port)

    assert "expected a port from 1 to 65535" in capsys.readouterr().err


async def test_chat_pdu_port_not_http(nursery, english):
    from teamtalk.login_server.server import LoginServer

    login = LoginServer(client_host="127.0.0.1", client_port=0, http_host="127.0.0.1", http_port=0,
                        msg_server_host="127.0.0.1", msg_server_port=0)
    await nursery.start(login.run)
    pdu_port = login.client_listener.port
    args = chat_args("--http-port", str(pdu_port), "--user", "alice", "--password", PASSWORD)

    status, output = await run_scripted_chat(args, "")

    assert status == 1
    assert (f"Error: 127.0.0.1:{pdu_port} does not answer HTTP. Give login_server's HTTP port "
            "(HttpPort in loginserver.conf, default 8080) with --http-port.") in output


@pytest.mark.parametrize("response", [
    b"",
    encode_message(BD.SID_LOGIN, BD.CID_LOGIN_RES_MSGSERVER, IM_Login.IMMsgServRsp(result_code=0)),
    b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
], ids=["closed", "pdu", "other-protocol"])
async def test_chat_non_http_answer(nursery, english, response):
    port, _ = await serve_http_once(nursery, response)
    args = chat_args("--http-port", str(port), "--user", "alice", "--password", PASSWORD, "--lang", "zh")

    status, output = await run_scripted_chat(args, "")

    assert status == 1
    assert f"出错了：127.0.0.1:{port} 没有以 HTTP 应答。请用 --http-port 指定登录服务器的 HTTP 端口" in output


async def test_chat_http_404_keeps_error(nursery, english):
    port, _ = await serve_http_once(nursery, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    args = chat_args("--http-port", str(port), "--user", "alice", "--password", PASSWORD)

    status, output = await run_scripted_chat(args, "")

    assert status == 1
    assert "returned HTTP status 404" in output
    assert "does not answer HTTP" not in output


async def test_chat_shows_offline_messages_and_read_acks(fake, english):
    fake.unread = [BD.UnreadInfo(session_id=2, session_type=1, unread_cnt=2, latest_msg_id=12,
                                 latest_msg_data=b"second", latest_msg_type=1, latest_msg_from_user_id=2)]
    fake.sessions = [BD.ContactSessionInfo(session_id=2, session_type=1, session_status=0,
                                           updated_time=1_700_000_100, latest_msg_id=12,
                                           latest_msg_data=b"second", latest_msg_type=1,
                                           latest_msg_from_user_id=2)]
    fake.history[2] = [
        BD.MsgInfo(msg_id=11, from_session_id=2, create_time=1_700_000_000, msg_type=1, msg_data=b"first"),
        BD.MsgInfo(msg_id=12, from_session_id=2, create_time=1_700_000_050, msg_type=1, msg_data=b"second"),
    ]
    args = chat_args("--msg-server", f"127.0.0.1:{fake.port}", "--user", "alice", "--password", PASSWORD)

    status, output = await run_scripted_chat(args, "/to bob\n/quit\n")

    assert status == 0
    assert "Recent sessions:\n  Bob (2) [2 unread]: second" in output
    assert "Unread messages from Bob (2):" in output
    assert output.index("Bob: first") < output.index("Bob: second")
    read_ack = parse(fake.of(BD.CID_MSG_READ_ACK)[0], IM_Message.IMMsgDataReadAck)
    assert (read_ack.session_id, read_ack.msg_id) == (2, 12)


async def test_chat_prints_incoming_and_read_acks(nursery, fake, english):
    args = chat_args("--msg-server", f"127.0.0.1:{fake.port}", "--user", "alice", "--password", PASSWORD)
    send_stream, receive_stream = trio.testing.memory_stream_one_way_pair()
    output = io.StringIO()
    done = trio.Event()
    statuses = []

    async def run():
        statuses.append(await chat.run_chat(args, stdin=receive_stream, stdout=output))
        done.set()

    nursery.start_soon(run)
    # /unread after /to makes a request we can wait for: then /to has run.
    await send_stream.send_all(b"/to 2\n/unread\n")
    await fake.wait_for(BD.CID_MSG_UNREAD_CNT_REQUEST, count=2)
    await fake.push(BD.SID_MSG, BD.CID_MSG_DATA, msg_data(2, 1, 30, "hi there"))
    await fake.push(BD.SID_MSG, BD.CID_MSG_DATA, msg_data(3, 1, 5, "psst"))
    read_acks = await fake.wait_for(BD.CID_MSG_READ_ACK)
    await send_stream.send_all(b"/quit\n")
    with trio.fail_after(SAFETY_TIMEOUT):
        await done.wait()

    text = output.getvalue()
    assert statuses == [0]
    assert "Bob: hi there" in text
    assert "小红: psst" in text
    assert "No unread messages." in text
    read_ack = parse(read_acks[0], IM_Message.IMMsgDataReadAck)
    assert (read_ack.session_id, read_ack.msg_id) == (2, 30)
    assert len(fake.of(BD.CID_MSG_READ_ACK)) == 1
    assert len(fake.of(BD.CID_MSG_DATA_ACK)) == 2


async def test_chat_history_oldest_first(fake, english):
    fake.history[2] = [
        BD.MsgInfo(msg_id=1, from_session_id=1, create_time=1_700_000_000, msg_type=1, msg_data=b"ping"),
        BD.MsgInfo(msg_id=2, from_session_id=2, create_time=1_700_000_010, msg_type=1, msg_data=b"pong"),
        BD.MsgInfo(msg_id=3, from_session_id=1, create_time=1_700_000_020, msg_type=1, msg_data=b"again"),
    ]
    args = chat_args("--msg-server", f"127.0.0.1:{fake.port}", "--user", "alice", "--password", PASSWORD)

    status, output = await run_scripted_chat(args, "/to 2\n/history 2\n/history 0\n/history x\n/quit\n")

    assert status == 0
    assert "Last 2 messages with Bob:" in output
    assert output.index("Bob: pong") < output.index("me → Bob: again")
    assert "ping" not in output
    assert output.count("/history takes a number from 1 to 200") == 2
    assert parse(fake.of(BD.CID_MSG_READ_ACK)[0], IM_Message.IMMsgDataReadAck).msg_id == 3
    request = parse(fake.of(BD.CID_MSG_LIST_REQUEST)[0], IM_Message.IMGetMsgListReq)
    assert (request.session_id, request.msg_cnt) == (2, 2)


async def test_chat_bad_commands(fake, english):
    args = chat_args("--msg-server", f"127.0.0.1:{fake.port}", "--user", "alice", "--password", PASSWORD)

    script = "hello\n/history\n/bogus\n/to nobody\n/to bo\n/to alice\n/to\n/help\n"
    status, output = await run_scripted_chat(args, script)

    assert status == 0
    assert output.count("Choose a user first: /to NAME_OR_ID") == 2
    assert "Unknown command /bogus." in output
    assert "No user matches 'nobody'." in output
    assert "'bo' matches several users: Bob (2), Bobby (4)." in output
    assert "You cannot send messages to yourself." in output
    assert "Usage: /to NAME_OR_ID" in output
    assert "/history [N]" in output
    assert "Bye." in output
    assert fake.of(BD.CID_MSG_DATA) == []


async def test_chat_finds_user_by_name(fake, english):
    args = chat_args("--msg-server", f"127.0.0.1:{fake.port}", "--user", "alice", "--password", PASSWORD)

    status, output = await run_scripted_chat(args, "/to 王小红\n//slash\n/quit\n")

    assert status == 0
    assert "Now talking to 小红 (3)." in output
    sent = parse(fake.of(BD.CID_MSG_DATA)[0], IM_Message.IMMsgData)
    assert (sent.to_session_id, sent.msg_data) == (3, b"/slash")


async def test_chat_server_close_ends_chat(nursery, fake, english):
    args = chat_args("--msg-server", f"127.0.0.1:{fake.port}", "--user", "alice", "--password", PASSWORD)
    send_stream, receive_stream = trio.testing.memory_stream_one_way_pair()
    output = io.StringIO()

    async def close_after_login():
        await fake.wait_for(BD.CID_MSG_UNREAD_CNT_REQUEST)
        await fake.close_all()

    nursery.start_soon(close_after_login)
    with trio.fail_after(SAFETY_TIMEOUT):
        status = await chat.run_chat(args, stdin=receive_stream, stdout=output)

    assert status == 1
    assert "Connection closed: server closed the connection" in output.getvalue()


async def test_chat_aes_roundtrip(fake, english):
    key = "12345678901234567890123456789012"
    args = chat_args("--msg-server", f"127.0.0.1:{fake.port}", "--user", "alice", "--password", PASSWORD,
                     "--aes-key", key)
    codec = chat.AesCodec(key.encode())
    fake.history[2] = [BD.MsgInfo(msg_id=1, from_session_id=2, create_time=1_700_000_000, msg_type=1,
                                  msg_data=codec.encode("secret note"))]

    status, output = await run_scripted_chat(args, "/to 2\nhello\n/history\n/quit\n")

    assert status == 0
    sent = parse(fake.of(BD.CID_MSG_DATA)[0], IM_Message.IMMsgData)
    assert sent.msg_data != b"hello"
    assert codec.decode(sent.msg_data) == "hello"
    assert "Bob: secret note" in output


async def test_chat_aes_bad_key(english):
    args = chat_args("--msg-server", "127.0.0.1:1", "--user", "alice", "--password", PASSWORD,
                     "--aes-key", "short")

    status, output = await run_scripted_chat(args, "")

    assert status == 2
    assert "--aes-key must be 32 bytes long (AES-256), not 5." in output


@pytest.mark.parametrize("length", [1, 12, 13, 15, 16, 17, 28, 29, 32, 100])
def test_aes_codec_layout(length):
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = b"k" * 32
    text = "x" * length
    encoded = chat.AesCodec(key).encode(text)

    raw = base64.b64decode(encoded)
    decryptor = Cipher(algorithms.AES(key), modes.ECB()).decryptor()
    plain = decryptor.update(raw) + decryptor.finalize()
    assert len(raw) % 16 == 0
    assert plain[:length] == text.encode()
    assert set(plain[length:-4]) <= {0}
    assert int.from_bytes(plain[-4:], "big") == length
    assert len(raw) - length >= 4
    assert chat.AesCodec(key).decode(encoded) == text


@pytest.mark.parametrize("data", [b"not base64 !", b"", base64.b64encode(b"short"),
                                  base64.b64encode(b"\xff" * 32)])
def test_aes_codec_rejects_garbage(data):
    assert chat.AesCodec(b"k" * 32).decode(data) is None


def test_aes_codec_rejects_bad_key():
    with pytest.raises(ValueError):
        chat.AesCodec(b"k" * 16)


@pytest.mark.parametrize("environ, expected", [
    ({"LANG": "zh_CN.UTF-8"}, "zh"),
    ({"LANG": "zh_TW.UTF-8"}, "zh"),
    ({"LANG": "en_US.UTF-8"}, "en"),
    ({}, "en"),
    ({"LC_ALL": "C", "LANG": "zh_CN.UTF-8"}, "en"),
    ({"LC_MESSAGES": "zh_CN.UTF-8", "LANG": "en_US.UTF-8"}, "zh"),
    ({"LC_ALL": "", "LANG": "zh_CN.UTF-8"}, "zh"),
])
def test_choose_language_from_locale(environ, expected):
    assert chat.choose_language("auto", environ) == expected


def test_choose_language_explicit():
    assert chat.choose_language("zh", {"LANG": "en_US.UTF-8"}) == "zh"
    assert chat.choose_language("en", {"LANG": "zh_CN.UTF-8"}) == "en"


def test_texts_have_same_keys():
    assert set(chat.TEXTS["en"]) == set(chat.TEXTS["zh"])


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:8000", ("127.0.0.1", 8000)),
    ("[::1]:8000", ("::1", 8000)),
    ("example:1", ("example", 1)),
])
def test_parse_host_port_valid(text, expected):
    assert chat.parse_host_port(text) == expected


@pytest.mark.parametrize("text", ["8000", ":8000", "host:", "host:0", "host:65536", "host:http"])
def test_parse_host_port_invalid(text):
    with pytest.raises(argparse.ArgumentTypeError):
        chat.parse_host_port(text)


async def test_chat_runs_from_teamtalk_command(fake, english, capsys, monkeypatch):
    from teamtalk import cli

    monkeypatch.setattr(sys, "stdin", io.StringIO("/to 2\nhello\n"))
    argv = ["chat", "--msg-server", f"127.0.0.1:{fake.port}", "--user", "alice", "--password", PASSWORD]
    # The command makes its own Trio run, so it runs in a thread. It reads
    # sys.stdin in a worker thread until the end of input, which quits.
    status = await trio.to_thread.run_sync(cli.main, argv)

    assert status == 0
    assert parse(fake.of(BD.CID_MSG_DATA)[0], IM_Message.IMMsgData).msg_data == b"hello"
    output = capsys.readouterr().out
    assert "Logged in as Alice (user id 1)" in output
    assert "sent (msg_id 101)" in output
    assert output.rstrip().endswith("Bye.")


# ----------------------------------------------------------------------
# Ctrl-C


class InterruptibleChat:
    """A chat running in a nursery, with input that stays open and a channel that stands for Ctrl-C."""

    def __init__(self, args):
        self.args = args
        self.output = WatchedOutput()
        self.statuses = []
        self._done = trio.Event()
        self._input, self._stdin = trio.testing.memory_stream_one_way_pair()
        self._send_interrupt, self._interrupts = trio.open_memory_channel(10)

    def start(self, nursery):
        nursery.start_soon(self._run)

    async def _run(self):
        self.statuses.append(await chat.run_chat(self.args, stdin=self._stdin, stdout=self.output,
                                                 interrupts=self._interrupts))
        self._done.set()

    async def type(self, text):
        await self._input.send_all(text.encode("utf-8"))

    async def interrupt(self):
        await self._send_interrupt.send(signal.SIGINT)

    async def finished(self):
        """Wait for the chat to end; return its output."""
        with trio.fail_after(SAFETY_TIMEOUT):
            await self._done.wait()
        return self.output.getvalue()


async def test_chat_interrupt_in_input_loop_logs_out(nursery, fake, english):
    live = InterruptibleChat(chat_args("--msg-server", f"127.0.0.1:{fake.port}", "--user", "alice",
                                       "--password", PASSWORD))
    live.start(nursery)
    await live.type("/unread\n")
    await live.output.wait_for("No unread messages.")

    await live.interrupt()
    output = await live.finished()

    assert live.statuses == [0]
    assert output.endswith("No unread messages.\n\nBye.\n")
    assert "Interrupted." not in output
    assert len(fake.of(BD.CID_LOGIN_REQ_LOGINOUT)) == 1


async def test_chat_interrupt_at_start_up(nursery, fake, english):
    fake.silent.add(BD.CID_MSG_UNREAD_CNT_REQUEST)
    live = InterruptibleChat(chat_args("--msg-server", f"127.0.0.1:{fake.port}", "--user", "alice",
                                       "--password", PASSWORD))
    live.start(nursery)
    await fake.wait_for(BD.CID_MSG_UNREAD_CNT_REQUEST)

    await live.interrupt()
    output = await live.finished()

    assert live.statuses == [0]
    assert "Logged in as Alice" in output
    assert output.endswith("\nBye.\n")
    assert "Type /help" not in output
    assert len(fake.of(BD.CID_LOGIN_REQ_LOGINOUT)) == 1


async def test_chat_interrupt_before_login(nursery, fake, english):
    fake.silent.add(BD.CID_LOGIN_REQ_USERLOGIN)
    live = InterruptibleChat(chat_args("--msg-server", f"127.0.0.1:{fake.port}", "--user", "alice",
                                       "--password", PASSWORD))
    live.start(nursery)
    await fake.wait_for(BD.CID_LOGIN_REQ_USERLOGIN)

    await live.interrupt()
    output = await live.finished()

    assert live.statuses == [130]
    assert output == f"Connecting to msg_server 127.0.0.1:{fake.port}...\n\nInterrupted.\n"
    assert fake.of(BD.CID_LOGIN_REQ_LOGINOUT) == []


async def test_chat_interrupt_at_password_line(nursery, fake, english):
    live = InterruptibleChat(chat_args("--msg-server", f"127.0.0.1:{fake.port}", "--user", "alice"))
    live.start(nursery)
    await live.output.wait_for("Password: ")

    await live.interrupt()
    output = await live.finished()

    assert live.statuses == [130]
    assert output == "Password: \nInterrupted.\n"
    assert fake.connections == []


async def test_chat_second_interrupt_ends_logout(nursery, fake, english):
    fake.silent.add(BD.CID_LOGIN_REQ_LOGINOUT)
    live = InterruptibleChat(chat_args("--msg-server", f"127.0.0.1:{fake.port}", "--user", "alice",
                                       "--password", PASSWORD, "--timeout", "3600"))
    live.start(nursery)
    await fake.wait_for(BD.CID_MSG_UNREAD_CNT_REQUEST)
    await live.interrupt()
    await fake.wait_for(BD.CID_LOGIN_REQ_LOGINOUT)

    await live.interrupt()
    output = await live.finished()

    assert live.statuses == [130]
    assert output.endswith("\nInterrupted.\n")
    assert "Bye." not in output


async def test_interrupt_router_cancels_innermost_scope():
    router = chat.InterruptRouter()
    router.interrupt()  # no scope open: ignored

    with router.open_cancel_scope() as outer:
        with router.open_cancel_scope() as inner:
            router.interrupt()
            await trio.lowlevel.checkpoint()
        await trio.lowlevel.checkpoint()
    router.interrupt()

    assert inner.cancelled_caught
    assert not outer.cancel_called


@contextlib.asynccontextmanager
async def chat_process(*argv):
    """Run ``teamtalk chat`` in a new session, so it has no controlling terminal, with pipes for its I/O.

    The process is killed if it is still running when the block ends.
    """
    command = [sys.executable, "-m", "teamtalk", "chat", "--lang", "en", *argv]
    process = await trio.lowlevel.open_process(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                               stderr=subprocess.PIPE, start_new_session=True)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def read_until(stream, marker):
    """Read ``stream`` until the bytes read contain ``marker``; return them."""
    received = bytearray()
    with trio.fail_after(SAFETY_TIMEOUT):
        while marker not in received:
            data = await stream.receive_some(4096)
            if not data:
                raise AssertionError(f"output ended before {marker!r}: {bytes(received)!r}")
            received += data
    return bytes(received)


async def interrupt_and_wait(process):
    """Send SIGINT, then return (exit status, rest of stdout, rest of stderr) once the process ends."""
    process.send_signal(signal.SIGINT)
    stdout = bytearray()
    stderr = bytearray()
    with trio.fail_after(SAFETY_TIMEOUT):
        while data := await process.stdout.receive_some(4096):
            stdout += data
        while data := await process.stderr.receive_some(4096):
            stderr += data
        status = await process.wait()
    return status, stdout.decode(), stderr.decode()


async def test_chat_process_sigint_after_login(fake):
    async with chat_process("--msg-server", f"127.0.0.1:{fake.port}", "--user", "alice",
                            "--password", PASSWORD) as process:
        await read_until(process.stdout, b"Type /help for the commands.\n")
        status, stdout, stderr = await interrupt_and_wait(process)

    assert status == 0
    assert stdout == "\nBye.\n"
    assert stderr == ""
    assert len(fake.of(BD.CID_LOGIN_REQ_LOGINOUT)) == 1


async def test_chat_process_sigint_before_login(fake):
    fake.silent.add(BD.CID_LOGIN_REQ_USERLOGIN)
    async with chat_process("--msg-server", f"127.0.0.1:{fake.port}", "--user", "alice",
                            "--password", PASSWORD) as process:
        await fake.wait_for(BD.CID_LOGIN_REQ_USERLOGIN)
        status, stdout, stderr = await interrupt_and_wait(process)

    assert status == 130
    assert stdout == f"Connecting to msg_server 127.0.0.1:{fake.port}...\n\nInterrupted.\n"
    assert stderr == ""
    assert fake.of(BD.CID_LOGIN_REQ_LOGINOUT) == []


async def test_chat_process_sigint_at_password_prompt(fake):
    async with chat_process("--msg-server", f"127.0.0.1:{fake.port}", "--user", "alice") as process:
        # Without a terminal, getpass warns that it cannot hide the input,
        # then prompts on stderr.
        prompt = await read_until(process.stderr, b"Password: ")
        status, stdout, stderr = await interrupt_and_wait(process)

    assert status == 130
    assert stdout == "\nInterrupted.\n"
    assert "Traceback" not in prompt.decode() + stderr
    assert fake.connections == []


def test_chat_password_prompt_end_of_input():
    # Without a terminal, getpass reads the password from stdin, which is empty.
    result = subprocess.run([sys.executable, "-m", "teamtalk", "chat", "--msg-server", "127.0.0.1:1",
                             "--user", "alice", "--lang", "en"], stdin=subprocess.DEVNULL, capture_output=True,
                            start_new_session=True, timeout=60)

    assert result.returncode == 1
    assert result.stdout == b"\nNo password given.\n"
    assert b"Traceback" not in result.stderr


def test_chat_output_into_closed_pipe():
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "teamtalk", "chat", "--msg-server", "127.0.0.1:1",
                                 "--user", "alice", "--password", PASSWORD], stdin=subprocess.DEVNULL,
                                stdout=write_end, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(write_end)

    assert result.returncode == 141
    assert result.stderr == b""


# ----------------------------------------------------------------------
# Singular and plural


def test_screen_picks_plural_form():
    english = chat.Screen(io.StringIO(), "en")
    chinese = chat.Screen(io.StringIO(), "zh")

    assert english.text("history_header", count=1, name="Bob") == "Last 1 message with Bob:"
    assert english.text("history_header", count=2, name="Bob") == "Last 2 messages with Bob:"
    assert english.text("history_header", count=0, name="Bob") == "Last 0 messages with Bob:"
    assert chinese.text("history_header", count=1, name="Bob") == "与 Bob 的最近 1 条消息："


def test_plural_texts_have_both_forms():
    plural = {key: text for key, text in chat.TEXTS["en"].items() if isinstance(text, dict)}

    assert {"history_header", "group_history_header", "group_set", "group_line"} <= set(plural)
    for key, forms in plural.items():
        assert set(forms) == {"one", "other"}, key
        assert all("{count}" in form for form in forms.values()), key
    assert not any(isinstance(text, dict) for text in chat.TEXTS["zh"].values())


async def test_chat_history_of_one_message(fake, english):
    fake.history[2] = [BD.MsgInfo(msg_id=1, from_session_id=2, create_time=1_700_000_000, msg_type=1,
                                  msg_data=b"only")]
    args = chat_args("--msg-server", f"127.0.0.1:{fake.port}", "--user", "alice", "--password", PASSWORD)

    status, output = await run_scripted_chat(args, "/to 2\n/history\n/quit\n")

    assert status == 0
    assert "Last 1 message with Bob:\n" in output
    assert "1 messages" not in output


def test_chat_command_requires_user():
    with pytest.raises(SystemExit):
        chat_args("--password", PASSWORD)
