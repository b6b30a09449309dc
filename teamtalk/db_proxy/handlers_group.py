"""Groups: lists, info by version, creation, membership changes and push shielding.

Behaviour follows the original db_proxy_server:

- A request naming a group that does not exist or is deleted gets no
  response (change members, shield, get shield), as in the original.
- ``IMGroupCreateReq`` accepts both group types, because http_msg_server
  creates normal groups through it; msg_server rejects normal groups from
  clients. An empty name, no member, or members that are not users give
  result_code 1.
- ``IMGroupChangeMemberReq``: the creator (or user 0, a server) may add
  and remove anyone, and a member of a temporary group may add users.
  Anything else gives result_code 1. Adding only users already in the
  group gives result_code 1 and changes nothing, as in the original.
  Removing only users not in the group gives result_code 0 with an empty
  ``chg_user_id_list`` and changes nothing. The original reports them as
  removed and bumps the version. An empty member list gives result_code 1;
  for a removal the original returns 0.
- ``IMGroupInfoListRsp`` lists only groups whose version is newer than the
  one the client sent; version 0 asks for everything. ``shield_status`` is
  the requesting user's setting, which the original leaves at 0.

Also here: the group parts of the message handlers (history, unread,
read acknowledgements, recent sessions), in :class:`GroupReader`.
"""

from __future__ import annotations

import logging

from teamtalk.db_proxy.handlers_common import Spawn, send_response
from teamtalk.net.connection import Connection
from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.pb import IM_Group, IM_Server
from teamtalk.pdu import Pdu
from teamtalk.protocol import Dispatcher
from teamtalk.storage import Storage
from teamtalk.storage.group_messages import (
    StoredGroupMessage,
    get_group_messages,
    get_group_messages_by_id,
    get_latest_group_messages,
)
from teamtalk.storage.groups import (
    CHANGE_OK,
    GroupDirectory,
    GroupSnapshot,
    change_members,
    create_group,
    get_group_unread_counts,
    get_shield_statuses,
    get_user_groups,
    get_user_shield_statuses,
    mark_groups_read,
    publish_member_change,
    publish_new_group,
    set_shield_status,
)

logger = logging.getLogger(__name__)

RESULT_OK = 0
RESULT_FAILED = 1

_KNOWN_MSG_TYPES = frozenset(BD.MsgType.values())
#: Max groups described in one IMGroupInfoListRsp.
MAX_GROUPS_PER_REQUEST = 500


