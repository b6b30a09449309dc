"""Contacts: all users and departments changed since a time, session removal, avatar, sign info.

- ``IMAllUserReq`` and ``IMDepartmentReq`` return the rows changed since
  ``latest_update_time`` and the time to ask from next (see
  :func:`teamtalk.storage.buddies.get_users_changed_since`; departments
  use ``updated`` > the time, as the original does).
- ``IMRemoveSessionReq`` marks the session removed and clears its unread
  count. For a single chat that deletes the peer's field of
  ``unread_<userId>``, and for a group it sets the read count to the group
  total. result_code is 1 when the user has no active session with that
  peer.
- ``IMChangeAvatarReq`` stores the avatar and answers ``IMChangeAvatarRsp``,
  which the original never sends.
- ``IMChangeSignInfoReq`` stores the sign info (at most 128 characters)
  and answers with it, which msg_server uses for its notify.
"""

from __future__ import annotations

import logging

from teamtalk.db_proxy.handlers_common import Spawn, send_response
from teamtalk.db_proxy.handlers_group import GroupReader
from teamtalk.net.connection import Connection
from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.pb import IM_Buddy
from teamtalk.pdu import Pdu
from teamtalk.protocol import Dispatcher
from teamtalk.storage import Storage
from teamtalk.storage.buddies import get_users_changed_since, remove_session, set_avatar, set_sign_info
from teamtalk.storage.departs import get_departs_changed_since
from teamtalk.storage.messages import clear_unread
from teamtalk.storage.users import user_info_fields

logger = logging.getLogger(__name__)

RESULT_OK = 0
RESULT_FAILED = 1

_DEPART_STATUS = frozenset(BD.DepartmentStatusType.values())


class BuddyHandlers:
    """Handlers of the contact list commands of ``SID_BUDDY_LIST``."""

    def __init__(self, storage: Storage, groups: GroupReader) -> None:
        self.storage = storage
        self.groups = groups
        self.unread_cache = storage.caches.get("unread")

    def register(self, dispatcher: Dispatcher, spawn: Spawn) -> None:
        add = dispatcher.add
        add(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_ALL_USER_REQUEST, IM_Buddy.IMAllUserReq, spawn(self.all_users))
        add(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_DEPARTMENT_REQUEST, IM_Buddy.IMDepartmentReq,
            spawn(self.departments))
        add(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_REMOVE_SESSION_REQ, IM_Buddy.IMRemoveSessionReq,
            spawn(self.remove_session))
        add(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_CHANGE_AVATAR_REQUEST, IM_Buddy.IMChangeAvatarReq,
            spawn(self.change_avatar))
        add(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_CHANGE_SIGN_INFO_REQUEST, IM_Buddy.IMChangeSignInfoReq,
            spawn(self.change_sign_info))

    async def all_users(self, connection: Connection, pdu: Pdu, request: IM_Buddy.IMAllUserReq) -> None:
        # NOTE: every changed user goes into one response; with tens of
        # thousands of users it can exceed msg_server's maximum PDU length.
        changed = await get_users_changed_since(self.storage.slave, request.latest_update_time)
        response = IM_Buddy.IMAllUserRsp(user_id=request.user_id, latest_update_time=changed.latest_update_time,
                                         attach_data=request.attach_data)
        for user in changed.users:
            response.user_list.add(**user_info_fields(user))
        logger.debug("user %d: %d users changed since %d", request.user_id, len(response.user_list),
                     request.latest_update_time)
        send_response(connection, pdu, BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_ALL_USER_RESPONSE, response)

    async def departments(self, connection: Connection, pdu: Pdu, request: IM_Buddy.IMDepartmentReq) -> None:
        since = request.latest_update_time
        departs = await get_departs_changed_since(self.storage.slave, since)
        response = IM_Buddy.IMDepartmentRsp(user_id=request.user_id,
                                            latest_update_time=max([since, *(d.updated for d in departs)]),
                                            attach_data=request.attach_data)
        for depart in departs:
            if depart.status not in _DEPART_STATUS:
                logger.warning("leaving out department %d: unknown status %d", depart.id, depart.status)
                continue
            response.dept_list.add(dept_id=depart.id, priority=depart.priority, dept_name=depart.name,
                                   parent_dept_id=depart.parent_id, dept_status=depart.status)
        send_response(connection, pdu, BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_DEPARTMENT_RESPONSE, response)

    async def remove_session(self, connection: Connection, pdu: Pdu, request: IM_Buddy.IMRemoveSessionReq) -> None:
        user_id, peer_id, session_type = request.user_id, request.session_id, request.session_type
        removed = await remove_session(self.storage.master, user_id, peer_id, session_type)
        if removed:
            if session_type == BD.SESSION_TYPE_SINGLE:
                await clear_unread(self.unread_cache, user_id, peer_id)
            else:
                await self.groups.mark_read(user_id, peer_id)
        logger.info("user %d removes session %d (type %d): %s", user_id, peer_id, session_type,
                    "done" if removed else "no active session")
        response = IM_Buddy.IMRemoveSessionRsp(user_id=user_id, session_type=session_type, session_id=peer_id,
                                               result_code=RESULT_OK if removed else RESULT_FAILED,
                                               attach_data=request.attach_data)
        send_response(connection, pdu, BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_REMOVE_SESSION_RES, response)

    async def change_avatar(self, connection: Connection, pdu: Pdu, request: IM_Buddy.IMChangeAvatarReq) -> None:
        try:
            changed = await set_avatar(self.storage.master, request.user_id, request.avatar_url)
        except ValueError as exc:
            logger.info("user %d cannot change the avatar: %s", request.user_id, exc)
            changed = False
        response = IM_Buddy.IMChangeAvatarRsp(user_id=request.user_id,
                                              result_code=RESULT_OK if changed else RESULT_FAILED,
                                              attach_data=request.attach_data)
        send_response(connection, pdu, BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_CHANGE_AVATAR_RESPONSE, response)

    async def change_sign_info(self, connection: Connection, pdu: Pdu,
                               request: IM_Buddy.IMChangeSignInfoReq) -> None:
        try:
            changed = await set_sign_info(self.storage.master, request.user_id, request.sign_info)
        except ValueError as exc:
            logger.info("user %d cannot change the sign info: %s", request.user_id, exc)
            changed = False
        response = IM_Buddy.IMChangeSignInfoRsp(user_id=request.user_id,
                                                result_code=RESULT_OK if changed else RESULT_FAILED,
                                                attach_data=request.attach_data)
        if changed:
            response.sign_info = request.sign_info
        send_response(connection, pdu, BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_CHANGE_SIGN_INFO_RESPONSE, response)
