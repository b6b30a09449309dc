"""Departments: the IMDepart table and the DepartInfo fields."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from teamtalk.storage.database import Cursor, Database
from teamtalk.storage.users import AlreadyExists, NotFound

logger = logging.getLogger(__name__)

#: DepartmentStatusType values of IMDepart.status.
DEPART_STATUS_OK = 0
DEPART_STATUS_DELETE = 1

#: Width of IMDepart.departName (varchar length).
MAX_DEPART_NAME = 64

_COLUMNS = "id, departName, priority, parentId, status, created, updated"


@dataclass(frozen=True)
class DepartRow:
    """One IMDepart row; ``name`` is column departName, ``parent_id`` is parentId."""

    id: int
    name: str
    priority: int
    parent_id: int
    status: int
    created: int
    updated: int

    @classmethod
    def from_db(cls, row: tuple) -> DepartRow:
        id_, name, priority, parent_id, status, created, updated = row
        return cls(int(id_), name, int(priority), int(parent_id), int(status), int(created), int(updated))


def depart_info_fields(row: DepartRow) -> dict[str, object]:
    """Return the fields of ``IM.BaseDefine.DepartInfo`` for one department."""
    return {
        "dept_id": row.id,
        "priority": row.priority,
        "dept_name": row.name,
        "parent_dept_id": row.parent_id,
        "dept_status": row.status,
    }


def _insert_depart(cursor: Cursor, name: str, parent_id: int, priority: int) -> int:
    if parent_id:
        cursor.execute("SELECT id FROM IMDepart WHERE id = %s", (parent_id,))
        if cursor.fetchone() is None:
            raise NotFound(f"no department with id {parent_id} to be the parent")
    cursor.execute(
        "SELECT id FROM IMDepart WHERE departName = %s AND parentId = %s" + cursor.for_update,
        (name, parent_id),
    )
    if cursor.fetchone() is not None:
        raise AlreadyExists(f"department {name!r} already exists under parent {parent_id}")
    now = int(time.time())
    cursor.execute(
        "INSERT INTO IMDepart (departName, priority, parentId, status, created, updated)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (name, priority, parent_id, DEPART_STATUS_OK, now, now),
    )
    return int(cursor.lastrowid)


async def add_depart(db: Database, name: str, parent_id: int = 0, priority: int = 0) -> int:
    """Create a department and return its id.

    ``parent_id`` 0 makes a top-level department. ``priority`` orders
    departments in clients.

    Raises:
        AlreadyExists: the parent already has a department of that name.
        NotFound: ``parent_id`` is not 0 and names no department.
        ValueError: the name is empty or too long, or a number is negative.
    """
    if not name:
        raise ValueError("department name must not be empty")
    if len(name) > MAX_DEPART_NAME:
        raise ValueError(f"department name is {len(name)} characters long; at most {MAX_DEPART_NAME} fit")
    if parent_id < 0:
        raise ValueError(f"parent department id must not be negative, got {parent_id}")
    if priority < 0:
        raise ValueError(f"priority must not be negative, got {priority}")
    depart_id = await db.run("add_depart", _insert_depart, name, parent_id, priority)
    logger.info("added department %d (%s)", depart_id, name)
    return depart_id


def _select_departs(cursor: Cursor, since: int | None) -> list[DepartRow]:
    if since is None:
        cursor.execute(f"SELECT {_COLUMNS} FROM IMDepart ORDER BY id")
    else:
        cursor.execute(f"SELECT {_COLUMNS} FROM IMDepart WHERE updated > %s ORDER BY id", (since,))
    return [DepartRow.from_db(row) for row in cursor.fetchall()]


async def list_departs(db: Database) -> list[DepartRow]:
    """Return every department, deleted ones included, ordered by id."""
    return await db.run("list_departs", _select_departs, None)


async def get_departs_changed_since(db: Database, ts: int) -> list[DepartRow]:
    """Return the departments whose ``updated`` time is after ``ts`` (Unix seconds)."""
    return await db.run("get_departs_changed_since", _select_departs, int(ts))


def _select_depart(cursor: Cursor, depart_id: int) -> DepartRow | None:
    cursor.execute(f"SELECT {_COLUMNS} FROM IMDepart WHERE id = %s", (depart_id,))
    row = cursor.fetchone()
    return None if row is None else DepartRow.from_db(row)


async def get_depart(db: Database, depart_id: int) -> DepartRow | None:
    """Return the department with id ``depart_id``, or None."""
    return await db.run("get_depart", _select_depart, int(depart_id))
