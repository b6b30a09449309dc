"""Users: the IMUser table, password checks and the UserInfo fields.

The password scheme is that of the original TeamTalk clients and admin.
Clients send as ``password`` the lowercase MD5 hex of the plain password.
``IMUser.password`` stores ``md5(that hex + salt)`` as lowercase hex, and
``IMUser.salt`` is a short random string (here always 4 decimal digits,
as the original admin page generates). A user may log in only while
``status`` is 0.

``IMUser`` has no real-name column: the original sends ``name`` (the login
name) as ``user_real_name``, and so does :func:`user_info_fields`.

User names are unique ignoring case: :func:`add_user` rejects ``Alice``
when ``alice`` exists. People pick each other by name, in clients and in
``teamtalk chat``, where such names are ambiguous. Our schema and the
original's give ``name`` the case-sensitive ``utf8mb4_bin`` collation, but
a table made with MySQL's default collation (``utf8mb4_general_ci``) would
take the two names for one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

from teamtalk.storage.database import Cursor, Database, is_duplicate_key

logger = logging.getLogger(__name__)

#: IMUser.status of a user who may log in.
STATUS_ACTIVE = 0
#: IMUser.status the original admin page sets when it deletes a user (left
#: the company); such users cannot log in and are hidden by clients.
STATUS_DISABLED = 3

# Column widths of IMUser (varchar lengths), checked before writing so both
# dialects reject the same input; SQLite would store longer text silently.
_MAX_LENGTH = {
    "name": 32,
    "nick": 32,
    "domain": 32,
    "phone": 11,
    "email": 64,
    "avatar": 255,
    "sign_info": 128,
}

#: Largest number of ids bound in one ``IN (...)`` list.
_IN_CHUNK = 500

_COLUMNS = (
    "id, sex, name, domain, nick, password, salt, phone, email, avatar,"
    " departId, status, created, updated, push_shield_status, sign_info"
)


class AlreadyExists(Exception):
    """A user or department with that name exists already."""


class NotFound(LookupError):
    """No user or department matches the given name or id."""


@dataclass(frozen=True)
class UserRow:
    """One IMUser row; attribute names are the column names in snake_case."""

    id: int
    sex: int
    name: str
    domain: str
    nick: str
    password: str = dataclasses.field(repr=False)
    salt: str = dataclasses.field(repr=False)
    phone: str
    email: str
    avatar: str
    depart_id: int
    status: int
    created: int
    updated: int
    push_shield_status: int
    sign_info: str

    @classmethod
    def from_db(cls, row: tuple) -> UserRow:
        (id_, sex, name, domain, nick, password, salt, phone, email, avatar,
         depart_id, status, created, updated, push_shield_status, sign_info) = row
        return cls(
            id=int(id_), sex=int(sex), name=name, domain=domain, nick=nick,
            password=password, salt=salt, phone=phone, email=email, avatar=avatar or "",
            depart_id=int(depart_id), status=int(status or 0), created=int(created),
            updated=int(updated), push_shield_status=int(push_shield_status),
            sign_info=sign_info,
        )


def hash_client_password(plain: str) -> str:
    """Return what a client sends for a plain password: its lowercase MD5 hex."""
    return hashlib.md5(plain.encode("utf-8")).hexdigest()


def _salted(client_password: str, salt: str) -> str:
    return hashlib.md5((client_password + salt).encode("utf-8")).hexdigest()


def _new_salt() -> str:
    return "%04d" % secrets.randbelow(10000)


def _check_length(field: str, value: str) -> None:
    limit = _MAX_LENGTH[field]
    if len(value) > limit:
        raise ValueError(f"{field} is {len(value)} characters long; at most {limit} fit")


def user_info_fields(row: UserRow) -> dict[str, object]:
    """Return the fields of ``IM.BaseDefine.UserInfo`` for one user.

    Use as ``UserInfo(**user_info_fields(row))``.
    """
    return {
        "user_id": row.id,
        "user_gender": row.sex,
        "user_nick_name": row.nick,
        "avatar_url": row.avatar,
        "department_id": row.depart_id,
        "email": row.email,
        "user_real_name": row.name,
        "user_tel": row.phone,
        "user_domain": row.domain,
        "status": row.status,
        "sign_info": row.sign_info,
    }


def _select_by_name(cursor: Cursor, name: str) -> list[UserRow]:
    cursor.execute(f"SELECT {_COLUMNS} FROM IMUser WHERE name = %s ORDER BY id", (name,))
    return [UserRow.from_db(row) for row in cursor.fetchall()]


def _select_by_name_ignoring_case(cursor: Cursor, name: str) -> list[UserRow]:
    """Return the users whose name equals ``name`` ignoring case, locking them on MySQL.

    No index serves ``LOWER(name)``, so this reads the whole table. That
    suits adding users by hand, the only caller.
    """
    cursor.execute(
        f"SELECT {_COLUMNS} FROM IMUser WHERE LOWER(name) = LOWER(%s) ORDER BY id{cursor.for_update}", (name,)
    )
    rows = [UserRow.from_db(row) for row in cursor.fetchall()]
    non_ascii = "".join(char for char in name if not char.isascii())
    if cursor.dialect == "sqlite" and non_ascii.lower() != non_ascii.upper():
        # SQLite's LOWER() changes ASCII letters only, so names with other
        # cased letters (É, Ж) are compared here, as MySQL's LOWER() would.
        cursor.execute(f"SELECT {_COLUMNS} FROM IMUser ORDER BY id")
        lower = name.lower()
        rows = [row for row in map(UserRow.from_db, cursor.fetchall()) if row.name.lower() == lower]
    return rows


def _insert_user(cursor: Cursor, values: dict[str, object]) -> int:
    name = str(values["name"])
    same_name = _select_by_name_ignoring_case(cursor, name)
    if any(row.name == name for row in same_name):
        raise AlreadyExists(f"user {name!r} already exists")
    if same_name:
        existing = same_name[0]
        raise AlreadyExists(f"cannot add user {name!r}: user {existing.name!r} (id {existing.id}) already exists, "
                            "and user names must differ in more than letter case")
    columns = list(values)
    sql = "INSERT INTO IMUser ({}) VALUES ({})".format(", ".join(columns), ", ".join(["%s"] * len(columns)))
    try:
        cursor.execute(sql, [values[column] for column in columns])
    except Exception as exc:
        # The locking SELECT above already serializes inserts of one name;
        # the unique key of fresh schemas is a second line of defence.
        if is_duplicate_key(exc):
            raise AlreadyExists(f"user {values['name']!r} already exists") from exc
        raise
    return int(cursor.lastrowid)


async def add_user(
    db: Database,
    name: str,
    password: str,
    *,
    nick: str = "",
    real_name: str = "",
    depart_id: int = 0,
    email: str = "",
    phone: str = "",
    sex: int = 0,
    domain: str = "",
    avatar: str = "",
    sign_info: str = "",
) -> int:
    """Create an active user and return its id.

    ``password`` is the plain password; it is stored salted as described in
    the module docstring. ``real_name`` must be empty or equal to ``name``,
    because IMUser has no separate real-name column.

    Raises:
        AlreadyExists: a user whose name equals ``name`` ignoring case exists
            (whatever its status); the message names that user.
        ValueError: a field is empty, too long or out of range.
    """
    if not name:
        raise ValueError("user name must not be empty")
    if not password:
        raise ValueError("password must not be empty")
    if real_name and real_name != name:
        raise ValueError(
            "real name must equal the user name: IMUser has no real-name column, "
            "and clients show the user name as the real name"
        )
    if sex not in (0, 1, 2):
        raise ValueError(f"sex must be 0 (unknown), 1 (male) or 2 (female), got {sex}")
    if depart_id < 0:
        raise ValueError(f"department id must not be negative, got {depart_id}")
    texts = {"name": name, "nick": nick, "domain": domain, "phone": phone,
             "email": email, "avatar": avatar, "sign_info": sign_info}
    for field, value in texts.items():
        _check_length(field, value)

    salt = _new_salt()
    now = int(time.time())
    values: dict[str, object] = {
        **texts,
        "sex": sex,
        "password": _salted(hash_client_password(password), salt),
        "salt": salt,
        "departId": depart_id,
        "status": STATUS_ACTIVE,
        "created": now,
        "updated": now,
    }
    user_id = await db.run("add_user", _insert_user, values)
    logger.info("added user %d (%s)", user_id, name)
    return user_id


async def validate_user(db: Database, name: str, client_password: str) -> UserRow | None:
    """Return the active user ``name`` if ``client_password`` matches, else None.

    ``client_password`` is the value the client sends (the MD5 hex of the
    plain password). Should several active users share the name (possible
    in databases without our unique key), the first one whose password
    matches is returned.
    """
    if not name or not client_password:
        return None
    rows = await db.run("validate_user", _select_by_name, name)
    for row in rows:
        if row.status != STATUS_ACTIVE:
            continue
        if hmac.compare_digest(
            _salted(client_password, row.salt).encode(), row.password.lower().encode()
        ):
            return row
    return None


async def get_user_by_name(db: Database, name: str) -> UserRow | None:
    """Return the user called ``name`` whatever its status, or None."""
    rows = await db.run("get_user_by_name", _select_by_name, name)
    return rows[0] if rows else None


def _select_by_ids(cursor: Cursor, ids: list[int]) -> list[UserRow]:
    rows: list[UserRow] = []
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start:start + _IN_CHUNK]
        marks = ", ".join(["%s"] * len(chunk))
        cursor.execute(f"SELECT {_COLUMNS} FROM IMUser WHERE id IN ({marks})", chunk)
        rows.extend(UserRow.from_db(row) for row in cursor.fetchall())
    rows.sort(key=lambda row: row.id)
    return rows


async def get_users(db: Database, ids: Iterable[int]) -> list[UserRow]:
    """Return the users with the given ids, ordered by id; unknown ids are skipped."""
    unique = sorted({int(user_id) for user_id in ids})
    if not unique:
        return []
    return await db.run("get_users", _select_by_ids, unique)


def _select_all(cursor: Cursor) -> list[UserRow]:
    cursor.execute(f"SELECT {_COLUMNS} FROM IMUser ORDER BY id")
    return [UserRow.from_db(row) for row in cursor.fetchall()]


async def list_users(db: Database) -> list[UserRow]:
    """Return every user, whatever its status, ordered by id."""
    return await db.run("list_users", _select_all)


def _update_by_name(cursor: Cursor, name: str, assignments: dict[str, object]) -> None:
    columns = ", ".join(f"{column} = %s" for column in assignments)
    cursor.execute(f"UPDATE IMUser SET {columns} WHERE name = %s", [*assignments.values(), name])
    if cursor.rowcount == 0:
        raise NotFound(f"no user named {name!r}")


async def set_password(db: Database, name: str, plain: str) -> None:
    """Give user ``name`` a new plain password with a fresh salt.

    Raises NotFound for an unknown user and ValueError for an empty password.
    """
    if not plain:
        raise ValueError("password must not be empty")
    salt = _new_salt()
    assignments = {
        "password": _salted(hash_client_password(plain), salt),
        "salt": salt,
        "updated": int(time.time()),
    }
    await db.run("set_password", _update_by_name, name, assignments)
    logger.info("password of user %s changed", name)


async def set_user_status(db: Database, name: str, status: int) -> None:
    """Set IMUser.status of ``name``: 0 may log in, 3 is the original's "left".

    Raises NotFound for an unknown user and ValueError for a status outside 0..255.
    """
    if not 0 <= status <= 255:
        raise ValueError(f"status must be between 0 and 255, got {status}")
    assignments = {"status": status, "updated": int(time.time())}
    await db.run("set_user_status", _update_by_name, name, assignments)
    logger.info("status of user %s set to %d", name, status)


def _select_by_names(cursor: Cursor, names: list[str]) -> dict[str, list[UserRow]]:
    found: dict[str, list[UserRow]] = {}
    for start in range(0, len(names), _IN_CHUNK):
        chunk = names[start:start + _IN_CHUNK]
        placeholders = ", ".join(["%s"] * len(chunk))
        cursor.execute(f"SELECT {_COLUMNS} FROM IMUser WHERE name IN ({placeholders}) ORDER BY id", chunk)
        for row in cursor.fetchall():
            user = UserRow.from_db(row)
            found.setdefault(user.name, []).append(user)
    return found


async def validate_users(db: Database, credentials: list[tuple[str, str]]) -> list[UserRow | None]:
    """Check several (name, client_password) pairs with one query; return a result per pair.

    Each result is what :func:`validate_user` returns for that pair.  A login
    storm costs one round trip per batch instead of one per login.
    """
    names = sorted({name for name, password in credentials if name and password})
    rows = await db.run("validate_users", _select_by_names, names) if names else {}
    results: list[UserRow | None] = []
    for name, client_password in credentials:
        match = None
        if name and client_password:
            for row in rows.get(name, ()):
                if row.status == STATUS_ACTIVE and hmac.compare_digest(
                        _salted(client_password, row.salt).encode(), row.password.lower().encode()):
                    match = row
                    break
        results.append(match)
    return results
