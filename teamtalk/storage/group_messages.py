"""Group messages: ``IMGroupMessage_<n>`` rows, group msg_ids and message counters.

Storage layout, as in the original TeamTalk:

- a message row goes to ``IMGroupMessage_<groupId % 8>`` (see
  :mod:`teamtalk.storage.shards`);
- the next msg_id of a group comes from ``INCRBY group_msg_id_<groupId>``
  on the ``unread`` cache instance, so a group's msg_ids run 1, 2, 3...;
- ``<groupId>_im_group_msg`` field ``count`` counts the group's messages
  and ``<userId>_<groupId>_im_user_group`` field ``count`` holds the total
  a member has read, both on the ``unread`` instance (see
  :mod:`teamtalk.storage.groups`).

:class:`GroupMessageStore` stores a batch of group messages at once, the
way :class:`teamtalk.storage.messages.MessageStore` stores single-chat
ones: it checks membership for the whole batch with one query, notices a
msg_id counter that the cache lost by the last id it handed out or the
highest stored msgId, and touches every member's recent session (type 2)
with one statement per batch. The original leaves the members' sessions
to a background task that runs every 5 seconds. Here they are up to date
when the message is acknowledged.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import trio

from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.protocol import GROUP_MSG_TYPES
from teamtalk.storage.cache import Cache
from teamtalk.storage.database import Cursor, Database
from teamtalk.storage.msg_ids import MsgIdCounters
from teamtalk.storage.groups import (
    COUNT_FIELD,
    GroupDirectory,
    GroupSnapshot,
    group_count_key,
    group_msg_id_key,
    user_group_count_key,
)
from teamtalk.storage.messages import DEFAULT_MAX_MSG_DATA_LENGTH, MAX_MESSAGES_PER_REQUEST
from teamtalk.storage.sessions import STATUS_OK as SESSION_STATUS_OK
from teamtalk.storage.sessions import touch_sessions_tx
from teamtalk.storage.shards import ShardMap, group_message_table

logger = logging.getLogger(__name__)

STATUS_OK = 0

# NOTE: audio is stored like text, in IMGroupMessage_n.content, so audio
# bytes that are not valid UTF-8 are rejected. The original keeps audio in
# IMAudio and stores its id in content instead.

_MESSAGE_COLUMNS = "groupId, userId, msgId, content, type, status, created, updated"
_SELECT_COLUMNS = "groupId, msgId, userId, type, content, created"
_IN_CHUNK = 500


@dataclass(slots=True)
class NewGroupMessage:
    """A group message to store, and what became of it.

    :meth:`GroupMessageStore.store_messages` sets ``msg_id`` when the
    message is stored, or leaves it at 0 and sets ``error`` to the reason
    it was not.
    """

    from_id: int
    group_id: int
    msg_type: int
    content: bytes
    create_time: int
    msg_id: int = 0
    error: str = ""


@dataclass(frozen=True, slots=True)
class StoredGroupMessage:
    """One row of ``IMGroupMessage_n``; ``from_id`` is column userId."""

    group_id: int
    msg_id: int
    from_id: int
    msg_type: int
    content: bytes
    created: int


def check_new_group_message(message: NewGroupMessage, max_length: int = DEFAULT_MAX_MSG_DATA_LENGTH) -> str:
    """Return why ``message`` cannot be stored, or "" if it can (membership is checked later)."""
    if message.msg_type not in GROUP_MSG_TYPES:
        return f"msg_type {message.msg_type} is not a group type"
    if message.from_id <= 0 or message.group_id <= 0:
        return f"invalid id (from user {message.from_id}, to group {message.group_id})"
    if not message.content:
        return "msg_data is empty"
    if len(message.content) > max_length:
        return f"msg_data is {len(message.content)} bytes long, more than the maximum of {max_length}"
    try:
        message.content.decode("utf-8")
    except UnicodeDecodeError:
        return "msg_data is not valid UTF-8"
    return ""


def _stored(row: tuple) -> StoredGroupMessage:
    group_id, msg_id, from_id, msg_type, content, created = row
    if content is None:
        content = b""
    elif isinstance(content, str):
        content = content.encode("utf-8")
    return StoredGroupMessage(int(group_id), int(msg_id), int(from_id), int(msg_type), bytes(content), int(created))


# Statements; each takes a cursor and runs inside the caller's transaction.


def insert_group_messages_tx(cursor: Cursor, rows_by_table: dict[str, list[tuple]]) -> None:
    """Insert message rows, one ``executemany`` per table, in ``_MESSAGE_COLUMNS`` order."""
    for table, rows in rows_by_table.items():
        cursor.executemany(
            f"INSERT INTO {table} ({_MESSAGE_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            rows,
        )


def select_group_max_msg_ids_tx(cursor: Cursor, group_ids: Sequence[int]) -> dict[int, int]:
    """Return ``{group_id: highest stored msgId}`` (0 for none); deleted rows count too."""
    result = {group_id: 0 for group_id in group_ids}
    by_table: dict[str, list[int]] = defaultdict(list)
    for group_id in result:
        by_table[group_message_table(group_id)].append(group_id)
    for table, ids in by_table.items():
        marks = ", ".join(["%s"] * len(ids))
        cursor.execute(
            f"SELECT groupId, MAX(msgId) FROM {table} WHERE groupId IN ({marks}) GROUP BY groupId", ids
        )
        for group_id, max_msg_id in cursor.fetchall():
            result[int(group_id)] = int(max_msg_id or 0)
    return result


def select_group_messages_tx(
    cursor: Cursor, group_id: int, msg_id_begin: int, count: int, created_since: int
) -> list[StoredGroupMessage]:
    """Return up to ``count`` messages with msgId <= ``msg_id_begin`` (0: from the newest), newest first.

    Only messages created at or after ``created_since`` are returned.
    """
    sql = (f"SELECT {_SELECT_COLUMNS} FROM {group_message_table(group_id)}"
           " WHERE groupId=%s AND status=%s AND created>=%s")
    params: list[int] = [group_id, STATUS_OK, created_since]
    if msg_id_begin:
        sql += " AND msgId<=%s"
        params.append(msg_id_begin)
    cursor.execute(sql + " ORDER BY msgId DESC, id DESC LIMIT %s", (*params, count))
    return [_stored(row) for row in cursor.fetchall()]


def select_group_messages_by_id_tx(
    cursor: Cursor, group_id: int, msg_ids: Sequence[int], created_since: int
) -> list[StoredGroupMessage]:
    """Return a group's messages with the given msg_ids created at or after a time, newest first."""
    marks = ", ".join(["%s"] * len(msg_ids))
    cursor.execute(
        f"SELECT {_SELECT_COLUMNS} FROM {group_message_table(group_id)}"
        f" WHERE groupId=%s AND status=%s AND created>=%s AND msgId IN ({marks}) ORDER BY msgId DESC, id DESC",
        (group_id, STATUS_OK, created_since, *msg_ids),
    )
    return [_stored(row) for row in cursor.fetchall()]


