"""msg_server handlers for groups, contacts, sessions, devices and push settings.

Most of these requests are forwarded to db_proxy and their responses
returned to the client; some responses also notify other devices or other
users, here and through route_server:

* a group member change notifies the old and new members;
* removing a session notifies the user's other devices;
* a new avatar or sign text is announced to everyone online;
* ``IMKickPCClientReq`` from a mobile device closes the user's PC clients;
* ``IMDeviceTokenReq`` is taken from mobile clients only, stored with the
  client type of their login;
* ``IMP2PCmdMsg`` (typing, shakes) is relayed to the peer's devices and
  never stored.
"""

from __future__ import annotations

import logging

from teamtalk.net.connection import Connection
from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.pb import IM_Buddy, IM_Group, IM_Login, IM_Server, IM_SwitchService
from teamtalk.protocol import (
    ATTACH_TYPE_HANDLE_AND_PDU,
    MOBILE_CLIENT_TYPES,
    decode_attach_data,
    encode_attach_data,
    encode_message,
)

logger = logging.getLogger(__name__)

# Client requests forwarded to db_proxy as they are, with user_id and attach_data set.
FORWARDED_REQUESTS = [
    (BD.SID_GROUP, BD.CID_GROUP_NORMAL_LIST_REQUEST, IM_Group.IMNormalGroupListReq),
    (BD.SID_GROUP, BD.CID_GROUP_INFO_REQUEST, IM_Group.IMGroupInfoListReq),
    (BD.SID_GROUP, BD.CID_GROUP_CHANGE_MEMBER_REQUEST, IM_Group.IMGroupChangeMemberReq),
    (BD.SID_GROUP, BD.CID_GROUP_SHIELD_GROUP_REQUEST, IM_Group.IMGroupShieldReq),
    (BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_REMOVE_SESSION_REQ, IM_Buddy.IMRemoveSessionReq),
    (BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_CHANGE_SIGN_INFO_REQUEST, IM_Buddy.IMChangeSignInfoReq),
    (BD.SID_LOGIN, BD.CID_LOGIN_REQ_PUSH_SHIELD, IM_Login.IMPushShieldReq),
    (BD.SID_LOGIN, BD.CID_LOGIN_REQ_QUERY_PUSH_SHIELD, IM_Login.IMQueryPushShieldReq),
]

# db_proxy responses returned to the client unchanged but for attach_data.
RETURNED_RESPONSES = [
    (BD.SID_GROUP, BD.CID_GROUP_NORMAL_LIST_RESPONSE, IM_Group.IMNormalGroupListRsp),
    (BD.SID_GROUP, BD.CID_GROUP_CREATE_RESPONSE, IM_Group.IMGroupCreateRsp),
    (BD.SID_GROUP, BD.CID_GROUP_SHIELD_GROUP_RESPONSE, IM_Group.IMGroupShieldRsp),
    (BD.SID_LOGIN, BD.CID_LOGIN_RES_DEVICETOKEN, IM_Login.IMDeviceTokenRsp),
    (BD.SID_LOGIN, BD.CID_LOGIN_RES_PUSH_SHIELD, IM_Login.IMPushShieldRsp),
    (BD.SID_LOGIN, BD.CID_LOGIN_RES_QUERY_PUSH_SHIELD, IM_Login.IMQueryPushShieldRsp),
]


