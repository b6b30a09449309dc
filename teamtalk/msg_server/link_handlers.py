"""Handlers for PDUs that db_proxy, route_server and login_server send to msg_server."""

from __future__ import annotations

import logging

from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.pb import IM_Buddy, IM_Group, IM_Message, IM_Other, IM_Server, IM_SwitchService
from teamtalk.protocol import GROUP_MSG_TYPES, PC_CLIENT_TYPES, Dispatcher, attach_handle, encode_message

logger = logging.getLogger(__name__)

# Responses from db_proxy that go back, unchanged but for attach_data, to the
# client connection named by their attach_data.
DB_RETURNED_RESPONSES = [
    (BD.SID_MSG, BD.CID_MSG_UNREAD_CNT_RESPONSE, IM_Message.IMUnreadMsgCntRsp),
    (BD.SID_MSG, BD.CID_MSG_LIST_RESPONSE, IM_Message.IMGetMsgListRsp),
    (BD.SID_MSG, BD.CID_MSG_GET_LATEST_MSG_ID_RSP, IM_Message.IMGetLatestMsgIdRsp),
    (BD.SID_MSG, BD.CID_MSG_GET_BY_MSG_ID_RES, IM_Message.IMGetMsgByIdRsp),
    (BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_RECENT_CONTACT_SESSION_RESPONSE, IM_Buddy.IMRecentContactSessionRsp),
    (BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_USER_INFO_RESPONSE, IM_Buddy.IMUsersInfoRsp),
    (BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_ALL_USER_RESPONSE, IM_Buddy.IMAllUserRsp),
    (BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_DEPARTMENT_RESPONSE, IM_Buddy.IMDepartmentRsp),
]


