"""Users: ``IMUsersInfoReq`` -> ``IMUsersInfoRsp`` with one ``UserInfo`` per known id."""

from __future__ import annotations

import logging

from teamtalk.db_proxy.handlers_common import Spawn, send_response
from teamtalk.net.connection import Connection
from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.pb import IM_Buddy
from teamtalk.pdu import Pdu
from teamtalk.protocol import Dispatcher
from teamtalk.storage import Storage
from teamtalk.storage.users import get_users, user_info_fields

logger = logging.getLogger(__name__)

#: Max users in one response, which keeps it well under a 1 MiB PDU.
MAX_USERS_PER_REQUEST = 2000


class UserHandlers:
    """Handlers of user information."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def register(self, dispatcher: Dispatcher, spawn: Spawn) -> None:
        dispatcher.add(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_USER_INFO_REQUEST, IM_Buddy.IMUsersInfoReq,
                       spawn(self.users_info))

    async def users_info(self, connection: Connection, pdu: Pdu, request: IM_Buddy.IMUsersInfoReq) -> None:
        response = IM_Buddy.IMUsersInfoRsp(user_id=request.user_id, attach_data=request.attach_data)
        requested = list(dict.fromkeys(request.user_id_list))
        if len(requested) > MAX_USERS_PER_REQUEST:
            logger.info("user %d requested %d users; returning the first %d",
                        request.user_id, len(requested), MAX_USERS_PER_REQUEST)
            requested = requested[:MAX_USERS_PER_REQUEST]
        for row in await get_users(self.storage.slave, requested):
            response.user_info_list.add(**user_info_fields(row))
        send_response(connection, pdu, BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_USER_INFO_RESPONSE, response)
