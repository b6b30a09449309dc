"""Groups: ``IMGroup`` and ``IMGroupMember`` rows, and the group keys of the caches.

Tables, as the original TeamTalk uses them:

- ``IMGroup``: one row per group. ``status`` 0 is a usable group (other
  values are deleted groups), ``type`` is GroupType (1 normal, 2
  temporary), ``version`` goes up by one on every membership change so
  clients know when to fetch the group again.
- ``IMGroupMember``: one row per group and user; ``status`` 0 is a member,
  1 a user who left. ``updated`` of a member row is the time the user
  joined, which also limits the history the member may read.

Cache keys, on the instances the original uses:

- ``group_member_<groupId>`` (``group_member``): hash userId -> join time;
- ``group_set_<groupId>`` (``group_set``): hash ``<userId>_1`` -> 1 when the
  user shields the group's push notifications, 0 when not;
- ``group_msg_id_<groupId>`` (``unread``): the last msg_id of the group;
- ``<groupId>_im_group_msg`` (``unread``): hash field ``count``, messages
  ever sent to the group;
- ``<userId>_<groupId>_im_user_group`` (``unread``): hash field ``count``,
  the group total when the user last read it. Unread = total - that.

The tables are the source of truth for membership. :class:`GroupDirectory`
keeps each group's members in memory with the group version they belong
to, and reloads them when ``IMGroup.version`` moves on. That is how a
running server sees changes made by another process, such as the
``teamtalk group`` command, which cannot write to an embedded cache that
the server keeps in memory. So every writer of ``IMGroupMember`` must bump
``IMGroup.version`` in the same transaction. The ``group_member_<groupId>``
hash is rewritten from the tables after every change and reload, for other
tools that read it. This server never reads its content.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.storage.cache import Cache, CacheSet
from teamtalk.storage.database import Cursor, Database
from teamtalk.storage.sessions import STATUS_OK as SESSION_STATUS_OK
from teamtalk.storage.sessions import STATUS_REMOVED as SESSION_STATUS_REMOVED

logger = logging.getLogger(__name__)

#: IMGroup.status of a usable group.
GROUP_STATUS_OK = 0
#: IMGroup.status given to deleted groups.
GROUP_STATUS_DELETED = 1
#: IMGroupMember.status of a member and of a user who left.
MEMBER_STATUS_OK = 0
MEMBER_STATUS_LEFT = 1
#: The original's setting number for push shielding, part of the group_set field name.
GROUP_SETTING_PUSH = 1
#: Hash field of the group message counters.
COUNT_FIELD = "count"

GROUP_TYPES = frozenset({BD.GROUP_TYPE_NORMAL, BD.GROUP_TYPE_TMP})
#: Column widths of IMGroup.name and IMGroup.avatar (varchar lengths).
MAX_GROUP_NAME = 256
MAX_GROUP_AVATAR = 256

#: Largest number of ids bound in one ``IN (...)`` list.
_IN_CHUNK = 500

_GROUP_COLUMNS = "id, name, avatar, creator, type, userCnt, status, version, lastChated, created, updated"


# Cache keys


def group_member_key(group_id: int) -> str:
    """Return the cache key of a group's members (hash userId -> join time)."""
    return "group_member_%d" % group_id


def group_set_key(group_id: int) -> str:
    """Return the cache key of a group's per-member settings."""
    return "group_set_%d" % group_id


def shield_field(user_id: int) -> str:
    """Return the ``group_set_<groupId>`` field of a user's push shield setting."""
    return "%d_%d" % (user_id, GROUP_SETTING_PUSH)


def group_msg_id_key(group_id: int) -> str:
    """Return the cache key of a group's msg_id counter."""
    return "group_msg_id_%d" % group_id


def group_count_key(group_id: int) -> str:
    """Return the cache key of a group's total message count (field ``count``)."""
    return "%d_im_group_msg" % group_id


def user_group_count_key(user_id: int, group_id: int) -> str:
    """Return the cache key of the group total a user has read (field ``count``)."""
    return "%d_%d_im_user_group" % (user_id, group_id)


# Rows


