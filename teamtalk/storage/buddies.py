"""Contacts: users and departments changed since a time, profile changes, session removal.

Every change of an IMUser row sets its ``updated`` to the current time,
which is how clients that ask for the users changed since their last sync
learn about it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.storage.database import Cursor, Database
from teamtalk.storage.sessions import STATUS_OK as SESSION_STATUS_OK
from teamtalk.storage.sessions import STATUS_REMOVED as SESSION_STATUS_REMOVED
from teamtalk.storage.users import STATUS_DISABLED, UserRow, get_users

logger = logging.getLogger(__name__)

#: Column widths of IMUser.avatar and IMUser.sign_info (varchar lengths).
MAX_AVATAR_URL = 255
MAX_SIGN_INFO = 128


@dataclass(frozen=True, slots=True)
class ChangedUsers:
    """Users changed since a time, and the time to ask from next."""

    users: list[UserRow]
    latest_update_time: int


def _select_changed_user_ids_tx(cursor: Cursor, since: int) -> list[tuple[int, int]]:
    if since == 0:
        cursor.execute("SELECT id, updated FROM IMUser WHERE status<>%s ORDER BY id", (STATUS_DISABLED,))
    else:
        cursor.execute("SELECT id, updated FROM IMUser WHERE updated>=%s ORDER BY id", (since,))
    return [(int(user_id), int(updated)) for user_id, updated in cursor.fetchall()]


async def get_users_changed_since(db: Database, since: int) -> ChangedUsers:
    """Return the users a client that synced at ``since`` must fetch again.

    The rules are the original's. ``since`` 0 (a first sync) returns every
    user who has not left (status not 3). A later time returns every user,
    left or not, whose ``updated`` is at or after it, so users changed in
    the same second as the previous sync are returned again, not missed.
    ``latest_update_time`` is the largest ``updated`` returned, or
    ``since`` when that is larger.
    """
    changed = await db.run("get_changed_user_ids", _select_changed_user_ids_tx, int(since))
    latest = max([since, *(updated for _, updated in changed)])
    users = await get_users(db, [user_id for user_id, _ in changed])
    return ChangedUsers(users, latest)


def _update_user_tx(cursor: Cursor, user_id: int, assignments: dict[str, object]) -> bool:
    columns = ", ".join(f"{column}=%s" for column in assignments)
    cursor.execute(f"UPDATE IMUser SET {columns} WHERE id=%s", (*assignments.values(), user_id))
    return cursor.rowcount > 0


async def _update_user(db: Database, label: str, user_id: int, assignments: dict[str, object]) -> bool:
    assignments = {**assignments, "updated": int(time.time())}
    return await db.run(label, _update_user_tx, user_id, assignments)


async def set_avatar(db: Database, user_id: int, avatar_url: str) -> bool:
    """Store a user's avatar URL; return False if the user does not exist.

    Raises ValueError for a URL longer than IMUser.avatar holds.
    """
    if len(avatar_url) > MAX_AVATAR_URL:
        raise ValueError(f"avatar URL is {len(avatar_url)} characters long; at most {MAX_AVATAR_URL} fit")
    return await _update_user(db, "set_avatar", user_id, {"avatar": avatar_url})


async def set_sign_info(db: Database, user_id: int, sign_info: str) -> bool:
    """Store a user's signature line; return False if the user does not exist.

    Raises ValueError for a text longer than IMUser.sign_info holds.
    """
    if len(sign_info) > MAX_SIGN_INFO:
        raise ValueError(f"sign info is {len(sign_info)} characters long; at most {MAX_SIGN_INFO} fit")
    return await _update_user(db, "set_sign_info", user_id, {"sign_info": sign_info})


async def set_push_shield(db: Database, user_id: int, status: int) -> bool:
    """Store whether a user turned off push notifications (1) or not (0); False for an unknown user."""
    if status not in (0, 1):
        raise ValueError(f"push shield status must be 0 or 1, got {status}")
    return await _update_user(db, "set_push_shield", user_id, {"push_shield_status": status})


def _select_push_shield_tx(cursor: Cursor, user_id: int) -> int | None:
    cursor.execute("SELECT push_shield_status FROM IMUser WHERE id=%s", (user_id,))
    row = cursor.fetchone()
    return None if row is None else int(row[0] or 0)


async def get_push_shield(db: Database, user_id: int) -> int | None:
    """Return a user's push shield status, or None if the user does not exist."""
    return await db.run("get_push_shield", _select_push_shield_tx, user_id)


def _remove_session_tx(cursor: Cursor, user_id: int, peer_id: int, session_type: int, now: int) -> bool:
    cursor.execute(
        "UPDATE IMRecentSession SET status=%s, updated=%s WHERE userId=%s AND peerId=%s AND type=%s AND status=%s",
        (SESSION_STATUS_REMOVED, now, user_id, peer_id, session_type, SESSION_STATUS_OK),
    )
    return cursor.rowcount > 0


async def remove_session(db: Database, user_id: int, peer_id: int, session_type: int) -> bool:
    """Mark a user's active session with a peer or group removed; False if there is none.

    The next message in the conversation makes the session active again.
    """
    if session_type not in (BD.SESSION_TYPE_SINGLE, BD.SESSION_TYPE_GROUP):
        raise ValueError(f"session type must be 1 (single) or 2 (group), got {session_type}")
    return await db.run("remove_session", _remove_session_tx, user_id, peer_id, session_type, int(time.time()))