def select_latest_group_messages_tx(cursor: Cursor, group_ids: Sequence[int]) -> dict[int, StoredGroupMessage]:
    """Return ``{group_id: latest message}`` for the groups that have messages."""
    result: dict[int, StoredGroupMessage] = {}
    by_table: dict[str, list[int]] = defaultdict(list)
    for group_id in dict.fromkeys(group_ids):
        by_table[group_message_table(group_id)].append(group_id)
    for table, ids in by_table.items():
        marks = ", ".join(["%s"] * len(ids))
        cursor.execute(
            f"SELECT m.groupId, m.msgId, m.userId, m.type, m.content, m.created FROM {table} m "
            f"JOIN (SELECT groupId, MAX(msgId) AS latest FROM {table} "
            f"WHERE groupId IN ({marks}) AND status=%s GROUP BY groupId) t "
            "ON m.groupId = t.groupId AND m.msgId = t.latest WHERE m.status=%s ORDER BY m.id",
            (*ids, STATUS_OK, STATUS_OK),
        )
        for row in cursor.fetchall():
            message = _stored(row)
            result.setdefault(message.group_id, message)
    return result


def resolve_group_sessions_tx(cursor: Cursor, needed: dict[int, list[int]], now: int) -> dict[int, dict[int, int]]:
    """Return ``{group_id: {user_id: session id}}``, creating the missing group sessions.

    Existing rows are returned whatever their status; touching them later
    sets the status back to 0.
    """
    result: dict[int, dict[int, int]] = {}
    for group_id, user_ids in needed.items():
        found = _select_group_sessions(cursor, group_id, user_ids)
        missing = [user_id for user_id in user_ids if user_id not in found]
        if missing:
            cursor.executemany(
                "INSERT INTO IMRecentSession (userId, peerId, type, status, created, updated)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                [(user_id, group_id, BD.SESSION_TYPE_GROUP, SESSION_STATUS_OK, now, now) for user_id in missing],
            )
            found.update(_select_group_sessions(cursor, group_id, missing))
        result[group_id] = found
    return result