@dataclass(frozen=True, slots=True)
class GroupRow:
    """One IMGroup row; ``group_type`` is column type."""

    id: int
    name: str
    avatar: str
    creator: int
    group_type: int
    user_cnt: int
    status: int
    version: int
    last_chated: int
    created: int
    updated: int

    @classmethod
    def from_db(cls, row: tuple) -> GroupRow:
        (id_, name, avatar, creator, group_type, user_cnt, status, version,
         last_chated, created, updated) = row
        return cls(int(id_), name or "", avatar or "", int(creator), int(group_type), int(user_cnt),
                   int(status), int(version), int(last_chated), int(created), int(updated))


@dataclass(frozen=True, slots=True)
class GroupSnapshot:
    """A group with its members as of ``group.version``.

    ``members`` maps user id to the time the user joined.
    """

    group: GroupRow
    members: Mapping[int, int]

    @property
    def usable(self) -> bool:
        """True for a group that exists and is not deleted."""
        return self.group.status == GROUP_STATUS_OK

    def member_ids(self) -> list[int]:
        return sorted(self.members)


#: Outcomes of :func:`change_members_tx`.
CHANGE_OK = "ok"
CHANGE_NO_GROUP = "no_group"
CHANGE_DENIED = "denied"
CHANGE_EMPTY = "empty"
CHANGE_NOTHING_TO_ADD = "nothing_to_add"


@dataclass(slots=True)
class MemberChange:
    """What :func:`change_members_tx` did.

    ``outcome`` is one of the ``CHANGE_*`` values. On ``CHANGE_OK``,
    ``changed`` lists the users actually added or removed (empty when a
    removal named only non-members, which changes nothing) and ``snapshot``
    holds the group after the change.
    """

    outcome: str
    changed: list[int] = field(default_factory=list)
    snapshot: GroupSnapshot | None = None


def _chunks(ids: Sequence[int]) -> Iterable[list[int]]:
    for start in range(0, len(ids), _IN_CHUNK):
        yield list(ids[start:start + _IN_CHUNK])


def _marks(count: int) -> str:
    return ", ".join(["%s"] * count)


# Statements; each takes a cursor and runs inside the caller's transaction.


def select_groups_tx(cursor: Cursor, group_ids: Sequence[int], lock: bool = False) -> dict[int, GroupRow]:
    """Return ``{id: GroupRow}`` for the groups that exist, whatever their status."""
    result: dict[int, GroupRow] = {}
    suffix = cursor.for_update if lock else ""
    for chunk in _chunks(sorted(set(group_ids))):
        cursor.execute(f"SELECT {_GROUP_COLUMNS} FROM IMGroup WHERE id IN ({_marks(len(chunk))}){suffix}", chunk)
        for row in cursor.fetchall():
            group = GroupRow.from_db(row)
            result[group.id] = group
    return result


def select_members_tx(cursor: Cursor, group_ids: Sequence[int]) -> dict[int, dict[int, int]]:
    """Return ``{group_id: {user_id: join time}}`` of the current members of each group."""
    result: dict[int, dict[int, int]] = {group_id: {} for group_id in group_ids}
    for chunk in _chunks(sorted(set(group_ids))):
        cursor.execute(
            f"SELECT groupId, userId, updated FROM IMGroupMember WHERE status=%s AND groupId IN ({_marks(len(chunk))})"
            " ORDER BY id",
            (MEMBER_STATUS_OK, *chunk),
        )
        for group_id, user_id, joined in cursor.fetchall():
            result[int(group_id)].setdefault(int(user_id), int(joined))
    return result


def select_snapshots_tx(cursor: Cursor, group_ids: Sequence[int]) -> dict[int, GroupSnapshot]:
    """Return the groups that exist with their members, read in one transaction."""
    groups = select_groups_tx(cursor, group_ids)
    members = select_members_tx(cursor, list(groups))
    return {group_id: GroupSnapshot(group, members[group_id]) for group_id, group in groups.items()}


def select_existing_users_tx(cursor: Cursor, user_ids: Sequence[int]) -> set[int]:
    """Return the ids among ``user_ids`` that have an IMUser row."""
    found: set[int] = set()
    for chunk in _chunks(sorted(set(user_ids))):
        cursor.execute(f"SELECT id FROM IMUser WHERE id IN ({_marks(len(chunk))})", chunk)
        found.update(int(row[0]) for row in cursor.fetchall())
    return found