class GroupHandlers:
    """Handlers of ``SID_GROUP`` commands and of ``CID_OTHER_GET_SHIELD_REQ``."""

    def __init__(self, storage: Storage, directory: GroupDirectory) -> None:
        self.storage = storage
        self.directory = directory
        self.group_set = storage.caches.get("group_set")

    def register(self, dispatcher: Dispatcher, spawn: Spawn) -> None:
        add = dispatcher.add
        add(BD.SID_GROUP, BD.CID_GROUP_NORMAL_LIST_REQUEST, IM_Group.IMNormalGroupListReq, spawn(self.normal_list))
        add(BD.SID_GROUP, BD.CID_GROUP_INFO_REQUEST, IM_Group.IMGroupInfoListReq, spawn(self.group_info))
        add(BD.SID_GROUP, BD.CID_GROUP_CREATE_REQUEST, IM_Group.IMGroupCreateReq, spawn(self.create))
        add(BD.SID_GROUP, BD.CID_GROUP_CHANGE_MEMBER_REQUEST, IM_Group.IMGroupChangeMemberReq,
            spawn(self.change_member))
        add(BD.SID_GROUP, BD.CID_GROUP_SHIELD_GROUP_REQUEST, IM_Group.IMGroupShieldReq, spawn(self.shield))
        add(BD.SID_OTHER, BD.CID_OTHER_GET_SHIELD_REQ, IM_Server.IMGroupGetShieldReq, spawn(self.get_shield))

    async def normal_list(self, connection: Connection, pdu: Pdu, request: IM_Group.IMNormalGroupListReq) -> None:
        response = IM_Group.IMNormalGroupListRsp(user_id=request.user_id, attach_data=request.attach_data)
        for group_id, version in await get_user_groups(self.storage.slave, request.user_id, BD.GROUP_TYPE_NORMAL):
            response.group_version_list.add(group_id=group_id, version=version)
        logger.debug("user %d: %d normal groups", request.user_id, len(response.group_version_list))
        send_response(connection, pdu, BD.SID_GROUP, BD.CID_GROUP_NORMAL_LIST_RESPONSE, response)

    async def group_info(self, connection: Connection, pdu: Pdu, request: IM_Group.IMGroupInfoListReq) -> None:
        response = IM_Group.IMGroupInfoListRsp(user_id=request.user_id, attach_data=request.attach_data)
        known: dict[int, int] = {}
        for info in request.group_version_list:
            if len(known) == MAX_GROUPS_PER_REQUEST:
                logger.info("user %d asked for %d groups; describing the first %d",
                            request.user_id, len(request.group_version_list), MAX_GROUPS_PER_REQUEST)
                break
            known.setdefault(info.group_id, info.version)

        groups = await self.directory.get_groups(known)
        changed = [groups[group_id] for group_id in known
                   if group_id in groups and _describable(groups[group_id])
                   and groups[group_id].group.version > known[group_id]]
        shielded = await get_user_shield_statuses(self.group_set, request.user_id,
                                                  [snapshot.group.id for snapshot in changed])
        for snapshot in changed:
            _add_group_info(response, snapshot, shielded[snapshot.group.id])
        logger.debug("user %d: %d of %d groups changed", request.user_id, len(changed), len(known))
        send_response(connection, pdu, BD.SID_GROUP, BD.CID_GROUP_INFO_RESPONSE, response)

    async def create(self, connection: Connection, pdu: Pdu, request: IM_Group.IMGroupCreateReq) -> None:
        response = IM_Group.IMGroupCreateRsp(user_id=request.user_id, result_code=RESULT_FAILED,
                                             group_name=request.group_name, attach_data=request.attach_data)
        try:
            snapshot = await create_group(self.storage.master, request.group_name, request.user_id,
                                          request.member_id_list, avatar=request.group_avatar,
                                          group_type=request.group_type)
        except ValueError as exc:
            logger.info("user %d cannot create group %r: %s", request.user_id, request.group_name, exc)
            send_response(connection, pdu, BD.SID_GROUP, BD.CID_GROUP_CREATE_RESPONSE, response)
            return

        self.directory.remember(snapshot)
        try:
            await publish_new_group(self.storage.caches, snapshot)
        except Exception:
            # The group is stored; the directory rewrites its member hash on
            # the next reload, and msg_ids recover from the stored rows.
            logger.warning("writing new group %d to the caches failed", snapshot.group.id, exc_info=True)
        response.result_code = RESULT_OK
        response.group_id = snapshot.group.id
        response.user_id_list.extend(snapshot.member_ids())
        send_response(connection, pdu, BD.SID_GROUP, BD.CID_GROUP_CREATE_RESPONSE, response)

    async def change_member(self, connection: Connection, pdu: Pdu,
                            request: IM_Group.IMGroupChangeMemberReq) -> None:
        user_id, group_id = request.user_id, request.group_id
        snapshot = await self.directory.get_group(group_id)
        if snapshot is None or not snapshot.usable:
            logger.info("user %d changes members of group %d, which does not exist; no response",
                        user_id, group_id)
            return

        change = await change_members(self.storage.master, group_id, user_id, request.change_type,
                                      request.member_id_list)
        response = IM_Group.IMGroupChangeMemberRsp(
            user_id=user_id, change_type=request.change_type, group_id=group_id,
            result_code=RESULT_OK if change.outcome == CHANGE_OK else RESULT_FAILED,
            attach_data=request.attach_data,
        )
        if change.outcome == CHANGE_OK:
            self.directory.remember(change.snapshot)
            try:
                await publish_member_change(self.storage.caches, change)
            except Exception:
                logger.warning("writing the member change of group %d to the caches failed", group_id,
                               exc_info=True)
            response.chg_user_id_list.extend(change.changed)
            response.cur_user_id_list.extend(change.snapshot.member_ids())
        else:
            logger.info("user %d cannot change members %s of group %d: %s",
                        user_id, list(request.member_id_list), group_id, change.outcome)
        send_response(connection, pdu, BD.SID_GROUP, BD.CID_GROUP_CHANGE_MEMBER_RESPONSE, response)

    async def shield(self, connection: Connection, pdu: Pdu, request: IM_Group.IMGroupShieldReq) -> None:
        user_id, group_id = request.user_id, request.group_id
        snapshot = await self.directory.get_group(group_id)
        if snapshot is None or not snapshot.usable:
            logger.info("user %d shields group %d, which does not exist; no response", user_id, group_id)
            return
        response = IM_Group.IMGroupShieldRsp(user_id=user_id, group_id=group_id, result_code=RESULT_FAILED,
                                             attach_data=request.attach_data)
        if user_id not in snapshot.members:
            logger.info("user %d shields group %d without being a member", user_id, group_id)
        elif request.shield_status not in (0, 1):
            logger.info("user %d sent shield status %d for group %d", user_id, request.shield_status, group_id)
        else:
            await set_shield_status(self.group_set, group_id, user_id, request.shield_status)
            response.result_code = RESULT_OK
        send_response(connection, pdu, BD.SID_GROUP, BD.CID_GROUP_SHIELD_GROUP_RESPONSE, response)

    async def get_shield(self, connection: Connection, pdu: Pdu, request: IM_Server.IMGroupGetShieldReq) -> None:
        group_id = request.group_id
        snapshot = await self.directory.get_group(group_id)
        if snapshot is None or not snapshot.usable:
            logger.info("shield settings of group %d, which does not exist; no response", group_id)
            return
        response = IM_Server.IMGroupGetShieldRsp(group_id=group_id, attach_data=request.attach_data)
        user_ids = list(dict.fromkeys(request.user_id))
        for user_id, status in (await get_shield_statuses(self.group_set, group_id, user_ids)).items():
            response.shield_status_list.add(user_id=user_id, group_id=group_id, shield_status=status)
        send_response(connection, pdu, BD.SID_OTHER, BD.CID_OTHER_GET_SHIELD_RSP, response)