class ContactHandlers:
    """Handlers of groups, contacts and settings, registered into msg_server's dispatch tables."""

    def __init__(self, server) -> None:
        self.server = server

    def register(self, client_dispatcher, db_dispatcher, route_dispatcher) -> None:
        server = self.server
        add = client_dispatcher.add
        for service_id, command_id, message_class in FORWARDED_REQUESTS:
            add(service_id, command_id, message_class, server.clients.forward_to_db)
        add(BD.SID_GROUP, BD.CID_GROUP_CREATE_REQUEST, IM_Group.IMGroupCreateReq, self.on_group_create)
        add(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_CHANGE_AVATAR_REQUEST, IM_Buddy.IMChangeAvatarReq,
            self.on_change_avatar)
        add(BD.SID_LOGIN, BD.CID_LOGIN_REQ_DEVICETOKEN, IM_Login.IMDeviceTokenReq, self.on_device_token)
        add(BD.SID_LOGIN, BD.CID_LOGIN_REQ_KICKPCCLIENT, IM_Login.IMKickPCClientReq, self.on_kick_pc_client)
        add(BD.SID_SWITCH_SERVICE, BD.CID_SWITCH_P2P_CMD, IM_SwitchService.IMP2PCmdMsg, self.on_p2p_cmd)

        add = db_dispatcher.add
        for service_id, command_id, message_class in RETURNED_RESPONSES:
            add(service_id, command_id, message_class, server.link_handlers.return_to_client)
        add(BD.SID_GROUP, BD.CID_GROUP_INFO_RESPONSE, IM_Group.IMGroupInfoListRsp, self.on_group_info)
        add(BD.SID_GROUP, BD.CID_GROUP_CHANGE_MEMBER_RESPONSE, IM_Group.IMGroupChangeMemberRsp,
            self.on_group_changed)
        add(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_REMOVE_SESSION_RES, IM_Buddy.IMRemoveSessionRsp,
            self.on_session_removed)
        add(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_CHANGE_AVATAR_RESPONSE, IM_Buddy.IMChangeAvatarRsp,
            self.on_avatar_changed)
        add(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_CHANGE_SIGN_INFO_RESPONSE, IM_Buddy.IMChangeSignInfoRsp,
            self.on_sign_info_changed)

        add = route_dispatcher.add
        add(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_AVATAR_CHANGED_NOTIFY, IM_Buddy.IMAvatarChangedNotify,
            self.on_routed_broadcast)
        add(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_SIGN_INFO_CHANGED_NOTIFY, IM_Buddy.IMSignInfoChangedNotify,
            self.on_routed_broadcast)

    # Groups

    async def on_group_create(self, connection: Connection, pdu, message) -> None:
        if message.group_type != BD.GROUP_TYPE_TMP:
            # As in the original: clients create temporary groups only; normal
            # groups come from administrators. The request is dropped.
            logger.info("user %d asked to create a group of type %d; only temporary groups may be "
                        "created by clients", connection.state.user_id, message.group_type)
            return
        await self.server.clients.forward_to_db(connection, pdu, message)

    async def on_group_info(self, link_connection, pdu, message) -> None:
        groups = self.server.groups
        if groups.is_member_fetch(message):
            groups.members_fetched(message)
        else:
            await self.server.link_handlers.return_to_client(link_connection, pdu, message)

    async def on_group_changed(self, link_connection, pdu, message) -> None:
        requester = self.server.link_handlers._client_of(message.attach_data)
        await self.server.link_handlers.return_to_client(link_connection, pdu, message)
        # A removal of users who were not members succeeds without changing
        # anything, so there is nothing to announce.
        if message.result_code != 0 or not message.chg_user_id_list:
            return
        notify = IM_Group.IMGroupChangeMemberNotify(
            user_id=message.user_id, change_type=message.change_type, group_id=message.group_id,
            cur_user_id_list=message.cur_user_id_list, chg_user_id_list=message.chg_user_id_list)
        # The requesting connection gets the response and, as in the original, no notify.
        data = self.server.groups.change_notify(notify, exclude=requester)
        self.server.route_link.send(data)

    # Sessions and profile

    async def on_session_removed(self, link_connection, pdu, message) -> None:
        requester = self.server.link_handlers._client_of(message.attach_data)
        await self.server.link_handlers.return_to_client(link_connection, pdu, message)
        if message.result_code != 0:
            return
        notify = IM_Buddy.IMRemoveSessionNotify(user_id=message.user_id, session_type=message.session_type,
                                                session_id=message.session_id)
        data = encode_message(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_REMOVE_SESSION_NOTIFY, notify)
        self.server.deliver_to_user(message.user_id, data, exclude=requester)
        self.server.route_link.send(data)

    async def on_change_avatar(self, connection: Connection, pdu, message) -> None:
        # The response lacks the URL, so the request rides along in attach_data.
        user_id = connection.state.user_id
        message.user_id = user_id
        request_body = message.SerializeToString()
        message.attach_data = encode_attach_data(connection.id, ATTACH_TYPE_HANDLE_AND_PDU, pdu=request_body)
        data = encode_message(pdu.service_id, pdu.command_id, message, pdu.seq_num)
        if not self.server.send_to_db(user_id, data):
            logger.warning("avatar change of user %d gets no response: no db_proxy connected", user_id)

    async def on_avatar_changed(self, link_connection, pdu, message) -> None:
        attach = message.attach_data
        await self.server.link_handlers.return_to_client(link_connection, pdu, message)
        if message.result_code != 0:
            return
        try:
            request = IM_Buddy.IMChangeAvatarReq.FromString(decode_attach_data(attach)[3])
        except Exception as exc:  # a db_proxy that did not echo attach_data
            logger.info("avatar change of user %d not announced: the request did not come back (%s)",
                        message.user_id, exc)
            return
        notify = IM_Buddy.IMAvatarChangedNotify(changed_user_id=message.user_id, avatar_url=request.avatar_url)
        self._announce(encode_message(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_AVATAR_CHANGED_NOTIFY, notify))

    async def on_sign_info_changed(self, link_connection, pdu, message) -> None:
        await self.server.link_handlers.return_to_client(link_connection, pdu, message)
        if message.result_code != 0:
            return
        notify = IM_Buddy.IMSignInfoChangedNotify(changed_user_id=message.user_id, sign_info=message.sign_info)
        self._announce(encode_message(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_SIGN_INFO_CHANGED_NOTIFY, notify))

    def _announce(self, data: bytes) -> None:
        """Send a notify to every client online here and, through route_server, elsewhere."""
        self.server.broadcast_to_clients(data)
        self.server.route_link.send(data)

    async def on_routed_broadcast(self, link_connection, pdu, message) -> None:
        self.server.broadcast_to_clients(pdu.encode())

    # Devices

    async def on_device_token(self, connection: Connection, pdu, message) -> None:
        # As in the original: only mobile clients have a push token, and the
        # client type stored with it is the one of the login.
        client_type = connection.state.client_type
        if client_type not in MOBILE_CLIENT_TYPES:
            logger.info("dropping a device token from a PC client of user %d", connection.state.user_id)
            return
        message.client_type = client_type
        await self.server.clients.forward_to_db(connection, pdu, message)

    async def on_kick_pc_client(self, connection: Connection, pdu, message) -> None:
        server = self.server
        user_id = connection.state.user_id
        result = 0
        if connection.state.client_type not in MOBILE_CLIENT_TYPES:
            logger.info("IMKickPCClientReq from non-mobile client of user %d rejected", user_id)
            result = 1
        else:
            server.kick_local(user_id, BD.CLIENT_TYPE_WINDOWS, BD.KICK_REASON_MOBILE_KICK)
            server.route_link.send(encode_message(
                BD.SID_OTHER, BD.CID_OTHER_SERVER_KICK_USER,
                IM_Server.IMServerKickUser(user_id=user_id, client_type=BD.CLIENT_TYPE_WINDOWS,
                                           reason=BD.KICK_REASON_MOBILE_KICK)))
        connection.send(encode_message(BD.SID_LOGIN, BD.CID_LOGIN_RES_KICKPCCLIENT,
                                       IM_Login.IMKickPCClientRsp(user_id=user_id, result_code=result),
                                       pdu.seq_num))

    async def on_p2p_cmd(self, connection: Connection, pdu, message) -> None:
        message.from_user_id = connection.state.user_id
        data = encode_message(BD.SID_SWITCH_SERVICE, BD.CID_SWITCH_P2P_CMD, message)
        self.server.deliver_to_user(message.to_user_id, data)
        self.server.route_link.send(data)
