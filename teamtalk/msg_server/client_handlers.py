"""Handlers for PDUs that clients send to msg_server.

Before login a connection may only send heartbeats and ``IMLoginReq``;
anything else is logged and dropped.  Requests that need storage are
forwarded to db_proxy with the connection's handle in ``attach_data``, and
``link_handlers`` returns db_proxy's responses to that connection.
"""

from __future__ import annotations

import logging
import math
import time

import trio

from teamtalk.log import user_id_var
from teamtalk.net.connection import Connection
from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.pb import IM_Buddy, IM_Login, IM_Message, IM_Other, IM_Server
from teamtalk.pdu import Pdu
from teamtalk.protocol import (
    GROUP_MSG_TYPES,
    MOBILE_CLIENT_TYPES,
    PC_CLIENT_TYPES,
    SINGLE_MSG_TYPES,
    Dispatcher,
    encode_attach_data,
    encode_message,
)
from teamtalk.msg_server.users import ClientState

logger = logging.getLogger(__name__)


# result_string texts are shown to end users by the original clients.
REFUSE_TEXT = {
    BD.REFUSE_REASON_NO_DB_SERVER: "数据库服务器不可用，请稍后再试",
    BD.REFUSE_REASON_NO_LOGIN_SERVER: "登录服务器不可用，请稍后再试",
    BD.REFUSE_REASON_NO_ROUTE_SERVER: "路由服务器不可用，请稍后再试",
    BD.REFUSE_REASON_DB_VALIDATE_FAILED: "用户名或密码错误",
}

# Requests forwarded to db_proxy as they are, with user_id and attach_data set.
DB_FORWARDED_REQUESTS = [
    (BD.SID_MSG, BD.CID_MSG_UNREAD_CNT_REQUEST, IM_Message.IMUnreadMsgCntReq),
    (BD.SID_MSG, BD.CID_MSG_LIST_REQUEST, IM_Message.IMGetMsgListReq),
    (BD.SID_MSG, BD.CID_MSG_GET_LATEST_MSG_ID_REQ, IM_Message.IMGetLatestMsgIdReq),
    (BD.SID_MSG, BD.CID_MSG_GET_BY_MSG_ID_REQ, IM_Message.IMGetMsgByIdReq),
    (BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_RECENT_CONTACT_SESSION_REQUEST, IM_Buddy.IMRecentContactSessionReq),
    (BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_USER_INFO_REQUEST, IM_Buddy.IMUsersInfoReq),
    (BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_ALL_USER_REQUEST, IM_Buddy.IMAllUserReq),
    (BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_DEPARTMENT_REQUEST, IM_Buddy.IMDepartmentReq),
]

# Commands a connection may send before it has logged in.
PRE_LOGIN_COMMANDS = frozenset({
    (BD.SID_LOGIN, BD.CID_LOGIN_REQ_USERLOGIN),
    (BD.SID_OTHER, BD.CID_OTHER_HEARTBEAT),
})