def select_user_groups_tx(cursor: Cursor, user_id: int, group_type: int | None = None) -> list[tuple[int, int]]:
    """Return ``(group_id, version)`` of the usable groups a user belongs to, latest joined first."""
    sql = (
        "SELECT g.id, g.version FROM IMGroupMember m JOIN IMGroup g ON g.id = m.groupId"
        " WHERE m.userId=%s AND m.status=%s AND g.status=%s"
    )
    params: list[int] = [user_id, MEMBER_STATUS_OK, GROUP_STATUS_OK]
    if group_type is not None:
        sql += " AND g.type=%s"
        params.append(group_type)
    cursor.execute(sql + " ORDER BY m.updated DESC, m.id DESC", params)
    return list(dict.fromkeys((int(group_id), int(version)) for group_id, version in cursor.fetchall()))


def select_groups_of_users_tx(cursor: Cursor, user_ids: Sequence[int]) -> dict[int, list[int]]:
    """Return ``{user_id: [group_id, ...]}`` of the usable groups of several users."""
    result: dict[int, list[int]] = {user_id: [] for user_id in user_ids}
    for chunk in _chunks(sorted(set(user_ids))):
        cursor.execute(
            "SELECT m.userId, m.groupId FROM IMGroupMember m JOIN IMGroup g ON g.id = m.groupId"
            f" WHERE m.status=%s AND g.status=%s AND m.userId IN ({_marks(len(chunk))}) ORDER BY m.id",
            (MEMBER_STATUS_OK, GROUP_STATUS_OK, *chunk),
        )
        for user_id, group_id in cursor.fetchall():
            groups = result[int(user_id)]
            if int(group_id) not in groups:
                groups.append(int(group_id))
    return result


def insert_group_tx(
    cursor: Cursor, name: str, avatar: str, creator: int, group_type: int, member_ids: Sequence[int], now: int
) -> GroupSnapshot:
    """Create a group with the given members and return it.

    Ids without an IMUser row are left out. Raises ValueError when no
    member is left.
    """
    members = sorted(select_existing_users_tx(cursor, member_ids))
    if not members:
        raise ValueError("none of the member ids names an existing user")
    cursor.execute(
        "INSERT INTO IMGroup (name, avatar, creator, type, userCnt, status, version, lastChated, updated, created)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (name, avatar, creator, group_type, len(members), GROUP_STATUS_OK, 1, 0, now, now),
    )
    group_id = int(cursor.lastrowid)
    # A database restored from elsewhere may hold member rows under a reused id.
    cursor.execute("DELETE FROM IMGroupMember WHERE groupId=%s", (group_id,))
    cursor.executemany(
        "INSERT INTO IMGroupMember (groupId, userId, status, created, updated) VALUES (%s, %s, %s, %s, %s)",
        [(group_id, user_id, MEMBER_STATUS_OK, now, now) for user_id in members],
    )
    group = GroupRow(group_id, name, avatar, creator, group_type, len(members), GROUP_STATUS_OK, 1, 0, now, now)
    return GroupSnapshot(group, {user_id: now for user_id in members})


def may_change_members(group: GroupRow, members: Mapping[int, int], actor_id: int, change_type: int) -> bool:
    """Return whether ``actor_id`` may make this kind of membership change.

    As in the original, actor 0 (a server acting on its own) and the
    creator may add and remove anyone, and anyone may add to a temporary
    group. Unlike the original, that last case requires the actor to be a
    member of the group.
    """
    if actor_id == 0 or actor_id == group.creator:
        return True
    return (group.group_type == BD.GROUP_TYPE_TMP and change_type == BD.GROUP_MODIFY_TYPE_ADD
            and actor_id in members)


