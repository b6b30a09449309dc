"""route_server: who is online on which msg_server, and relaying between them.

Each msg_server reports its online users (``IMOnlineUserInfo`` when it
connects, ``IMUserStatusUpdate`` on each change).  The table maps a user id
to the msg_server links holding that user, with a count per client type.

Relayed PDUs (messages, read notifies, kicks, p2p commands, ...) are sent
only to the msg_servers where a target user is online, never back to the
sender's link.  The original broadcast every relayed PDU to every
msg_server.  Group messages and member changes are the exception:
route_server does not know group members, and every msg_server may cache
them, so they go to every other link, like avatar and sign-info changes,
which interest everyone.
"""

from __future__ import annotations

import logging
from collections import Counter

import trio

from teamtalk.net.connection import SERVER_LINK_QUEUE_LENGTH, Connection
from teamtalk.net.server import PduServer
from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.pb import IM_Buddy, IM_File, IM_Group, IM_Message, IM_Other, IM_Server, IM_SwitchService
from teamtalk.pdu import Pdu
from teamtalk.protocol import GROUP_MSG_TYPES, HEARTBEAT_PDU, PC_CLIENT_TYPES, Dispatcher, encode_message

logger = logging.getLogger(__name__)



class OnlineTable:
    """user_id -> {msg_server link -> Counter of client types online there}."""

    def __init__(self) -> None:
        self.users: dict[int, dict[Connection, Counter]] = {}

    def set_status(self, link: Connection, user_id: int, status: int, client_type: int) -> None:
        links = self.users.get(user_id)
        if status == BD.USER_STATUS_OFFLINE:
            if links is None or link not in links:
                return
            counts = links[link]
            counts[client_type] -= 1
            if counts[client_type] <= 0:
                del counts[client_type]
            if not counts:
                del links[link]
            if not links:
                del self.users[user_id]
            return
        if links is None:
            links = self.users[user_id] = {}
        links.setdefault(link, Counter())[client_type] += 1

    def remove_link(self, link: Connection) -> int:
        """Forget every user of a msg_server link; return how many were removed."""
        removed = 0
        for user_id in list(self.users):
            links = self.users[user_id]
            if links.pop(link, None) is not None:
                removed += 1
                if not links:
                    del self.users[user_id]
        return removed

    def links_of(self, user_id: int) -> dict[Connection, Counter]:
        return self.users.get(user_id, {})

    def is_online(self, user_id: int) -> bool:
        return user_id in self.users

    def has_pc_client(self, user_id: int) -> bool:
        return any(
            counts[client_type] > 0
            for counts in self.users.get(user_id, {}).values()
            for client_type in PC_CLIENT_TYPES
        )