def _select_group_sessions(cursor: Cursor, group_id: int, user_ids: list[int]) -> dict[int, int]:
    found: dict[int, int] = {}
    for start in range(0, len(user_ids), _IN_CHUNK):
        chunk = user_ids[start:start + _IN_CHUNK]
        marks = ", ".join(["%s"] * len(chunk))
        cursor.execute(
            f"SELECT userId, id FROM IMRecentSession WHERE type=%s AND peerId=%s AND userId IN ({marks}) ORDER BY id",
            (BD.SESSION_TYPE_GROUP, group_id, *chunk),
        )
        for user_id, session_id in cursor.fetchall():
            found.setdefault(int(user_id), int(session_id))
    return found


def _store_tx(cursor: Cursor, rows_by_table: dict[str, list[tuple]], session_ids: list[int],
              group_ids: list[int], now: int) -> None:
    insert_group_messages_tx(cursor, rows_by_table)
    touch_sessions_tx(cursor, session_ids, now)
    if group_ids:
        marks = ", ".join(["%s"] * len(group_ids))
        cursor.execute(f"UPDATE IMGroup SET lastChated=%s WHERE id IN ({marks})", (now, *group_ids))


# Reads, one transaction each, on the database holding the group's shard.


async def get_group_messages(
    shards: ShardMap, group_id: int, msg_id_begin: int, count: int, created_since: int = 0
) -> list[StoredGroupMessage]:
    """Return up to ``count`` (at most 100) messages from ``msg_id_begin`` down, newest first."""
    count = max(0, min(count, MAX_MESSAGES_PER_REQUEST))
    if count == 0:
        return []
    db = shards.database_for_group(group_id)
    return await db.run("get_group_messages", select_group_messages_tx, group_id, msg_id_begin, count,
                        created_since)


async def get_group_messages_by_id(
    shards: ShardMap, group_id: int, msg_ids: Iterable[int], created_since: int = 0
) -> list[StoredGroupMessage]:
    """Return the messages with the given msg_ids (the first 100 distinct ids), newest first."""
    requested = list(dict.fromkeys(int(msg_id) for msg_id in msg_ids))[:MAX_MESSAGES_PER_REQUEST]
    if not requested:
        return []
    db = shards.database_for_group(group_id)
    return await db.run("get_group_messages_by_id", select_group_messages_by_id_tx, group_id, requested,
                        created_since)


async def get_latest_group_messages(shards: ShardMap, group_ids: Iterable[int]) -> dict[int, StoredGroupMessage]:
    """Return ``{group_id: latest message}``, one query per message table."""
    by_database: dict[int, tuple[Database, list[int]]] = {}
    for group_id in dict.fromkeys(group_ids):
        db = shards.database_for_group(group_id)
        by_database.setdefault(id(db), (db, []))[1].append(group_id)
    result: dict[int, StoredGroupMessage] = {}
    for db, ids in by_database.values():
        result.update(await db.run("get_latest_group_messages", select_latest_group_messages_tx, ids))
    return result


async def get_group_max_msg_ids(shards: ShardMap, group_ids: Iterable[int]) -> dict[int, int]:
    """Return ``{group_id: highest stored msgId}``, deleted rows included."""
    by_database: dict[int, tuple[Database, list[int]]] = {}
    for group_id in dict.fromkeys(group_ids):
        db = shards.database_for_group(group_id)
        by_database.setdefault(id(db), (db, []))[1].append(group_id)
    result: dict[int, int] = {}
    for db, ids in by_database.values():
        result.update(await db.run("get_group_max_msg_ids", select_group_max_msg_ids_tx, ids))
    return result


