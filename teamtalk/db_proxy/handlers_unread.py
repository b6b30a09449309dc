"""Unread counters: ``IMUnreadMsgCntReq`` and ``IMMsgDataReadAck``.

The counts live in the ``unread`` cache instance, hash ``unread_<userId>``
with one field per peer. A read acknowledgement deletes that peer's field
and gets no response.

A group's unread count is its total minus the count the member has read
(see :mod:`teamtalk.storage.groups`), and a group read acknowledgement sets
the member's count to the total.
"""

from __future__ import annotations

import logging

from teamtalk.db_proxy.handlers_common import Spawn, find_relation_ids, send_response
from teamtalk.db_proxy.handlers_group import GroupReader
from teamtalk.net.connection import Connection
from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.pb import IM_Message
from teamtalk.pdu import Pdu
from teamtalk.protocol import Dispatcher
from teamtalk.storage import Storage
from teamtalk.storage.messages import MessageStore, clear_unread, get_latest_messages, get_unread_counts

logger = logging.getLogger(__name__)

_KNOWN_MSG_TYPES = frozenset(BD.MsgType.values())


class UnreadHandlers:
    """Handlers of the unread counters."""

    def __init__(self, storage: Storage, store: MessageStore, groups: GroupReader | None = None) -> None:
        self.storage = storage
        self.store = store
        self.groups = groups
        self.cache = storage.caches.get("unread")

    def register(self, dispatcher: Dispatcher, spawn: Spawn) -> None:
        dispatcher.add(BD.SID_MSG, BD.CID_MSG_UNREAD_CNT_REQUEST, IM_Message.IMUnreadMsgCntReq,
                       spawn(self.unread_count))
        # Not spawned, so the counter is deleted before the next request of
        # this connection runs, and an unread count requested next finds it cleared.
        dispatcher.add(BD.SID_MSG, BD.CID_MSG_READ_ACK, IM_Message.IMMsgDataReadAck, self.read_ack)

    async def unread_count(self, connection: Connection, pdu: Pdu,
                           request: IM_Message.IMUnreadMsgCntReq) -> None:
        user_id = request.user_id
        response = IM_Message.IMUnreadMsgCntRsp(user_id=user_id, total_cnt=0, attach_data=request.attach_data)

        counts = await get_unread_counts(self.cache, user_id)
        relations = await find_relation_ids(self.storage, self.store, user_id, list(counts))
        latest = await get_latest_messages(self.storage.shards, relations.values())

        total = 0
        for peer_id, count in counts.items():
            message = latest.get(relations.get(peer_id, 0))
            if message is None or message.msg_type not in _KNOWN_MSG_TYPES:
                logger.info("user %d: ignoring %d unread from %d without a stored message",
                            user_id, count, peer_id)
                continue
            response.unreadinfo_list.add(
                session_id=peer_id,
                session_type=BD.SESSION_TYPE_SINGLE,
                unread_cnt=count,
                latest_msg_id=message.msg_id,
                latest_msg_data=message.content,
                latest_msg_type=message.msg_type,
                latest_msg_from_user_id=message.from_id,
            )
            total += count
        if self.groups is not None:
            for group_id, count, message in await self.groups.unread(user_id):
                response.unreadinfo_list.add(
                    session_id=group_id,
                    session_type=BD.SESSION_TYPE_GROUP,
                    unread_cnt=count,
                    latest_msg_id=message.msg_id,
                    latest_msg_data=message.content,
                    latest_msg_type=message.msg_type,
                    latest_msg_from_user_id=message.from_id,
                )
                total += count
        response.total_cnt = total
        logger.debug("user %d: %d unread in %d sessions", user_id, total, len(response.unreadinfo_list))
        send_response(connection, pdu, BD.SID_MSG, BD.CID_MSG_UNREAD_CNT_RESPONSE, response)

    async def read_ack(self, connection: Connection, pdu: Pdu, request: IM_Message.IMMsgDataReadAck) -> None:
        if request.session_type == BD.SESSION_TYPE_GROUP and self.groups is None:
            logger.info("ignoring read ack of user %d for group %d", request.user_id, request.session_id)
            return
        try:
            if request.session_type == BD.SESSION_TYPE_GROUP:
                await self.groups.mark_read(request.user_id, request.session_id)
            else:
                await clear_unread(self.cache, request.user_id, request.session_id)
        except Exception:
            logger.exception("clearing unread count of user %d for %d failed",
                             request.user_id, request.session_id)
            return
        logger.debug("user %d read messages from %d up to msg_id %d",
                     request.user_id, request.session_id, request.msg_id)