def change_members_tx(
    cursor: Cursor, group_id: int, actor_id: int, change_type: int, user_ids: Sequence[int], now: int
) -> MemberChange:
    """Add or remove members of a usable group and bump its version.

    Adding skips users already in the group and ids without an IMUser row,
    and fails with ``CHANGE_NOTHING_TO_ADD`` when nobody is left, as the
    original does. Removing skips users not in the group. When nobody is
    left to remove, nothing changes and the outcome is ``CHANGE_OK`` with
    an empty ``changed`` list. Removed users' group sessions are marked
    removed.
    """
    groups = select_groups_tx(cursor, [group_id], lock=True)
    group = groups.get(group_id)
    if group is None or group.status != GROUP_STATUS_OK:
        return MemberChange(CHANGE_NO_GROUP)
    members = select_members_tx(cursor, [group_id])[group_id]
    if not may_change_members(group, members, actor_id, change_type):
        return MemberChange(CHANGE_DENIED)
    requested = sorted({user_id for user_id in user_ids if user_id > 0})
    if not requested:
        return MemberChange(CHANGE_EMPTY)

    if change_type == BD.GROUP_MODIFY_TYPE_ADD:
        candidates = [user_id for user_id in requested if user_id not in members]
        changed = sorted(select_existing_users_tx(cursor, candidates)) if candidates else []
        if not changed:
            return MemberChange(CHANGE_NOTHING_TO_ADD)
        _add_member_rows(cursor, group_id, changed, now)
        members = {**members, **{user_id: now for user_id in changed}}
    else:
        changed = [user_id for user_id in requested if user_id in members]
        if not changed:
            return MemberChange(CHANGE_OK, [], GroupSnapshot(group, members))
        _remove_member_rows(cursor, group_id, changed, now)
        members = {user_id: joined for user_id, joined in members.items() if user_id not in changed}

    version = group.version + 1
    cursor.execute(
        "UPDATE IMGroup SET version=%s, userCnt=%s, updated=%s WHERE id=%s",
        (version, len(members), now, group_id),
    )
    updated = GroupRow(group.id, group.name, group.avatar, group.creator, group.group_type, len(members),
                       group.status, version, group.last_chated, group.created, now)
    return MemberChange(CHANGE_OK, changed, GroupSnapshot(updated, members))


def _add_member_rows(cursor: Cursor, group_id: int, user_ids: list[int], now: int) -> None:
    """Bring back rows of users who left, insert rows for the others."""
    former: set[int] = set()
    for chunk in _chunks(user_ids):
        cursor.execute(
            f"SELECT userId FROM IMGroupMember WHERE groupId=%s AND userId IN ({_marks(len(chunk))})",
            (group_id, *chunk),
        )
        former.update(int(row[0]) for row in cursor.fetchall())
    for chunk in _chunks(sorted(former)):
        cursor.execute(
            f"UPDATE IMGroupMember SET status=%s, updated=%s WHERE groupId=%s AND userId IN ({_marks(len(chunk))})",
            (MEMBER_STATUS_OK, now, group_id, *chunk),
        )
    cursor.executemany(
        "INSERT INTO IMGroupMember (groupId, userId, status, created, updated) VALUES (%s, %s, %s, %s, %s)",
        [(group_id, user_id, MEMBER_STATUS_OK, now, now) for user_id in user_ids if user_id not in former],
    )


def _remove_member_rows(cursor: Cursor, group_id: int, user_ids: list[int], now: int) -> None:
    for chunk in _chunks(user_ids):
        marks = _marks(len(chunk))
        cursor.execute(
            f"UPDATE IMGroupMember SET status=%s, updated=%s WHERE groupId=%s AND userId IN ({marks})",
            (MEMBER_STATUS_LEFT, now, group_id, *chunk),
        )
        cursor.execute(
            "UPDATE IMRecentSession SET status=%s, updated=%s"
            f" WHERE type=%s AND peerId=%s AND status=%s AND userId IN ({marks})",
            (SESSION_STATUS_REMOVED, now, BD.SESSION_TYPE_GROUP, group_id, SESSION_STATUS_OK, *chunk),
        )


def select_group_ids_by_name_tx(cursor: Cursor, name: str) -> list[int]:
    cursor.execute("SELECT id FROM IMGroup WHERE name=%s AND status=%s ORDER BY id", (name, GROUP_STATUS_OK))
    return [int(row[0]) for row in cursor.fetchall()]