class RouteServer:
    """The route_server role.  Owns its listener and the online table."""

    name = "route_server"

    def __init__(self, host: str = "127.0.0.1", port: int = 8200, *,
                 max_pdu_length: int = 1 << 20, heartbeat_interval: float = 5.0,
                 server_timeout: float = 30.0) -> None:
        self.heartbeat_interval = heartbeat_interval
        self.server_timeout = server_timeout
        self.online = OnlineTable()
        self.links: set[Connection] = set()
        self.server = PduServer(self.name, host, port, self, max_pdu_length=max_pdu_length,
                                send_queue_length=SERVER_LINK_QUEUE_LENGTH)
        self.dispatcher = Dispatcher(self.name)
        self._register_handlers()

    # Role interface

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(self.server.run)
            nursery.start_soon(self._send_heartbeats)
            task_status.started(port)

    def stop_accepting(self) -> None:
        self.server.stop_accepting()

    async def drain(self) -> None:
        """Nothing is in flight: every relay is sent as soon as it arrives."""

    @property
    def port(self) -> int:
        return self.server.port

    # Connection handler interface

    def connection_made(self, connection: Connection) -> None:
        connection.idle_timeout = self.server_timeout
        self.links.add(connection)
        logger.info("msg_server connected from %s", connection.peer)

    async def pdu_received(self, connection: Connection, pdu: Pdu) -> None:
        await self.dispatcher.dispatch(connection, pdu)

    def connection_lost(self, connection: Connection) -> None:
        self.links.discard(connection)
        removed = self.online.remove_link(connection)
        logger.info("msg_server %s left (%s); %d users went with it",
                    connection.peer, connection.close_reason, removed)

    # Handlers

    def _register_handlers(self) -> None:
        add = self.dispatcher.add
        add(BD.SID_OTHER, BD.CID_OTHER_HEARTBEAT, IM_Other.IMHeartBeat, self._on_heartbeat)
        add(BD.SID_OTHER, BD.CID_OTHER_ONLINE_USER_INFO, IM_Server.IMOnlineUserInfo, self._on_online_user_info)
        add(BD.SID_OTHER, BD.CID_OTHER_USER_STATUS_UPDATE, IM_Server.IMUserStatusUpdate, self._on_user_status_update)
        add(BD.SID_OTHER, BD.CID_OTHER_ROLE_SET, IM_Server.IMRoleSet, self._on_role_set)
        add(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_USERS_STATUS_REQUEST, IM_Buddy.IMUsersStatReq,
            self._on_users_status_request)

        add(BD.SID_MSG, BD.CID_MSG_DATA, IM_Message.IMMsgData, self._relay_msg_data)
        add(BD.SID_MSG, BD.CID_MSG_READ_NOTIFY, IM_Message.IMMsgDataReadNotify,
            self._relay_to(lambda m: (m.user_id,)))
        add(BD.SID_SWITCH_SERVICE, BD.CID_SWITCH_P2P_CMD, IM_SwitchService.IMP2PCmdMsg,
            self._relay_to(lambda m: (m.to_user_id, m.from_user_id)))
        add(BD.SID_OTHER, BD.CID_OTHER_SERVER_KICK_USER, IM_Server.IMServerKickUser,
            self._relay_to(lambda m: (m.user_id,)))
        add(BD.SID_FILE, BD.CID_FILE_NOTIFY, IM_File.IMFileNotify,
            self._relay_to(lambda m: (m.to_user_id,)))
        add(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_REMOVE_SESSION_NOTIFY, IM_Buddy.IMRemoveSessionNotify,
            self._relay_to(lambda m: (m.user_id,)))
        # Every msg_server may cache the group's members, so member changes go to all.
        add(BD.SID_GROUP, BD.CID_GROUP_CHANGE_MEMBER_NOTIFY, IM_Group.IMGroupChangeMemberNotify,
            self._relay_to_all)
        # Profile changes interest everyone online.
        add(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_AVATAR_CHANGED_NOTIFY, IM_Buddy.IMAvatarChangedNotify,
            self._relay_to_all)
        add(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_SIGN_INFO_CHANGED_NOTIFY, IM_Buddy.IMSignInfoChangedNotify,
            self._relay_to_all)

    async def _on_heartbeat(self, connection, pdu, message) -> None:
        """Receiving any PDU keeps the link alive, so there is nothing to send back."""

    async def _on_role_set(self, connection, pdu, message) -> None:
        logger.debug("%s set role master=%d", connection.peer, message.master)

    async def _on_online_user_info(self, connection, pdu, message) -> None:
        for stat in message.user_stat_list:
            self.online.set_status(connection, stat.user_id, stat.status, stat.client_type)
        logger.info("%s reported %d online user devices", connection.peer, len(message.user_stat_list))

    async def _on_user_status_update(self, connection, pdu, message) -> None:
        user_id, status, client_type = message.user_id, message.user_status, message.client_type
        self.online.set_status(connection, user_id, status, client_type)
        has_pc = self.online.has_pc_client(user_id)

        # Tell msg_servers whether this user has a PC client online, for
        # the user's mobile devices (IMPCLoginStatusNotify).
        if (status == BD.USER_STATUS_OFFLINE and client_type in PC_CLIENT_TYPES and not has_pc) or \
                (status != BD.USER_STATUS_OFFLINE and has_pc):
            notify = IM_Server.IMServerPCLoginStatusNotify(
                user_id=user_id, login_status=0 if status == BD.USER_STATUS_OFFLINE else 1)
            self._broadcast(encode_message(BD.SID_OTHER, BD.CID_OTHER_LOGIN_STATUS_NOTIFY, notify))

        # Presence of PC clients is announced to everyone online.  A PC
        # logout while another PC client of the user is still on is not.
        if client_type in PC_CLIENT_TYPES and not (status == BD.USER_STATUS_OFFLINE and has_pc):
            stat_notify = IM_Buddy.IMUserStatNotify()
            stat_notify.user_stat.user_id = user_id
            stat_notify.user_stat.status = status
            self._broadcast(encode_message(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_STATUS_NOTIFY, stat_notify))

    async def _on_users_status_request(self, connection, pdu, message) -> None:
        response = IM_Buddy.IMUsersStatRsp(user_id=message.user_id)
        if message.HasField("attach_data"):
            response.attach_data = message.attach_data
        for user_id in message.user_id_list:
            online = self.online.is_online(user_id)
            response.user_stat_list.add(
                user_id=user_id, status=BD.USER_STATUS_ONLINE if online else BD.USER_STATUS_OFFLINE)
        connection.send(encode_message(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_USERS_STATUS_RESPONSE,
                                       response, pdu.seq_num))

    async def _relay_msg_data(self, connection, pdu, message) -> None:
        if message.msg_type in GROUP_MSG_TYPES:
            self._broadcast(pdu.encode(), exclude=connection)
        else:
            self._relay(connection, pdu, (message.to_session_id, message.from_user_id))

    async def _relay_to_all(self, connection, pdu, message) -> None:
        self._broadcast(pdu.encode(), exclude=connection)

    def _relay_to(self, targets_of):
        async def relay(connection, pdu, message) -> None:
            self._relay(connection, pdu, targets_of(message))
        return relay

    def _relay(self, origin: Connection, pdu: Pdu, user_ids) -> None:
        destinations: set[Connection] = set()
        for user_id in user_ids:
            destinations.update(self.online.links_of(user_id))
        destinations.discard(origin)
        if not destinations:
            logger.debug("no other msg_server has users %s online; command 0x%04x dropped",
                          list(user_ids), pdu.command_id)
            return
        data = pdu.encode()
        for link in destinations:
            link.send(data)

    def _broadcast(self, data: bytes, exclude: Connection | None = None) -> None:
        for link in self.links:
            if link is not exclude:
                link.send(data)

    async def _send_heartbeats(self) -> None:
        while True:
            await trio.sleep(self.heartbeat_interval)
            self._broadcast(HEARTBEAT_PDU)
