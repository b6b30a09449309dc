"""Single-chat messages: ``IMMessage_<n>`` rows, msg_id counters, unread counts.

Storage layout, as in the original TeamTalk:

- a message row goes to ``IMMessage_<relateId % 8>`` (see
  :mod:`teamtalk.storage.shards`);
- the next msg_id of a relation comes from ``INCRBY msg_id_<relateId>``
  on the ``unread`` cache instance, so msg_ids of one conversation run
  1, 2, 3... with no gap;
- the recipient's unread count is the hash field ``<fromId>`` of
  ``unread_<toId>`` on the same cache instance.

:class:`MessageStore` stores a batch of new messages at once. It keeps the
relation and session ids it has seen in memory, and the last msg_id it
handed out per relation, which is how it notices a cache that lost its
counters (flushed or restarted): a counter that comes back at or below the
last id handed out, or below the highest stored msgId, is set forward
before any id is used.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import trio

from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.storage.cache import Cache
from teamtalk.storage.database import Cursor, Database
from teamtalk.storage.msg_ids import MsgIdCounters
from teamtalk.storage.relations import find_or_create_relation_tx
from teamtalk.storage.sessions import find_or_create_session_tx, touch_sessions_tx
from teamtalk.storage.shards import ShardMap, message_table

logger = logging.getLogger(__name__)

#: Largest msg_data accepted, in bytes. ``IMMessage_n.content`` is a
#: varchar(4096), so 4096 bytes always fit whatever the characters.
DEFAULT_MAX_MSG_DATA_LENGTH = 4096
#: Max messages returned for one history request (by range or by ids), which
#: keeps a response of full-length messages well under a 1 MiB PDU.
MAX_MESSAGES_PER_REQUEST = 100

STATUS_OK = 0

# NOTE: audio is stored like text, in IMMessage_n.content, so audio bytes
# that are not valid UTF-8 are rejected. The original keeps audio in IMAudio
# and stores its id in content instead.
SINGLE_MSG_TYPES = frozenset({BD.MSG_TYPE_SINGLE_TEXT, BD.MSG_TYPE_SINGLE_AUDIO})

_MESSAGE_COLUMNS = "relateId, fromId, toId, msgId, content, type, status, created, updated"
_SELECT_COLUMNS = "relateId, msgId, fromId, toId, type, content, created"


def msg_id_key(relate_id: int) -> str:
    """Return the cache key of a relation's msg_id counter."""
    return "msg_id_%d" % relate_id


def unread_key(user_id: int) -> str:
    """Return the cache key of a user's unread counts (a hash: peer id -> count)."""
    return "unread_%d" % user_id