class LinkHandlers:
    """Dispatch tables for msg_server's three kinds of server links."""

    def __init__(self, server) -> None:
        self.server = server
        heartbeat = (BD.SID_OTHER, BD.CID_OTHER_HEARTBEAT, IM_Other.IMHeartBeat, self.on_heartbeat)

        self.db_dispatcher = Dispatcher("msg_server db_proxy link")
        add = self.db_dispatcher.add
        add(*heartbeat)
        add(BD.SID_OTHER, BD.CID_OTHER_VALIDATE_RSP, IM_Server.IMValidateRsp, self.on_validate_response)
        add(BD.SID_MSG, BD.CID_MSG_DATA, IM_Message.IMMsgData, self.on_msg_data_stored)
        add(BD.SID_OTHER, BD.CID_OTHER_STOP_RECV_PACKET, IM_Server.IMStopReceivePacket, self.on_stop_receive)
        for service_id, command_id, message_class in DB_RETURNED_RESPONSES:
            add(service_id, command_id, message_class, self.return_to_client)

        self.route_dispatcher = Dispatcher("msg_server route link")
        add = self.route_dispatcher.add
        add(*heartbeat)
        add(BD.SID_MSG, BD.CID_MSG_DATA, IM_Message.IMMsgData, self.on_routed_msg_data)
        add(BD.SID_MSG, BD.CID_MSG_READ_NOTIFY, IM_Message.IMMsgDataReadNotify, self.on_routed_read_notify)
        add(BD.SID_OTHER, BD.CID_OTHER_SERVER_KICK_USER, IM_Server.IMServerKickUser, self.on_routed_kick)
        add(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_STATUS_NOTIFY, IM_Buddy.IMUserStatNotify,
            self.on_routed_status_notify)
        add(BD.SID_OTHER, BD.CID_OTHER_LOGIN_STATUS_NOTIFY, IM_Server.IMServerPCLoginStatusNotify,
            self.on_routed_pc_login_status)
        add(BD.SID_SWITCH_SERVICE, BD.CID_SWITCH_P2P_CMD, IM_SwitchService.IMP2PCmdMsg, self.on_routed_p2p)
        add(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_USERS_STATUS_RESPONSE, IM_Buddy.IMUsersStatRsp,
            self.return_to_client)
        add(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_REMOVE_SESSION_NOTIFY, IM_Buddy.IMRemoveSessionNotify,
            self.on_routed_to_user)
        add(BD.SID_GROUP, BD.CID_GROUP_CHANGE_MEMBER_NOTIFY, IM_Group.IMGroupChangeMemberNotify,
            self.on_routed_group_change)

        self.login_dispatcher = Dispatcher("msg_server login link")
        self.login_dispatcher.add(*heartbeat)

    async def on_heartbeat(self, link_connection, pdu, message) -> None:
        """Receiving is what keeps the link alive."""

    # From db_proxy

    def _client_of(self, attach_data: bytes):
        handle = attach_handle(attach_data)
        connection = self.server.handles.get(handle) if handle is not None else None
        if connection is None or connection.closed:
            return None
        return connection

    async def on_validate_response(self, link_connection, pdu, message) -> None:
        connection = self._client_of(message.attach_data)
        if connection is None:
            logger.debug("validate response for user %r arrived after the client left", message.user_name)
            return
        if not connection.state.login_pending:
            logger.info("ignoring a validate response for %r on %s: no login is pending there",
                        message.user_name, connection.peer)
            return
        if message.result_code != 0 or not message.HasField("user_info"):
            logger.info("login of %r from %s rejected by db_proxy (result %d)",
                        message.user_name, connection.peer, message.result_code)
            connection.state.login_pending = False
            self.server.clients.refuse_login(connection, BD.REFUSE_REASON_DB_VALIDATE_FAILED,
                                             message.result_string or None, pdu.seq_num)
            return
        self.server.clients.complete_login(connection, message.user_info, pdu.seq_num)

    async def on_msg_data_stored(self, link_connection, pdu, message) -> None:
        """db_proxy stored a message: ack the sender, deliver to every device."""
        server = self.server
        sender = self._client_of(message.attach_data)
        message.ClearField("attach_data")
        is_group = message.msg_type in GROUP_MSG_TYPES
        session_type = BD.SESSION_TYPE_GROUP if is_group else BD.SESSION_TYPE_SINGLE
        if sender is not None:
            ack = IM_Message.IMMsgDataAck(user_id=message.from_user_id, session_id=message.to_session_id,
                                          msg_id=message.msg_id, session_type=session_type)
            sender.send(encode_message(BD.SID_MSG, BD.CID_MSG_DATA_ACK, ack, pdu.seq_num))
            server.stats["msg_acked"] += 1

        data = encode_message(BD.SID_MSG, BD.CID_MSG_DATA, message)
        if is_group:
            server.groups.deliver(data, message, sender)
        else:
            self._deliver_single(data, message, exclude=sender)
        server.route_link.send(data)

    def _deliver_single(self, data: bytes, message, exclude=None) -> None:
        server = self.server
        server.deliver_to_user(message.from_user_id, data, exclude=exclude,
                               pending_peer=message.to_session_id, msg_id=message.msg_id)
        server.deliver_to_user(message.to_session_id, data,
                               pending_peer=message.from_user_id, msg_id=message.msg_id)

    async def on_stop_receive(self, link_connection, pdu, message) -> None:
        logger.warning("db_proxy at %s is shutting down and asked for no more requests", link_connection.peer)

    async def return_to_client(self, link_connection, pdu, message) -> None:
        connection = self._client_of(message.attach_data)
        if connection is None:
            logger.debug("response 0x%04x arrived after the client left", pdu.command_id)
            return
        message.ClearField("attach_data")
        connection.send(encode_message(pdu.service_id, pdu.command_id, message, pdu.seq_num))

    # From route_server

    async def on_routed_msg_data(self, link_connection, pdu, message) -> None:
        if message.msg_type in GROUP_MSG_TYPES:
            if self.server.users:
                self.server.groups.deliver(pdu.encode(), message)
            return
        self._deliver_single(pdu.encode(), message)

    async def on_routed_read_notify(self, link_connection, pdu, message) -> None:
        self.server.deliver_to_user(message.user_id, pdu.encode())

    async def on_routed_kick(self, link_connection, pdu, message) -> None:
        self.server.kick_local(message.user_id, message.client_type, message.reason)

    async def on_routed_status_notify(self, link_connection, pdu, message) -> None:
        # One encoding, the same bytes handed to every PC connection.
        self.server.broadcast_to_pc_clients(pdu.encode())

    async def on_routed_pc_login_status(self, link_connection, pdu, message) -> None:
        notify = IM_Buddy.IMPCLoginStatusNotify(
            user_id=message.user_id,
            login_stat=BD.USER_STATUS_ONLINE if message.login_status else BD.USER_STATUS_OFFLINE)
        data = encode_message(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_PC_LOGIN_STATUS_NOTIFY, notify)
        user = self.server.users.get(message.user_id)
        if user is None:
            return
        for connection in user.connections:
            if connection.state.client_type not in PC_CLIENT_TYPES:
                connection.send(data)

    async def on_routed_p2p(self, link_connection, pdu, message) -> None:
        self.server.deliver_to_user(message.to_user_id, pdu.encode())

    async def on_routed_to_user(self, link_connection, pdu, message) -> None:
        self.server.deliver_to_user(message.user_id, pdu.encode())

    async def on_routed_group_change(self, link_connection, pdu, message) -> None:
        self.server.groups.change_notify(message)
