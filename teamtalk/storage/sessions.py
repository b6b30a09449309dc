"""Recent sessions (``IMRecentSession``): one row per user and peer they talk to.

Each side of a single chat has its own row (userId = owner, peerId = the
other user, type = SessionType 1), and a group chat gives each member a
row with peerId = group id and type 2. A user who removes a session sets
its status to 1; the next message sets it back to 0.

The ``*_tx`` functions take a cursor and run inside a caller's transaction;
the async functions run one transaction each.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from teamtalk.storage.database import Cursor, Database

logger = logging.getLogger(__name__)

STATUS_OK = 0
STATUS_REMOVED = 1

#: How many sessions one recent-session request returns at most, newest
#: first (the original's limit).
RECENT_SESSION_LIMIT = 100


@dataclass(frozen=True, slots=True)
class SessionRow:
    """One ``IMRecentSession`` row."""

    id: int
    user_id: int
    peer_id: int
    session_type: int
    status: int
    updated: int


def find_or_create_session_tx(
    cursor: Cursor, user_id: int, peer_id: int, session_type: int, now: int
) -> tuple[int, bool]:
    """Return ``(session_id, created)`` for one side of a conversation.

    An existing row of any status is reused and set to status 0 with
    ``updated`` = ``now``; ``created`` is True only when a row was inserted.
    """
    cursor.execute(
        "SELECT id FROM IMRecentSession WHERE userId=%s AND peerId=%s AND type=%s ORDER BY id LIMIT 1"
        + cursor.for_update,
        (user_id, peer_id, session_type),
    )
    row = cursor.fetchone()
    if row is not None:
        session_id = int(row[0])
        cursor.execute(
            "UPDATE IMRecentSession SET status=%s, updated=%s WHERE id=%s",
            (STATUS_OK, now, session_id),
        )
        return session_id, False

    cursor.execute(
        "INSERT INTO IMRecentSession (userId, peerId, type, status, created, updated) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (user_id, peer_id, session_type, STATUS_OK, now, now),
    )
    return int(cursor.lastrowid), True


def touch_sessions_tx(cursor: Cursor, session_ids: list[int], now: int) -> None:
    """Set ``updated`` = ``now`` and status 0 (not removed) on the given sessions.

    Setting the status here is what brings a removed session back when a
    new message arrives in it.
    """
    if not session_ids:
        return
    ids = sorted(set(session_ids))
    marks = ", ".join(["%s"] * len(ids))
    cursor.execute(
        f"UPDATE IMRecentSession SET status=%s, updated=%s WHERE id IN ({marks})",
        (STATUS_OK, now, *ids),
    )


def select_recent_sessions_tx(
    cursor: Cursor, user_id: int, updated_after: int, limit: int
) -> list[SessionRow]:
    """Return the user's active sessions updated after a time, newest first."""
    cursor.execute(
        "SELECT id, userId, peerId, type, status, updated FROM IMRecentSession "
        "WHERE userId=%s AND status=%s AND updated>%s ORDER BY updated DESC, id DESC LIMIT %s",
        (user_id, STATUS_OK, updated_after, limit),
    )
    return [_session_row(row) for row in cursor.fetchall()]


def select_sessions_tx(cursor: Cursor, user_id: int, peer_id: int, session_type: int) -> list[SessionRow]:
    """Return every row of one user's session with a peer (one when healthy)."""
    cursor.execute(
        "SELECT id, userId, peerId, type, status, updated FROM IMRecentSession "
        "WHERE userId=%s AND peerId=%s AND type=%s ORDER BY id",
        (user_id, peer_id, session_type),
    )
    return [_session_row(row) for row in cursor.fetchall()]


def _session_row(row: tuple) -> SessionRow:
    session_id, user_id, peer_id, session_type, status, updated = row
    return SessionRow(
        id=int(session_id),
        user_id=int(user_id),
        peer_id=int(peer_id),
        session_type=int(session_type or 0),
        status=int(status or 0),
        updated=int(updated),
    )


async def get_recent_sessions(
    db: Database, user_id: int, updated_after: int, limit: int = RECENT_SESSION_LIMIT
) -> list[SessionRow]:
    """Return up to ``limit`` active sessions of a user updated after a time, newest first."""
    return await db.run("get_recent_sessions", select_recent_sessions_tx, user_id, updated_after, limit)


async def get_sessions(db: Database, user_id: int, peer_id: int, session_type: int) -> list[SessionRow]:
    """Return every row of one user's session with a peer."""
    return await db.run("get_sessions", select_sessions_tx, user_id, peer_id, session_type)
