"""Push settings: device tokens and the user's push shield.

- ``IMDeviceTokenReq`` stores the token (see :mod:`teamtalk.storage.settings`)
  and gets ``IMDeviceTokenRsp``. An empty token, which msg_server sends at
  logout, deletes the user's token. A token that cannot be stored is
  logged and still gets the response, which carries no result code.
- ``IMGetDeviceTokenReq`` (msg_server, before a push) gets the iOS and
  Android tokens of the listed users with their unread totals as
  ``push_count`` and ``push_type`` 1 (normal push). Its attach_data, the
  message to push, is echoed unchanged.
- ``IMPushShieldReq`` / ``IMQueryPushShieldReq`` set and read
  ``IMUser.push_shield_status``; result_code 1 for an unknown user or a
  status other than 0 and 1.
"""

from __future__ import annotations

import logging

from teamtalk.db_proxy.handlers_common import Spawn, send_response
from teamtalk.net.connection import Connection
from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.pb import IM_Login, IM_Server
from teamtalk.pdu import Pdu
from teamtalk.protocol import Dispatcher
from teamtalk.storage import Storage
from teamtalk.storage.buddies import get_push_shield, set_push_shield
from teamtalk.storage.settings import count_unread, get_device_tokens, set_device_token

logger = logging.getLogger(__name__)

RESULT_OK = 0
RESULT_FAILED = 1
#: UserTokenInfo.push_type of a push with sound and banner (2 is a silent push).
PUSH_TYPE_NORMAL = 1
#: Max users whose tokens one request may ask for.
MAX_USERS_PER_REQUEST = 2000


class SettingsHandlers:
    """Handlers of device tokens and push shield settings."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.token_cache = storage.caches.get("token")
        self.unread_cache = storage.caches.get("unread")

    def register(self, dispatcher: Dispatcher, spawn: Spawn) -> None:
        add = dispatcher.add
        add(BD.SID_LOGIN, BD.CID_LOGIN_REQ_DEVICETOKEN, IM_Login.IMDeviceTokenReq, spawn(self.device_token))
        add(BD.SID_OTHER, BD.CID_OTHER_GET_DEVICE_TOKEN_REQ, IM_Server.IMGetDeviceTokenReq,
            spawn(self.get_device_token))
        add(BD.SID_LOGIN, BD.CID_LOGIN_REQ_PUSH_SHIELD, IM_Login.IMPushShieldReq, spawn(self.push_shield))
        add(BD.SID_LOGIN, BD.CID_LOGIN_REQ_QUERY_PUSH_SHIELD, IM_Login.IMQueryPushShieldReq,
            spawn(self.query_push_shield))

    async def device_token(self, connection: Connection, pdu: Pdu, request: IM_Login.IMDeviceTokenReq) -> None:
        try:
            await set_device_token(self.token_cache, request.user_id, request.client_type, request.device_token)
        except ValueError as exc:
            logger.info("not storing the device token of user %d: %s", request.user_id, exc)
        else:
            logger.debug("user %d: device token of client type %d %s", request.user_id, request.client_type,
                         "stored" if request.device_token else "forgotten")
        response = IM_Login.IMDeviceTokenRsp(user_id=request.user_id, attach_data=request.attach_data)
        send_response(connection, pdu, BD.SID_LOGIN, BD.CID_LOGIN_RES_DEVICETOKEN, response)

    async def get_device_token(self, connection: Connection, pdu: Pdu,
                               request: IM_Server.IMGetDeviceTokenReq) -> None:
        user_ids = list(dict.fromkeys(request.user_id))[:MAX_USERS_PER_REQUEST]
        tokens = await get_device_tokens(self.token_cache, user_ids)
        unread = await count_unread(self.storage.slave, self.unread_cache, [token.user_id for token in tokens])
        response = IM_Server.IMGetDeviceTokenRsp(attach_data=request.attach_data)
        for token in tokens:
            response.user_token_info.add(user_id=token.user_id, user_type=token.client_type, token=token.token,
                                         push_count=unread.get(token.user_id, 0), push_type=PUSH_TYPE_NORMAL)
        logger.debug("device tokens: %d of %d users have one", len(tokens), len(user_ids))
        send_response(connection, pdu, BD.SID_OTHER, BD.CID_OTHER_GET_DEVICE_TOKEN_RSP, response)

    async def push_shield(self, connection: Connection, pdu: Pdu, request: IM_Login.IMPushShieldReq) -> None:
        response = IM_Login.IMPushShieldRsp(user_id=request.user_id, result_code=RESULT_FAILED,
                                            attach_data=request.attach_data)
        try:
            changed = await set_push_shield(self.storage.master, request.user_id, request.shield_status)
        except ValueError as exc:
            logger.info("user %d cannot set the push shield: %s", request.user_id, exc)
            changed = False
        if changed:
            response.result_code = RESULT_OK
            response.shield_status = request.shield_status
        send_response(connection, pdu, BD.SID_LOGIN, BD.CID_LOGIN_RES_PUSH_SHIELD, response)

    async def query_push_shield(self, connection: Connection, pdu: Pdu,
                                request: IM_Login.IMQueryPushShieldReq) -> None:
        response = IM_Login.IMQueryPushShieldRsp(user_id=request.user_id, result_code=RESULT_FAILED,
                                                 attach_data=request.attach_data)
        status = await get_push_shield(self.storage.master, request.user_id)
        if status is not None:
            response.result_code = RESULT_OK
            response.shield_status = status
        send_response(connection, pdu, BD.SID_LOGIN, BD.CID_LOGIN_RES_QUERY_PUSH_SHIELD, response)