def select_all_groups_tx(cursor: Cursor) -> list[GroupRow]:
    cursor.execute(f"SELECT {_GROUP_COLUMNS} FROM IMGroup ORDER BY id")
    return [GroupRow.from_db(row) for row in cursor.fetchall()]


# One transaction each


def check_group_fields(name: str, avatar: str, group_type: int) -> None:
    """Raise ValueError when a new group's name, avatar or type cannot be stored."""
    if not name:
        raise ValueError("group name must not be empty")
    if len(name) > MAX_GROUP_NAME:
        raise ValueError(f"group name is {len(name)} characters long; at most {MAX_GROUP_NAME} fit")
    if len(avatar) > MAX_GROUP_AVATAR:
        raise ValueError(f"group avatar URL is {len(avatar)} characters long; at most {MAX_GROUP_AVATAR} fit")
    if group_type not in GROUP_TYPES:
        raise ValueError(f"group type must be 1 (normal) or 2 (temporary), got {group_type}")


async def create_group(
    db: Database, name: str, creator: int, member_ids: Iterable[int], *,
    avatar: str = "", group_type: int = BD.GROUP_TYPE_NORMAL, now: int | None = None,
) -> GroupSnapshot:
    """Create a group and return it; the caches are not touched (see :func:`publish_new_group`).

    Raises ValueError for an empty or too long name or avatar, an unknown
    type, or members that name no existing user.
    """
    check_group_fields(name, avatar, group_type)
    members = sorted({int(user_id) for user_id in member_ids if int(user_id) > 0})
    if not members:
        raise ValueError("a group needs at least one member")
    now = int(time.time()) if now is None else int(now)
    snapshot = await db.run("create_group", insert_group_tx, name, avatar, creator, group_type, members, now)
    logger.info("created group %d (type %d) by user %d with %d members",
                snapshot.group.id, group_type, creator, len(snapshot.members))
    return snapshot


async def change_members(
    db: Database, group_id: int, actor_id: int, change_type: int, user_ids: Iterable[int], now: int | None = None
) -> MemberChange:
    """Add or remove members in one transaction; see :func:`change_members_tx`."""
    if change_type not in (BD.GROUP_MODIFY_TYPE_ADD, BD.GROUP_MODIFY_TYPE_DEL):
        raise ValueError(f"change type must be 1 (add) or 2 (remove), got {change_type}")
    now = int(time.time()) if now is None else int(now)
    change = await db.run("change_members", change_members_tx, group_id, actor_id, change_type,
                          [int(user_id) for user_id in user_ids], now)
    if change.outcome == CHANGE_OK and change.changed:
        logger.info("group %d: user %d %s %s; version %d", group_id, actor_id,
                    "added" if change_type == BD.GROUP_MODIFY_TYPE_ADD else "removed",
                    change.changed, change.snapshot.group.version)
    return change


async def get_user_groups(db: Database, user_id: int, group_type: int | None = None) -> list[tuple[int, int]]:
    """Return ``(group_id, version)`` of the usable groups of a user, latest joined first."""
    return await db.run("get_user_groups", select_user_groups_tx, user_id, group_type)


async def get_groups_of_users(db: Database, user_ids: Iterable[int]) -> dict[int, list[int]]:
    """Return ``{user_id: [group_id, ...]}`` of the usable groups of each user."""
    ids = sorted({int(user_id) for user_id in user_ids})
    if not ids:
        return {}
    return await db.run("get_groups_of_users", select_groups_of_users_tx, ids)


async def find_groups_by_name(db: Database, name: str) -> list[int]:
    """Return the ids of the usable groups called ``name``."""
    return await db.run("find_groups_by_name", select_group_ids_by_name_tx, name)


async def list_groups(db: Database) -> list[GroupRow]:
    """Return every group, deleted ones included, ordered by id."""
    return await db.run("list_groups", select_all_groups_tx)


async def get_snapshots(db: Database, group_ids: Iterable[int]) -> dict[int, GroupSnapshot]:
    """Return the groups that exist with their members, straight from the tables."""
    ids = sorted({int(group_id) for group_id in group_ids})
    if not ids:
        return {}
    return await db.run("get_group_snapshots", select_snapshots_tx, ids)


# Caches


