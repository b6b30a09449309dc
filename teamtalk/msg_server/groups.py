"""Group chat on msg_server: fan-out of stored group messages and member changes.

A stored group message (db_proxy's CID_MSG_DATA response) goes to every
device of every member on this msg_server, and once to route_server, which
passes it to the other msg_servers; each of them delivers it to its own
members' devices.  So every online device gets each message once.

The member lists come from db_proxy (``IMGroupInfoListReq``), like the
original, and are kept in a small cache so a busy group costs one lookup,
not one per message.  A member change that passes through any msg_server
(``IMGroupChangeMemberNotify``) empties that group's entry; entries also
expire after ``ttl`` seconds, which bounds how long a change made outside
the servers (the admin CLI) takes to reach the fan-out.  Messages that
arrive while a group's members are being fetched wait in order.  When a
member change arrives during a fetch, the fetch is made again, because its
response may list the members from before the change.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

import trio

from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.pb import IM_Group
from teamtalk.protocol import (
    ATTACH_TYPE_PDU,
    decode_attach_data,
    encode_attach_data,
    encode_message,
)

logger = logging.getLogger(__name__)

DEFAULT_MEMBER_TTL = 5.0
# A fetch of members that gets no response within this many seconds is given up.
MEMBER_FETCH_TIMEOUT = 10.0


@dataclass
class _GroupEntry:
    members: frozenset | None = None
    fetched_at: float = 0.0
    # Messages waiting for the member list: (encoded PDU, parsed IMMsgData, sender connection).
    waiting: deque = field(default_factory=deque)
    fetch_started: float | None = None
    # A member change came while a fetch was in flight, so its response may predate the change.
    fetch_outdated: bool = False


class GroupFanOut:
    """Deliver group messages and member-change notifies to local devices."""

    def __init__(self, server, ttl: float = DEFAULT_MEMBER_TTL) -> None:
        self.server = server
        self.ttl = ttl
        self.groups: dict[int, _GroupEntry] = {}
        self.fetch_count = 0

    # Member cache

    def invalidate(self, group_id: int) -> None:
        entry = self.groups.get(group_id)
        if entry is not None:
            entry.members = None
            entry.fetch_outdated = entry.fetch_started is not None

    def _fresh_members(self, entry: _GroupEntry) -> frozenset | None:
        if entry.members is not None and trio.current_time() - entry.fetched_at < self.ttl:
            return entry.members
        return None

    # Messages

    def deliver(self, data: bytes, message, sender=None) -> None:
        """Fan out one stored group message (``data`` is its encoded PDU) to local members."""
        group_id = message.to_session_id
        entry = self.groups.setdefault(group_id, _GroupEntry())
        members = self._fresh_members(entry)
        if members is not None and not entry.waiting:
            self._deliver_to_members(data, message, members, sender)
            return
        entry.waiting.append((data, message, sender))
        self._fetch_members(group_id, message.from_user_id, entry)

    def _deliver_to_members(self, data: bytes, message, members, sender) -> None:
        server = self.server
        for user_id in members:
            server.deliver_to_user(user_id, data, exclude=sender,
                                   pending_peer=message.to_session_id, msg_id=message.msg_id)

    def _fetch_members(self, group_id: int, user_id: int, entry: _GroupEntry) -> None:
        now = trio.current_time()
        if entry.fetch_started is not None and now - entry.fetch_started < MEMBER_FETCH_TIMEOUT:
            return
        request = IM_Group.IMGroupInfoListReq(user_id=user_id)
        request.group_version_list.add(group_id=group_id, version=0)
        request.attach_data = encode_attach_data(0, ATTACH_TYPE_PDU, pdu=group_id.to_bytes(4, "big"))
        if self.server.send_to_db(group_id, encode_message(BD.SID_GROUP, BD.CID_GROUP_INFO_REQUEST, request)):
            entry.fetch_started = now
            self.fetch_count += 1
        else:
            dropped = len(entry.waiting)
            entry.waiting.clear()
            logger.warning("group %d: %d messages not delivered to this msg_server's members: "
                           "no db_proxy connected to fetch the member list", group_id, dropped)

    def is_member_fetch(self, message) -> bool:
        """Return True if an IMGroupInfoListRsp is the response to one of our own member fetches."""
        if not message.HasField("attach_data"):
            return False
        try:
            attach_type = decode_attach_data(message.attach_data)[0]
        except ValueError:
            return False
        return attach_type == ATTACH_TYPE_PDU

    def members_fetched(self, message) -> None:
        """Handle the IMGroupInfoListRsp of a member fetch: cache it, deliver what waited."""
        _, _, _, payload = decode_attach_data(message.attach_data)
        group_id = int.from_bytes(payload[:4], "big") if len(payload) >= 4 else 0
        entry = self.groups.setdefault(group_id, _GroupEntry())
        entry.fetch_started = None
        if entry.fetch_outdated:
            # The waiting messages go to the members after the change: fetch them again.
            entry.fetch_outdated = False
            if entry.waiting:
                self._fetch_members(group_id, entry.waiting[0][1].from_user_id, entry)
            return
        info = next((g for g in message.group_info_list if g.group_id == group_id), None)
        if info is None:
            dropped = len(entry.waiting)
            entry.waiting.clear()
            logger.info("group %d not found by db_proxy; %d waiting messages dropped", group_id, dropped)
            return
        entry.members = frozenset(info.group_member_list)
        entry.fetched_at = trio.current_time()
        while entry.waiting:
            data, stored, sender = entry.waiting.popleft()
            self._deliver_to_members(data, stored, entry.members, sender)

    # Member changes

    def change_notify(self, notify, exclude=None) -> bytes:
        """Deliver an IMGroupChangeMemberNotify to local members old and new; return its PDU.

        ``exclude`` is a connection that gets no copy.
        """
        self.invalidate(notify.group_id)
        data = encode_message(BD.SID_GROUP, BD.CID_GROUP_CHANGE_MEMBER_NOTIFY, notify)
        for user_id in {*notify.cur_user_id_list, *notify.chg_user_id_list}:
            self.server.deliver_to_user(user_id, data, exclude=exclude)
        return data
