"""Recent sessions: ``IMRecentContactSessionReq`` -> ``IMRecentContactSessionRsp``.

The response lists the user's active sessions updated after
``latest_update_time``, newest first, at most 100, each with its latest
message. A session without any stored message is left out.
"""

from __future__ import annotations

import logging

from teamtalk.db_proxy.handlers_common import Spawn, find_relation_ids, send_response
from teamtalk.db_proxy.handlers_group import GroupReader
from teamtalk.net.connection import Connection
from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.pb import IM_Buddy
from teamtalk.pdu import Pdu
from teamtalk.protocol import Dispatcher
from teamtalk.storage import Storage
from teamtalk.storage.messages import MessageStore, get_latest_messages
from teamtalk.storage.sessions import get_recent_sessions

logger = logging.getLogger(__name__)

_KNOWN_MSG_TYPES = frozenset(BD.MsgType.values())
_KNOWN_SESSION_STATUS = frozenset(BD.SessionStatusType.values())


class SessionHandlers:
    """Handlers of the recent-session list."""

    def __init__(self, storage: Storage, store: MessageStore, groups: GroupReader | None = None) -> None:
        self.storage = storage
        self.store = store
        self.groups = groups

    def register(self, dispatcher: Dispatcher, spawn: Spawn) -> None:
        dispatcher.add(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_RECENT_CONTACT_SESSION_REQUEST,
                       IM_Buddy.IMRecentContactSessionReq, spawn(self.recent_sessions))

    async def recent_sessions(self, connection: Connection, pdu: Pdu,
                              request: IM_Buddy.IMRecentContactSessionReq) -> None:
        user_id = request.user_id
        response = IM_Buddy.IMRecentContactSessionRsp(user_id=user_id, attach_data=request.attach_data)

        sessions = await get_recent_sessions(self.storage.slave, user_id, request.latest_update_time)
        single = [session for session in sessions if session.session_type == BD.SESSION_TYPE_SINGLE]
        relations = await find_relation_ids(self.storage, self.store, user_id,
                                            [session.peer_id for session in single])
        latest = await get_latest_messages(self.storage.shards, relations.values())
        group_ids = [session.peer_id for session in sessions if session.session_type == BD.SESSION_TYPE_GROUP]
        latest_in_group = await self.groups.latest_messages(group_ids) if self.groups and group_ids else {}

        for session in sessions:
            if session.session_type == BD.SESSION_TYPE_SINGLE:
                message = latest.get(relations.get(session.peer_id, 0))
            elif session.session_type == BD.SESSION_TYPE_GROUP:
                message = latest_in_group.get(session.peer_id)
            else:
                continue
            if message is None or message.msg_type not in _KNOWN_MSG_TYPES:
                continue
            status = session.status if session.status in _KNOWN_SESSION_STATUS else BD.SESSION_STATUS_OK
            response.contact_session_list.add(
                session_id=session.peer_id,
                session_type=session.session_type,
                session_status=status,
                updated_time=session.updated,
                latest_msg_id=message.msg_id,
                latest_msg_data=message.content,
                latest_msg_type=message.msg_type,
                latest_msg_from_user_id=message.from_id,
            )
        logger.debug("user %d: %d recent sessions since %d", user_id,
                     len(response.contact_session_list), request.latest_update_time)
        send_response(connection, pdu, BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_RECENT_CONTACT_SESSION_RESPONSE,
                    response)