async def sync_member_hashes(cache: Cache, snapshots: Iterable[GroupSnapshot]) -> None:
    """Make each ``group_member_<groupId>`` hash list exactly the members of its snapshot."""
    snapshots = list(snapshots)
    if not snapshots:
        return
    keys = [group_member_key(snapshot.group.id) for snapshot in snapshots]
    current = await cache.pipeline([("hgetall", key) for key in keys])
    commands = []
    for key, stored, snapshot in zip(keys, current, snapshots):
        expected = {str(user_id): str(joined) for user_id, joined in snapshot.members.items()}
        extra = [user_field for user_field in stored if user_field not in expected]
        different = {user_field: value for user_field, value in expected.items()
                     if stored.get(user_field) != value}
        if extra:
            commands.append(("hdel", key, *extra))
        if different:
            commands.append(("hmset", key, different))
    if commands:
        await cache.pipeline(commands)


async def mark_groups_read(unread_cache: Cache, pairs: Iterable[tuple[int, int]]) -> None:
    """Set each ``(user_id, group_id)`` pair's read count to the group's total: nothing unread."""
    pairs = sorted(set(pairs))
    if not pairs:
        return
    group_ids = sorted({group_id for _, group_id in pairs})
    totals = await unread_cache.pipeline([("hget", group_count_key(group_id), COUNT_FIELD) for group_id in group_ids])
    total_of = {group_id: parse_count(total) for group_id, total in zip(group_ids, totals)}
    await unread_cache.pipeline([
        ("hset", user_group_count_key(user_id, group_id), COUNT_FIELD, total_of[group_id])
        for user_id, group_id in pairs
    ])


async def get_group_unread_counts(unread_cache: Cache, user_id: int, group_ids: Sequence[int]) -> dict[int, int]:
    """Return ``{group_id: unread}`` for the groups where a user has unread messages."""
    if not group_ids:
        return {}
    commands = []
    for group_id in group_ids:
        commands.append(("hget", group_count_key(group_id), COUNT_FIELD))
        commands.append(("hget", user_group_count_key(user_id, group_id), COUNT_FIELD))
    values = await unread_cache.pipeline(commands)
    counts = {}
    for index, group_id in enumerate(group_ids):
        unread = parse_count(values[2 * index]) - parse_count(values[2 * index + 1])
        if unread > 0:
            counts[group_id] = unread
    return counts


async def get_shield_statuses(group_set_cache: Cache, group_id: int, user_ids: Sequence[int]) -> dict[int, int]:
    """Return ``{user_id: 1 or 0}``: whether each user shields the group's push notifications."""
    stored = await group_set_cache.hgetall(group_set_key(group_id)) if user_ids else {}
    return {user_id: 1 if parse_count(stored.get(shield_field(user_id))) else 0 for user_id in user_ids}


async def get_user_shield_statuses(group_set_cache: Cache, user_id: int, group_ids: Sequence[int]) -> dict[int, int]:
    """Return ``{group_id: 1 or 0}``: whether one user shields each group's push notifications."""
    if not group_ids:
        return {}
    values = await group_set_cache.pipeline([("hget", group_set_key(group_id), shield_field(user_id))
                                             for group_id in group_ids])
    return {group_id: 1 if parse_count(value) else 0 for group_id, value in zip(group_ids, values)}


async def set_shield_status(group_set_cache: Cache, group_id: int, user_id: int, status: int) -> None:
    """Store whether a user shields a group's push notifications (1) or not (0)."""
    if status not in (0, 1):
        raise ValueError(f"shield status must be 0 or 1, got {status}")
    await group_set_cache.hset(group_set_key(group_id), shield_field(user_id), status)


def parse_count(value: str | None) -> int:
    """Read a counter stored as text; a missing, negative or invalid one counts as 0."""
    if value is None:
        return 0
    try:
        return max(0, int(value))
    except ValueError:
        logger.warning("ignoring an invalid counter value %r", value)
        return 0


async def publish_new_group(caches: CacheSet, snapshot: GroupSnapshot) -> None:
    """Write a new group to the caches: its member hash, and msg_id counter 0.

    ``caches`` needs the ``unread`` and ``group_member`` instances. A counter left over from a database that
    reused the group id would otherwise skip msg_ids.
    """
    await caches.get("unread").set(group_msg_id_key(snapshot.group.id), 0)
    await sync_member_hashes(caches.get("group_member"), [snapshot])