class ClientHandlers:
    """The connection handler of msg_server's client listener."""

    def __init__(self, server) -> None:
        self.server = server
        self.settings = server.settings
        self.dispatcher = Dispatcher("msg_server clients")
        add = self.dispatcher.add
        add(BD.SID_OTHER, BD.CID_OTHER_HEARTBEAT, IM_Other.IMHeartBeat, self.on_heartbeat)
        add(BD.SID_LOGIN, BD.CID_LOGIN_REQ_USERLOGIN, IM_Login.IMLoginReq, self.on_login)
        add(BD.SID_LOGIN, BD.CID_LOGIN_REQ_LOGINOUT, IM_Login.IMLogoutReq, self.on_logout)
        add(BD.SID_MSG, BD.CID_MSG_DATA, IM_Message.IMMsgData, self.on_msg_data)
        add(BD.SID_MSG, BD.CID_MSG_DATA_ACK, IM_Message.IMMsgDataAck, self.on_msg_data_ack)
        add(BD.SID_MSG, BD.CID_MSG_READ_ACK, IM_Message.IMMsgDataReadAck, self.on_read_ack)
        add(BD.SID_MSG, BD.CID_MSG_TIME_REQUEST, IM_Message.IMClientTimeReq, self.on_client_time)
        add(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_USERS_STATUS_REQUEST, IM_Buddy.IMUsersStatReq,
            self.on_users_status)
        for service_id, command_id, message_class in DB_FORWARDED_REQUESTS:
            add(service_id, command_id, message_class, self.forward_to_db)

    # Connection lifecycle

    def connection_made(self, connection: Connection) -> None:
        connection.state = ClientState()
        connection.deadline = trio.current_time() + self.settings.login_timeout
        self.server.handles[connection.id] = connection

    async def pdu_received(self, connection: Connection, pdu: Pdu) -> None:
        state: ClientState = connection.state
        if not state.logged_in and (pdu.service_id, pdu.command_id) not in PRE_LOGIN_COMMANDS:
            logger.info("dropping command 0x%04x from %s: not logged in", pdu.command_id, connection.peer)
            return
        await self.dispatcher.dispatch(connection, pdu)

    def connection_lost(self, connection: Connection) -> None:
        self.server.handles.pop(connection.id, None)
        if connection.state.logged_in:
            logger.info("user %d on %s logged out: %s", connection.state.user_id, connection.peer,
                        connection.close_reason)
            self.server.remove_login(connection)

    # Login and logout

    async def on_heartbeat(self, connection, pdu, message) -> None:
        connection.send(pdu.encode())

    async def on_login(self, connection: Connection, pdu, message) -> None:
        state: ClientState = connection.state
        if state.logged_in or state.login_pending:
            logger.info("ignoring a second IMLoginReq on %s", connection.peer)
            return
        if message.client_type not in PC_CLIENT_TYPES | MOBILE_CLIENT_TYPES:
            logger.info("login from %s with unknown client_type %d rejected", connection.peer, message.client_type)
            self.refuse_login(connection, BD.REFUSE_REASON_DB_VALIDATE_FAILED, seq_num=pdu.seq_num)
            return

        reason = self._unavailable_dependency()
        if reason is not None:
            logger.warning("login of %r from %s rejected: a server it needs is not connected (reason %d)",
                           message.user_name, connection.peer, reason)
            self.refuse_login(connection, reason, seq_num=pdu.seq_num)
            return

        state.user_name = message.user_name
        state.client_type = message.client_type
        state.online_status = message.online_status
        state.login_pending = True
        request = IM_Server.IMValidateReq(user_name=message.user_name, password=message.password,
                                          attach_data=encode_attach_data(connection.id))
        data = encode_message(BD.SID_OTHER, BD.CID_OTHER_VALIDATE_REQ, request, pdu.seq_num)
        link = self.server.db_link_for(connection.id)
        if link is None or not link.send(data):
            state.login_pending = False
            self.refuse_login(connection, BD.REFUSE_REASON_NO_DB_SERVER, seq_num=pdu.seq_num)
            return
        state.validate_link = link
        state.login_seq_num = pdu.seq_num

    def _unavailable_dependency(self) -> int | None:
        server = self.server
        if server.db_link_for(0) is None:
            return BD.REFUSE_REASON_NO_DB_SERVER
        if not server.login_connected():
            return BD.REFUSE_REASON_NO_LOGIN_SERVER
        if not server.route_link.connected:
            return BD.REFUSE_REASON_NO_ROUTE_SERVER
        return None

    def refuse_login(self, connection: Connection, reason: int, text: str | None = None, seq_num: int = 0) -> None:
        response = IM_Login.IMLoginRes(server_time=int(time.time()), result_code=reason,
                                       result_string=text or REFUSE_TEXT.get(reason, "登录失败"))
        connection.send(encode_message(BD.SID_LOGIN, BD.CID_LOGIN_RES_USERLOGIN, response, seq_num))
        connection.close_after_flush(f"login refused ({reason})")

    def complete_login(self, connection: Connection, user_info, seq_num: int) -> None:
        """Finish a login that db_proxy validated."""
        server = self.server
        state: ClientState = connection.state
        state.login_pending = False
        state.user_id = user_info.user_id
        user_id_var.set(state.user_id)

        # Older connections of the same user and client class go, here and elsewhere.
        server.kick_local(state.user_id, state.client_type, BD.KICK_REASON_DUPLICATE_USER, keep=connection)
        server.route_link.send(encode_message(
            BD.SID_OTHER, BD.CID_OTHER_SERVER_KICK_USER,
            IM_Server.IMServerKickUser(user_id=state.user_id, client_type=state.client_type,
                                       reason=BD.KICK_REASON_DUPLICATE_USER)))

        connection.deadline = math.inf
        connection.idle_timeout = (self.settings.pc_client_timeout if state.client_type in PC_CLIENT_TYPES
                                   else self.settings.mobile_client_timeout)
        response = IM_Login.IMLoginRes(server_time=int(time.time()), result_code=BD.REFUSE_REASON_NONE,
                                       result_string="", online_status=state.online_status)
        response.user_info.CopyFrom(user_info)
        connection.send(encode_message(BD.SID_LOGIN, BD.CID_LOGIN_RES_USERLOGIN, response, seq_num))
        server.add_login(connection)
        logger.info("user %d (%s) logged in from %s, client_type %d",
                    state.user_id, state.user_name, connection.peer, state.client_type)

    async def on_logout(self, connection: Connection, pdu, message) -> None:
        connection.send(encode_message(BD.SID_LOGIN, BD.CID_LOGIN_RES_LOGINOUT,
                                       IM_Login.IMLogoutRsp(result_code=0), pdu.seq_num))
        self.server.remove_login(connection)
        connection.close_after_flush("logout")

    # Messages

    async def on_msg_data(self, connection: Connection, pdu, message) -> None:
        server = self.server
        state: ClientState = connection.state
        server.stats["msg_received"] += 1
        problem = self._check_msg_data(state, message)
        if problem:
            server.stats["msg_dropped"] += 1
            logger.info("dropping IMMsgData from user %d to %d: %s",
                        state.user_id, message.to_session_id, problem)
            return

        message.from_user_id = state.user_id
        message.create_time = int(time.time())
        message.attach_data = encode_attach_data(connection.id)
        data = encode_message(BD.SID_MSG, BD.CID_MSG_DATA, message, pdu.seq_num)
        if not server.send_to_db(state.user_id, data):
            server.stats["msg_dropped"] += 1
            logger.warning("dropping IMMsgData from user %d: no db_proxy connected; the sender gets no ack",
                           state.user_id)

    def _check_msg_data(self, state: ClientState, message) -> str:
        """Return why a message is rejected, or "" if it may go on."""
        now = trio.current_time()
        if now - state.rate_window_start >= 1.0:
            state.rate_window_start = now
            state.rate_window_count = 0
        state.rate_window_count += 1
        if state.rate_window_count > self.settings.max_msg_per_second:
            return f"more than {self.settings.max_msg_per_second} messages a second"
        if not message.msg_data:
            return "empty msg_data"
        if len(message.msg_data) > self.settings.max_msg_length:
            return f"msg_data of {len(message.msg_data)} bytes exceeds {self.settings.max_msg_length}"
        if message.msg_type in SINGLE_MSG_TYPES:
            if message.to_session_id == state.user_id:
                return "message to oneself"
        elif message.msg_type not in GROUP_MSG_TYPES:
            return f"unknown msg_type {message.msg_type}"
        return ""

    async def on_msg_data_ack(self, connection: Connection, pdu, message) -> None:
        connection.state.pending.pop((message.session_id, message.msg_id), None)

    async def on_read_ack(self, connection: Connection, pdu, message) -> None:
        server = self.server
        state: ClientState = connection.state
        message.user_id = state.user_id
        state.pending.pop((message.session_id, message.msg_id), None)
        if not server.send_to_db(state.user_id, encode_message(BD.SID_MSG, BD.CID_MSG_READ_ACK, message)):
            logger.warning("read ack of user %d not stored: no db_proxy connected", state.user_id)

        notify = IM_Message.IMMsgDataReadNotify(user_id=state.user_id, session_id=message.session_id,
                                                msg_id=message.msg_id, session_type=message.session_type)
        data = encode_message(BD.SID_MSG, BD.CID_MSG_READ_NOTIFY, notify)
        server.deliver_to_user(state.user_id, data, exclude=connection)
        server.route_link.send(data)

    async def on_client_time(self, connection: Connection, pdu, message) -> None:
        connection.send(encode_message(BD.SID_MSG, BD.CID_MSG_TIME_RESPONSE,
                                       IM_Message.IMClientTimeRsp(server_time=int(time.time())), pdu.seq_num))

    # Forwarded requests

    async def forward_to_db(self, connection: Connection, pdu, message) -> None:
        user_id = connection.state.user_id
        message.user_id = user_id
        message.attach_data = encode_attach_data(connection.id)
        if not self.server.send_to_db(user_id, encode_message(pdu.service_id, pdu.command_id, message,
                                                              pdu.seq_num)):
            logger.warning("request 0x%04x of user %d gets no response: no db_proxy connected",
                           pdu.command_id, user_id)

    async def on_users_status(self, connection: Connection, pdu, message) -> None:
        message.user_id = connection.state.user_id
        message.attach_data = encode_attach_data(connection.id)
        if not self.server.route_link.send(encode_message(pdu.service_id, pdu.command_id, message, pdu.seq_num)):
            logger.warning("users status request of user %d gets no response: no route_server connected",
                           connection.state.user_id)