@dataclass(slots=True)
class NewMessage:
    """A single-chat message to store, and what became of it.

    :meth:`MessageStore.store_messages` sets ``relate_id`` and ``msg_id``
    when the message is stored, or leaves ``msg_id`` at 0 and sets
    ``error`` to the reason it was not.
    """

    from_id: int
    to_id: int
    msg_type: int
    content: bytes
    create_time: int
    relate_id: int = 0
    msg_id: int = 0
    error: str = ""


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One row of ``IMMessage_n``."""

    relate_id: int
    msg_id: int
    from_id: int
    to_id: int
    msg_type: int
    content: bytes
    created: int


def check_new_message(message: NewMessage, max_length: int = DEFAULT_MAX_MSG_DATA_LENGTH) -> str:
    """Return why ``message`` cannot be stored, or "" if it can."""
    if message.msg_type not in SINGLE_MSG_TYPES:
        return f"msg_type {message.msg_type} is not a single-chat type"
    if message.from_id <= 0 or message.to_id <= 0:
        return f"invalid user id (from {message.from_id}, to {message.to_id})"
    if message.from_id == message.to_id:
        return f"user {message.from_id} sent a message to itself"
    if not message.content:
        return "msg_data is empty"
    if len(message.content) > max_length:
        return f"msg_data is {len(message.content)} bytes long, more than the maximum of {max_length}"
    try:
        message.content.decode("utf-8")
    except UnicodeDecodeError:
        return "msg_data is not valid UTF-8"
    return ""


def _content_bytes(value: str | bytes | None) -> bytes:
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode("utf-8")
    return bytes(value)


def _stored_message(row: tuple) -> StoredMessage:
    relate_id, msg_id, from_id, to_id, msg_type, content, created = row
    return StoredMessage(
        relate_id=int(relate_id),
        msg_id=int(msg_id),
        from_id=int(from_id),
        to_id=int(to_id),
        msg_type=int(msg_type),
        content=_content_bytes(content),
        created=int(created),
    )


# Statements; each takes a cursor and runs inside the caller's transaction.


def insert_messages_tx(cursor: Cursor, rows_by_table: dict[str, list[tuple]]) -> None:
    """Insert message rows, one ``executemany`` per table.

    Each row contains the values of ``_MESSAGE_COLUMNS`` in that order.
    """
    for table, rows in rows_by_table.items():
        cursor.executemany(
            f"INSERT INTO {table} ({_MESSAGE_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            rows,
        )


def select_max_msg_ids_tx(cursor: Cursor, relate_ids: Sequence[int]) -> dict[int, int]:
    """Return ``{relate_id: highest stored msgId}`` (0 for a relation with no rows).

    Deleted rows (status 1) count too: their msg_ids were handed out once.
    """
    result = {relate_id: 0 for relate_id in relate_ids}
    by_table: dict[str, list[int]] = defaultdict(list)
    for relate_id in result:
        by_table[message_table(relate_id)].append(relate_id)
    for table, ids in by_table.items():
        marks = ", ".join(["%s"] * len(ids))
        cursor.execute(
            f"SELECT relateId, MAX(msgId) FROM {table} WHERE relateId IN ({marks}) GROUP BY relateId",
            ids,
        )
        for relate_id, max_msg_id in cursor.fetchall():
            result[int(relate_id)] = int(max_msg_id or 0)
    return result


def select_messages_tx(cursor: Cursor, relate_id: int, msg_id_begin: int, count: int) -> list[StoredMessage]:
    """Return up to ``count`` messages with msgId <= ``msg_id_begin``, newest first.

    ``msg_id_begin`` 0 means from the newest message.
    """
    table = message_table(relate_id)
    if msg_id_begin == 0:
        cursor.execute(
            f"SELECT {_SELECT_COLUMNS} FROM {table} WHERE relateId=%s AND status=%s "
            "ORDER BY msgId DESC, id DESC LIMIT %s",
            (relate_id, STATUS_OK, count),
        )
    else:
        cursor.execute(
            f"SELECT {_SELECT_COLUMNS} FROM {table} WHERE relateId=%s AND status=%s AND msgId<=%s "
            "ORDER BY msgId DESC, id DESC LIMIT %s",
            (relate_id, STATUS_OK, msg_id_begin, count),
        )
    return [_stored_message(row) for row in cursor.fetchall()]


def select_messages_by_id_tx(cursor: Cursor, relate_id: int, msg_ids: Sequence[int]) -> list[StoredMessage]:
    """Return the messages of a relation with the given msg_ids, newest first."""
    if not msg_ids:
        return []
    marks = ", ".join(["%s"] * len(msg_ids))
    cursor.execute(
        f"SELECT {_SELECT_COLUMNS} FROM {message_table(relate_id)} "
        f"WHERE relateId=%s AND status=%s AND msgId IN ({marks}) ORDER BY msgId DESC, id DESC",
        (relate_id, STATUS_OK, *msg_ids),
    )
    return [_stored_message(row) for row in cursor.fetchall()]


def select_latest_messages_tx(cursor: Cursor, relate_ids: Sequence[int]) -> dict[int, StoredMessage]:
    """Return ``{relate_id: latest message}`` for the relations that have messages."""
    result: dict[int, StoredMessage] = {}
    by_table: dict[str, list[int]] = defaultdict(list)
    for relate_id in dict.fromkeys(relate_ids):
        by_table[message_table(relate_id)].append(relate_id)
    for table, ids in by_table.items():
        marks = ", ".join(["%s"] * len(ids))
        cursor.execute(
            f"SELECT m.relateId, m.msgId, m.fromId, m.toId, m.type, m.content, m.created FROM {table} m "
            f"JOIN (SELECT relateId, MAX(msgId) AS latest FROM {table} "
            f"WHERE relateId IN ({marks}) AND status=%s GROUP BY relateId) t "
            "ON m.relateId = t.relateId AND m.msgId = t.latest WHERE m.status=%s ORDER BY m.id",
            (*ids, STATUS_OK, STATUS_OK),
        )
        for row in cursor.fetchall():
            message = _stored_message(row)
            result.setdefault(message.relate_id, message)
    return result


# Reads, one transaction each, on the database holding the relation's shard.


async def get_messages(shards: ShardMap, relate_id: int, msg_id_begin: int, count: int) -> list[StoredMessage]:
    """Return up to ``count`` (at most 100) messages from ``msg_id_begin`` down, newest first."""
    count = max(0, min(count, MAX_MESSAGES_PER_REQUEST))
    if count == 0:
        return []
    db = shards.database_for_relation(relate_id)
    return await db.run("get_messages", select_messages_tx, relate_id, msg_id_begin, count)


async def get_messages_by_id(shards: ShardMap, relate_id: int, msg_ids: Iterable[int]) -> list[StoredMessage]:
    """Return the messages with the given msg_ids (the first 100 distinct ids), newest first."""
    requested = list(dict.fromkeys(int(msg_id) for msg_id in msg_ids))[:MAX_MESSAGES_PER_REQUEST]
    if not requested:
        return []
    db = shards.database_for_relation(relate_id)
    return await db.run("get_messages_by_id", select_messages_by_id_tx, relate_id, requested)


async def get_latest_messages(shards: ShardMap, relate_ids: Iterable[int]) -> dict[int, StoredMessage]:
    """Return ``{relate_id: latest message}``, one query per message table."""
    by_database: dict[int, tuple[Database, list[int]]] = {}
    for relate_id in dict.fromkeys(relate_ids):
        db = shards.database_for_relation(relate_id)
        by_database.setdefault(id(db), (db, []))[1].append(relate_id)
    result: dict[int, StoredMessage] = {}
    for db, ids in by_database.values():
        result.update(await db.run("get_latest_messages", select_latest_messages_tx, ids))
    return result


async def get_latest_msg_id(shards: ShardMap, relate_id: int) -> int:
    """Return the msg_id of the latest message of a relation, 0 if it has none."""
    latest = await get_latest_messages(shards, [relate_id])
    message = latest.get(relate_id)
    return 0 if message is None else message.msg_id


async def get_max_msg_ids(shards: ShardMap, relate_ids: Iterable[int]) -> dict[int, int]:
    """Return ``{relate_id: highest stored msgId}``, deleted rows included."""
    by_database: dict[int, tuple[Database, list[int]]] = {}
    for relate_id in dict.fromkeys(relate_ids):
        db = shards.database_for_relation(relate_id)
        by_database.setdefault(id(db), (db, []))[1].append(relate_id)
    result: dict[int, int] = {}
    for db, ids in by_database.values():
        result.update(await db.run("get_max_msg_ids", select_max_msg_ids_tx, ids))
    return result


# Unread counters on the ``unread`` cache instance.


async def get_unread_counts(cache: Cache, user_id: int) -> dict[int, int]:
    """Return ``{peer_id: unread count}`` of a user, for counts above 0."""
    counts: dict[int, int] = {}
    for field, value in (await cache.hgetall(unread_key(user_id))).items():
        try:
            peer_id, count = int(field), int(value)
        except ValueError:
            logger.warning("ignoring invalid unread counter %s[%r] = %r", unread_key(user_id), field, value)
            continue
        if peer_id > 0 and count > 0:
            counts[peer_id] = count
    return counts


async def clear_unread(cache: Cache, user_id: int, peer_id: int) -> None:
    """Forget the unread count of ``user_id`` for messages from ``peer_id``."""
    await cache.hdel(unread_key(user_id), str(peer_id))


class MessageStore:
    """Stores single-chat messages in batches, keeping each conversation's order.

    ``store_messages`` calls run one at a time (a lock), and within a batch
    messages are numbered in list order, so a relation's msg_ids follow the
    order in which messages were handed in. Relation and session rows are
    created only here, so one store creates each of them once.

    NOTE: the in-memory ids and counters assume that this store is the only
    writer of these relations. A second db_proxy_server on the same
    database can still race with it when both create a new relation.
    """

    def __init__(
        self,
        master: Database,
        shards: ShardMap,
        unread_cache: Cache,
        *,
        max_msg_data_length: int = DEFAULT_MAX_MSG_DATA_LENGTH,
    ) -> None:
        self.master = master
        self.shards = shards
        self.cache = unread_cache
        self.max_msg_data_length = max_msg_data_length
        self._relations: dict[tuple[int, int], int] = {}
        self._sessions: dict[tuple[int, int, int], int] = {}
        self._counters = MsgIdCounters(unread_cache, msg_id_key,
                                       lambda ids: get_max_msg_ids(shards, ids), "relation")
        self._lock = trio.Lock()

    @classmethod
    def from_storage(cls, storage, **kwargs) -> MessageStore:
        """Build a store on a :class:`teamtalk.storage.Storage`."""
        return cls(storage.master, storage.shards, storage.caches.get("unread"), **kwargs)

    def cached_relation_id(self, user_a: int, user_b: int) -> int | None:
        """Return a relation id this store has already seen, or None."""
        return self._relations.get((min(user_a, user_b), max(user_a, user_b)))

    def remember_relation_id(self, user_a: int, user_b: int, relate_id: int) -> None:
        """Record a relation id that a read found, so later lookups skip the database."""
        self._relations[(min(user_a, user_b), max(user_a, user_b))] = relate_id

    def forget_last_msg_ids(self) -> None:
        """Drop the remembered msg_ids, as a restarted process would start."""
        self._counters.forget()

    async def store_messages(self, messages: Sequence[NewMessage], now: int | None = None) -> None:
        """Store messages; set ``msg_id`` on each stored one and ``error`` on the others.

        Invalid messages are skipped. Each database commits its share in
        one transaction, so when a transaction fails none of its messages
        is stored, and their msg_ids are given back to the counter so the
        next message of those relations reuses them.

        Raises nothing for storage failures: they are logged and reported
        in ``error``. Cancellation while a transaction runs waits for it.
        """
        async with self._lock:
            now = int(time.time()) if now is None else int(now)
            batch = []
            for message in messages:
                message.msg_id = 0
                message.error = check_new_message(message, self.max_msg_data_length)
                if message.error:
                    logger.info("not storing message %d -> %d: %s",
                                message.from_id, message.to_id, message.error)
                else:
                    batch.append(message)
            if batch:
                await self._store_batch(batch, now)

    async def _store_batch(self, batch: list[NewMessage], now: int) -> None:
        # Phase 1: relation and session ids, creating rows on first use.
        try:
            session_ids = await self._resolve_conversations(batch, now)
            await self._counters.load(message.relate_id for message in batch)
        except Exception as exc:
            logger.exception("storing %d messages failed while looking up relations", len(batch))
            _fail(batch, f"relation lookup failed: {exc}")
            return

        # Phase 2: msg_ids, one INCRBY per relation.
        try:
            msg_ids, first_ids = await self._counters.allocate([message.relate_id for message in batch])
            for message, msg_id in zip(batch, msg_ids):
                message.msg_id = msg_id
        except Exception as exc:
            logger.exception("storing %d messages failed while taking msg_ids", len(batch))
            _fail(batch, f"msg_id allocation failed: {exc}")
            return

        # Phase 3: rows, one transaction per database, and the recipients'
        # unread counters at the same time, so the batch waits for one round
        # trip instead of two. Counters of messages whose insert failed are
        # taken back afterwards.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._bump_unread, batch)
            stored = await self._insert(batch, session_ids, first_ids, now)
        if len(stored) < len(batch):
            stored_ids = {id(message) for message in stored}
            await self._bump_unread([m for m in batch if id(m) not in stored_ids], -1)

    async def _resolve_conversations(self, batch: list[NewMessage], now: int) -> list[int]:
        """Set ``relate_id`` on every message and return the session ids they touch."""
        missing: dict[tuple[int, int], None] = {}
        for message in batch:
            pair = (message.from_id, message.to_id)
            if (self.cached_relation_id(*pair) is None
                    or (message.from_id, message.to_id, BD.SESSION_TYPE_SINGLE) not in self._sessions
                    or (message.to_id, message.from_id, BD.SESSION_TYPE_SINGLE) not in self._sessions):
                missing[pair] = None

        if missing:
            found = await self.master.run("resolve_conversations", _resolve_tx, list(missing), now)
            new_relations = []
            for (from_id, to_id), (relate_id, created, sender_session, recipient_session) in found.items():
                self.remember_relation_id(from_id, to_id, relate_id)
                self._sessions[(from_id, to_id, BD.SESSION_TYPE_SINGLE)] = sender_session
                self._sessions[(to_id, from_id, BD.SESSION_TYPE_SINGLE)] = recipient_session
                if created:
                    new_relations.append(relate_id)
            if new_relations:
                # A new relation starts its counter at 0, as the original does,
                # so a key left over from an older database cannot skip ids.
                await self.cache.pipeline([("set", msg_id_key(relate_id), 0) for relate_id in new_relations])

        session_ids = []
        for message in batch:
            message.relate_id = self.cached_relation_id(message.from_id, message.to_id)
            session_ids.append(self._sessions[(message.from_id, message.to_id, BD.SESSION_TYPE_SINGLE)])
            session_ids.append(self._sessions[(message.to_id, message.from_id, BD.SESSION_TYPE_SINGLE)])
        return sorted(set(session_ids))

    async def _insert(
        self, batch: list[NewMessage], session_ids: list[int], first_ids: dict[int, int], now: int
    ) -> list[NewMessage]:
        """Insert the rows per database and touch the sessions; return the stored messages."""
        groups: dict[int, tuple[Database, list[NewMessage]]] = {}
        for message in batch:
            db = self.shards.database_for_relation(message.relate_id)
            groups.setdefault(id(db), (db, []))[1].append(message)
        if id(self.master) not in groups:
            groups[id(self.master)] = (self.master, [])

        stored: list[NewMessage] = []
        for db, messages in groups.values():
            rows_by_table: dict[str, list[tuple]] = defaultdict(list)
            for message in messages:
                rows_by_table[message_table(message.relate_id)].append((
                    message.relate_id, message.from_id, message.to_id, message.msg_id,
                    message.content.decode("utf-8"), message.msg_type, STATUS_OK,
                    message.create_time, message.create_time,
                ))
            touched = session_ids if db is self.master else []
            try:
                await db.run("store_messages", _store_tx, dict(rows_by_table), touched, now)
            except Exception as exc:
                logger.exception("storing %d messages in %s failed; none of them is acknowledged",
                                 len(messages), db.name)
                await self._counters.give_back((message.relate_id for message in messages), first_ids)
                _fail(messages, f"insert failed: {exc}")
                continue
            stored.extend(messages)
        return stored

    async def _bump_unread(self, stored: list[NewMessage], step: int = 1) -> None:
        if not stored:
            return
        increments: dict[tuple[int, int], int] = {}
        for message in stored:
            key = (message.to_id, message.from_id)
            increments[key] = increments.get(key, 0) + step
        try:
            await self.cache.pipeline([
                ("hincrby", unread_key(to_id), str(from_id), count)
                for (to_id, from_id), count in increments.items()
            ])
        except Exception:
            # The messages are stored and will be acknowledged; only the
            # counters shown before the user opens the session are low.
            logger.exception("bumping unread counters of %d messages failed", len(stored))


def _fail(messages: Iterable[NewMessage], reason: str) -> None:
    for message in messages:
        message.msg_id = 0
        message.error = reason


def _resolve_tx(
    cursor: Cursor, pairs: list[tuple[int, int]], now: int
) -> dict[tuple[int, int], tuple[int, bool, int, int]]:
    """Find or create the relation and both sessions of each (from, to) pair.

    Returns ``{(from_id, to_id): (relate_id, relation_created,
    sender_session_id, recipient_session_id)}``.
    """
    result = {}
    for from_id, to_id in pairs:
        relate_id, created = find_or_create_relation_tx(cursor, from_id, to_id, now)
        sender_session, _ = find_or_create_session_tx(cursor, from_id, to_id, BD.SESSION_TYPE_SINGLE, now)
        recipient_session, _ = find_or_create_session_tx(cursor, to_id, from_id, BD.SESSION_TYPE_SINGLE, now)
        result[(from_id, to_id)] = (relate_id, created, sender_session, recipient_session)
    return result


def _store_tx(cursor: Cursor, rows_by_table: dict[str, list[tuple]], session_ids: list[int], now: int) -> None:
    insert_messages_tx(cursor, rows_by_table)
    touch_sessions_tx(cursor, session_ids, now)