class GroupMessageStore:
    """Stores group messages in batches, keeping each group's order.

    ``store_messages`` calls run one at a time (a lock), and within a batch
    messages are numbered in list order, so a group's msg_ids follow the
    order in which messages were handed in.

    NOTE: like :class:`teamtalk.storage.messages.MessageStore`, the
    remembered msg_ids and session ids assume that this store is the only
    writer of group messages.
    """

    def __init__(
        self,
        master: Database,
        shards: ShardMap,
        unread_cache: Cache,
        directory: GroupDirectory,
        *,
        max_msg_data_length: int = DEFAULT_MAX_MSG_DATA_LENGTH,
    ) -> None:
        self.master = master
        self.shards = shards
        self.cache = unread_cache
        self.directory = directory
        self.max_msg_data_length = max_msg_data_length
        #: Group session ids per group and member.
        self._sessions: dict[int, dict[int, int]] = {}
        self._counters = MsgIdCounters(unread_cache, group_msg_id_key,
                                       lambda ids: get_group_max_msg_ids(shards, ids), "group")
        self._lock = trio.Lock()

    @classmethod
    def from_storage(cls, storage, directory: GroupDirectory, **kwargs) -> GroupMessageStore:
        """Build a store on a :class:`teamtalk.storage.Storage`."""
        return cls(storage.master, storage.shards, storage.caches.get("unread"), directory, **kwargs)

    def forget_last_msg_ids(self) -> None:
        """Drop the remembered msg_ids, as a restarted process would start."""
        self._counters.forget()

    async def store_messages(self, messages: Sequence[NewGroupMessage], now: int | None = None) -> None:
        """Store messages; set ``msg_id`` on each stored one and ``error`` on the others.

        A message is stored only when its group exists, is not deleted, and
        has the sender as a member. Each database commits its share in one
        transaction, and the msg_ids of a failed transaction are given back.

        Raises nothing for storage failures: they are logged and reported
        in ``error``. Cancellation while a transaction runs waits for it.
        """
        async with self._lock:
            now = int(time.time()) if now is None else int(now)
            batch = []
            for message in messages:
                message.msg_id = 0
                message.error = check_new_group_message(message, self.max_msg_data_length)
                if message.error:
                    logger.info("not storing group message %d -> group %d: %s",
                                message.from_id, message.group_id, message.error)
                else:
                    batch.append(message)
            if batch:
                await self._store_batch(batch, now)

    async def _store_batch(self, batch: list[NewGroupMessage], now: int) -> None:
        # Phase 1: groups and membership, one query for the batch.
        try:
            groups = await self.directory.get_groups({message.group_id for message in batch})
        except Exception as exc:
            logger.exception("storing %d group messages failed while reading the groups", len(batch))
            _fail(batch, f"group lookup failed: {exc}")
            return
        accepted = [message for message in batch if _check_member(message, groups)]
        if not accepted:
            return
        used = {message.group_id: groups[message.group_id] for message in accepted}

        # Phase 2: every member's group session, and the last msg_ids.
        try:
            session_ids = await self._member_sessions(used, now)
            await self._counters.load(used)
        except Exception as exc:
            logger.exception("storing %d group messages failed while looking up sessions", len(accepted))
            _fail(accepted, f"session lookup failed: {exc}")
            return

        # Phase 3: msg_ids, one INCRBY per group.
        try:
            msg_ids, first_ids = await self._counters.allocate([message.group_id for message in accepted])
            for message, msg_id in zip(accepted, msg_ids):
                message.msg_id = msg_id
        except Exception as exc:
            logger.exception("storing %d group messages failed while taking msg_ids", len(accepted))
            _fail(accepted, f"msg_id allocation failed: {exc}")
            return

        # Phase 4: rows, sessions and IMGroup.lastChated, one transaction per database.
        stored = await self._insert(accepted, session_ids, first_ids, now)

        # Phase 5: the group totals and the senders' read counts.
        await self._bump_counters(stored)

    async def _member_sessions(self, groups: dict[int, GroupSnapshot], now: int) -> list[int]:
        """Return the session ids of every member of the groups, creating missing sessions."""
        needed: dict[int, list[int]] = {}
        for group_id, snapshot in groups.items():
            known = self._sessions.get(group_id, {})
            missing = [user_id for user_id in snapshot.member_ids() if user_id not in known]
            if missing:
                needed[group_id] = missing
        if needed:
            found = await self.master.run("resolve_group_sessions", resolve_group_sessions_tx, needed, now)
            for group_id, sessions in found.items():
                self._sessions.setdefault(group_id, {}).update(sessions)
        session_ids = []
        for group_id, snapshot in groups.items():
            known = self._sessions[group_id]
            session_ids.extend(known[user_id] for user_id in snapshot.members)
        return sorted(set(session_ids))

    async def _insert(
        self, batch: list[NewGroupMessage], session_ids: list[int], first_ids: dict[int, int], now: int
    ) -> list[NewGroupMessage]:
        """Insert the rows per database and touch sessions and groups; return the stored messages."""
        by_database: dict[int, tuple[Database, list[NewGroupMessage]]] = {}
        for message in batch:
            db = self.shards.database_for_group(message.group_id)
            by_database.setdefault(id(db), (db, []))[1].append(message)
        if id(self.master) not in by_database:
            by_database[id(self.master)] = (self.master, [])

        group_ids = sorted({message.group_id for message in batch})
        stored: list[NewGroupMessage] = []
        for db, messages in by_database.values():
            rows_by_table: dict[str, list[tuple]] = defaultdict(list)
            for message in messages:
                rows_by_table[group_message_table(message.group_id)].append((
                    message.group_id, message.from_id, message.msg_id, message.content.decode("utf-8"),
                    message.msg_type, STATUS_OK, message.create_time, message.create_time,
                ))
            on_master = db is self.master
            try:
                await db.run("store_group_messages", _store_tx, dict(rows_by_table),
                             session_ids if on_master else [], group_ids if on_master else [], now)
            except Exception as exc:
                logger.exception("storing %d group messages in %s failed; none of them is acknowledged",
                                 len(messages), db.name)
                await self._counters.give_back((message.group_id for message in messages), first_ids)
                _fail(messages, f"insert failed: {exc}")
                continue
            stored.extend(messages)
        return stored

    async def _bump_counters(self, stored: list[NewGroupMessage]) -> None:
        """Add the messages to each group's total; a sender has read up to their own message."""
        if not stored:
            return
        by_group: dict[int, list[NewGroupMessage]] = defaultdict(list)
        for message in stored:
            by_group[message.group_id].append(message)
        group_ids = list(by_group)
        try:
            totals = await self.cache.pipeline([
                ("hincrby", group_count_key(group_id), COUNT_FIELD, len(by_group[group_id]))
                for group_id in group_ids
            ])
            read_counts: dict[tuple[int, int], int] = {}
            for group_id, total in zip(group_ids, totals):
                messages = by_group[group_id]
                before = total - len(messages)
                for position, message in enumerate(messages, start=1):
                    read_counts[(message.from_id, group_id)] = before + position
            await self.cache.pipeline([
                ("hset", user_group_count_key(user_id, group_id), COUNT_FIELD, count)
                for (user_id, group_id), count in read_counts.items()
            ])
        except Exception:
            # The messages are stored and will be acknowledged; only the
            # unread counts shown before members open the group are off.
            logger.exception("bumping the counters of %d group messages failed", len(stored))


def _check_member(message: NewGroupMessage, groups: dict[int, GroupSnapshot]) -> bool:
    snapshot = groups.get(message.group_id)
    if snapshot is None or not snapshot.usable:
        message.error = f"group {message.group_id} does not exist"
    elif message.from_id not in snapshot.members:
        message.error = f"user {message.from_id} is not a member of group {message.group_id}"
    else:
        return True
    logger.info("not storing group message %d -> group %d: %s", message.from_id, message.group_id, message.error)
    return False


def _fail(messages: Iterable[NewGroupMessage], reason: str) -> None:
    for message in messages:
        message.msg_id = 0
        message.error = reason