async def publish_member_change(caches: CacheSet, change: MemberChange) -> None:
    """Write a membership change to the caches.

    The member hash is rewritten, and every added or removed user's read
    count is set to the group total, so new members do not see the
    history as unread (as in the original).
    """
    if change.snapshot is None or not change.changed:
        return
    group_id = change.snapshot.group.id
    await sync_member_hashes(caches.get("group_member"), [change.snapshot])
    await mark_groups_read(caches.get("unread"), [(user_id, group_id) for user_id in change.changed])


class GroupDirectory:
    """Groups and their members, read from the tables and kept in memory per version.

    :meth:`get_groups` reads the IMGroup rows on every call (one query) and
    reuses the members it keeps for a group only while the group's version
    is unchanged. When the version moved on, it reads the members again,
    rewrites the ``group_member`` hash, and gives users who joined or left
    since the version it had a read count equal to the group total.
    Groups seen for the first time are only loaded: a user added by another
    process while no directory had the group in memory sees the history as
    unread.

    All reads go to ``db``, which should be the master, so that a change is
    visible to the next request at once.
    """

    def __init__(self, db: Database, member_cache: Cache | None = None, unread_cache: Cache | None = None) -> None:
        self.db = db
        self.member_cache = member_cache
        self.unread_cache = unread_cache
        self._members: dict[int, tuple[int, Mapping[int, int]]] = {}

    @classmethod
    def from_storage(cls, storage) -> GroupDirectory:
        return cls(storage.master, storage.caches.get("group_member"), storage.caches.get("unread"))

    def remember(self, snapshot: GroupSnapshot) -> None:
        """Keep a snapshot this process just wrote, unless a newer version is in memory already."""
        cached = self._members.get(snapshot.group.id)
        if cached is None or cached[0] <= snapshot.group.version:
            self._members[snapshot.group.id] = (snapshot.group.version, dict(snapshot.members))

    async def get_group(self, group_id: int) -> GroupSnapshot | None:
        """Return one group with its members, or None if it does not exist."""
        return (await self.get_groups([group_id])).get(group_id)

    async def get_groups(self, group_ids: Iterable[int]) -> dict[int, GroupSnapshot]:
        """Return the groups that exist (deleted ones too) with their current members."""
        ids = sorted({int(group_id) for group_id in group_ids if int(group_id) > 0})
        if not ids:
            return {}
        rows = await self.db.run("get_groups", select_groups_tx, ids)
        result: dict[int, GroupSnapshot] = {}
        stale = []
        for group_id, group in rows.items():
            cached = self._members.get(group_id)
            if cached is not None and cached[0] == group.version:
                result[group_id] = GroupSnapshot(group, cached[1])
            else:
                stale.append(group_id)
        if stale:
            result.update(await self._reload(stale))
        return result

    async def _reload(self, group_ids: list[int]) -> dict[int, GroupSnapshot]:
        fresh = await self.db.run("load_group_members", select_snapshots_tx, group_ids)
        moved: list[tuple[int, int]] = []
        for group_id, snapshot in fresh.items():
            cached = self._members.get(group_id)
            if cached is not None and cached[0] < snapshot.group.version:
                joined_or_left = set(cached[1]).symmetric_difference(snapshot.members)
                moved.extend((user_id, group_id) for user_id in joined_or_left)
            self.remember(snapshot)
        await self._publish(list(fresh.values()), moved)
        return fresh

    async def _publish(self, snapshots: list[GroupSnapshot], moved: list[tuple[int, int]]) -> None:
        # The tables are already right; a cache failure only leaves the
        # cached copies behind until the next reload.
        try:
            if self.member_cache is not None:
                await sync_member_hashes(self.member_cache, snapshots)
            if self.unread_cache is not None and moved:
                await mark_groups_read(self.unread_cache, moved)
        except Exception:
            logger.warning("updating the caches of groups %s failed",
                           [snapshot.group.id for snapshot in snapshots], exc_info=True)