def _describable(snapshot: GroupSnapshot) -> bool:
    """Return whether a group can go into a GroupInfo: usable, with a known type."""
    if snapshot.group.group_type not in BD.GroupType.values():
        logger.warning("group %d has an unknown type %d; leaving it out", snapshot.group.id,
                       snapshot.group.group_type)
        return False
    return snapshot.usable


def _add_group_info(response: IM_Group.IMGroupInfoListRsp, snapshot: GroupSnapshot, shield_status: int) -> None:
    group = snapshot.group
    response.group_info_list.add(
        group_id=group.id,
        version=group.version,
        group_name=group.name,
        group_avatar=group.avatar,
        group_creator_id=group.creator,
        group_type=group.group_type,
        shield_status=shield_status,
        group_member_list=snapshot.member_ids(),
    )


class GroupReader:
    """The group side of the message, unread and session handlers.

    History is served to members only, from the time they joined (as in
    the original); a non-member gets an empty list and latest msg_id 0.
    """

    def __init__(self, storage: Storage, directory: GroupDirectory) -> None:
        self.storage = storage
        self.directory = directory
        self.unread_cache = storage.caches.get("unread")

    async def _joined(self, user_id: int, group_id: int) -> int | None:
        """Return when a user joined a usable group, None if not a member."""
        snapshot = await self.directory.get_group(group_id)
        if snapshot is None or not snapshot.usable:
            return None
        return snapshot.members.get(user_id)

    async def history(self, user_id: int, group_id: int, msg_id_begin: int, count: int) -> list[StoredGroupMessage]:
        joined = await self._joined(user_id, group_id)
        if joined is None:
            logger.info("user %d asked for messages of group %d without being a member", user_id, group_id)
            return []
        return await get_group_messages(self.storage.shards, group_id, msg_id_begin, count, joined)

    async def by_ids(self, user_id: int, group_id: int, msg_ids) -> list[StoredGroupMessage]:
        joined = await self._joined(user_id, group_id)
        if joined is None:
            logger.info("user %d asked for messages of group %d without being a member", user_id, group_id)
            return []
        return await get_group_messages_by_id(self.storage.shards, group_id, msg_ids, joined)

    async def latest_msg_id(self, user_id: int, group_id: int) -> int:
        if await self._joined(user_id, group_id) is None:
            return 0
        latest = (await get_latest_group_messages(self.storage.shards, [group_id])).get(group_id)
        return 0 if latest is None else latest.msg_id

    async def unread(self, user_id: int) -> list[tuple[int, int, StoredGroupMessage]]:
        """Return ``(group_id, unread, latest message)`` of the user's groups with unread messages."""
        group_ids = [group_id for group_id, _ in await get_user_groups(self.storage.slave, user_id)]
        counts = await get_group_unread_counts(self.unread_cache, user_id, group_ids)
        latest = await get_latest_group_messages(self.storage.shards, counts)
        result = []
        for group_id, count in counts.items():
            message = latest.get(group_id)
            if message is None or message.msg_type not in _KNOWN_MSG_TYPES:
                logger.info("user %d: ignoring %d unread in group %d without a stored message",
                            user_id, count, group_id)
                continue
            result.append((group_id, count, message))
        return result

    async def mark_read(self, user_id: int, group_id: int) -> None:
        """Set the user's read count of the group to its total."""
        await mark_groups_read(self.unread_cache, [(user_id, group_id)])

    async def latest_messages(self, group_ids) -> dict[int, StoredGroupMessage]:
        return await get_latest_group_messages(self.storage.shards, group_ids)


def add_group_msg_infos(msg_list, messages: list[StoredGroupMessage]) -> None:
    """Append a MsgInfo per message; rows of an unknown type cannot be encoded and are skipped."""
    for message in messages:
        if message.msg_type not in _KNOWN_MSG_TYPES:
            logger.warning("skipping msg_id %d of group %d: unknown msg_type %d",
                           message.msg_id, message.group_id, message.msg_type)
            continue
        msg_list.add(msg_id=message.msg_id, from_session_id=message.from_id, create_time=message.created,
                     msg_type=message.msg_type, msg_data=message.content)
