"""Relations (``IMRelationShip``): one row per pair of users who ever talked.

A relation is stored once per unordered pair, as ``smallId`` < ``bigId``,
and its ``id`` (the relate_id) names the conversation: it picks the
message shard and numbers that conversation's msg_ids.

The ``*_tx`` functions take a cursor and run inside a caller's transaction
(see :meth:`Database.run`), so the message writer can combine them with
other statements. The async functions run one transaction each.
"""

from __future__ import annotations

import logging

from teamtalk.storage.database import Cursor, Database

logger = logging.getLogger(__name__)

STATUS_OK = 0
STATUS_REMOVED = 1


def ordered_pair(user_a: int, user_b: int) -> tuple[int, int]:
    """Return ``(smallId, bigId)`` for two user ids."""
    return (user_a, user_b) if user_a < user_b else (user_b, user_a)


def select_relation_id_tx(cursor: Cursor, user_a: int, user_b: int) -> int | None:
    """Return the id of the active relation between two users, or None."""
    small_id, big_id = ordered_pair(user_a, user_b)
    cursor.execute(
        "SELECT id FROM IMRelationShip WHERE smallId=%s AND bigId=%s AND status=%s ORDER BY id LIMIT 1",
        (small_id, big_id, STATUS_OK),
    )
    row = cursor.fetchone()
    return None if row is None else int(row[0])


def find_or_create_relation_tx(cursor: Cursor, user_a: int, user_b: int, now: int) -> tuple[int, bool]:
    """Return ``(relate_id, created)`` for two users, creating or reviving the row.

    A removed relation (status 1) is set back to status 0 and keeps its id,
    so its msg_ids go on where they stopped. ``created`` is True only when
    a new row was inserted.
    """
    small_id, big_id = ordered_pair(user_a, user_b)
    cursor.execute(
        "SELECT id, status FROM IMRelationShip WHERE smallId=%s AND bigId=%s ORDER BY id LIMIT 1"
        + cursor.for_update,
        (small_id, big_id),
    )
    row = cursor.fetchone()
    if row is not None:
        relate_id, status = int(row[0]), row[1]
        if status != STATUS_OK:
            cursor.execute(
                "UPDATE IMRelationShip SET status=%s, updated=%s WHERE id=%s",
                (STATUS_OK, now, relate_id),
            )
            logger.info("revived relation %d between users %d and %d", relate_id, small_id, big_id)
        return relate_id, False

    cursor.execute(
        "INSERT INTO IMRelationShip (smallId, bigId, status, created, updated) VALUES (%s, %s, %s, %s, %s)",
        (small_id, big_id, STATUS_OK, now, now),
    )
    relate_id = int(cursor.lastrowid)
    logger.debug("created relation %d between users %d and %d", relate_id, small_id, big_id)
    return relate_id, True


def select_relation_ids_tx(cursor: Cursor, user_id: int, peer_ids: list[int]) -> dict[int, int]:
    """Return ``{peer_id: relate_id}`` for the active relations of one user with ``peer_ids``."""
    result: dict[int, int] = {}
    if not peer_ids:
        return result
    smaller = [peer for peer in peer_ids if peer < user_id]
    bigger = [peer for peer in peer_ids if peer > user_id]
    if smaller:
        marks = ", ".join(["%s"] * len(smaller))
        cursor.execute(
            f"SELECT smallId, id FROM IMRelationShip WHERE bigId=%s AND status=%s AND smallId IN ({marks})",
            (user_id, STATUS_OK, *smaller),
        )
        for peer_id, relate_id in cursor.fetchall():
            result.setdefault(int(peer_id), int(relate_id))
    if bigger:
        marks = ", ".join(["%s"] * len(bigger))
        cursor.execute(
            f"SELECT bigId, id FROM IMRelationShip WHERE smallId=%s AND status=%s AND bigId IN ({marks})",
            (user_id, STATUS_OK, *bigger),
        )
        for peer_id, relate_id in cursor.fetchall():
            result.setdefault(int(peer_id), int(relate_id))
    return result


def count_relations_tx(cursor: Cursor, user_a: int, user_b: int) -> int:
    """Return how many rows exist for a pair, whatever their status (1 when healthy)."""
    small_id, big_id = ordered_pair(user_a, user_b)
    cursor.execute(
        "SELECT COUNT(*) FROM IMRelationShip WHERE smallId=%s AND bigId=%s",
        (small_id, big_id),
    )
    return int(cursor.fetchone()[0])


async def get_relation_id(db: Database, user_a: int, user_b: int) -> int | None:
    """Return the id of the active relation between two users, or None."""
    return await db.run("get_relation_id", select_relation_id_tx, user_a, user_b)


async def get_relation_ids(db: Database, user_id: int, peer_ids: list[int]) -> dict[int, int]:
    """Return ``{peer_id: relate_id}`` for the active relations of ``user_id``."""
    return await db.run("get_relation_ids", select_relation_ids_tx, user_id, list(peer_ids))


async def count_relations(db: Database, user_a: int, user_b: int) -> int:
    """Return how many relation rows exist for a pair of users."""
    return await db.run("count_relations", count_relations_tx, user_a, user_b)
