"""The TeamTalk tables, created on MySQL or SQLite from one description.

Table names, column names, types and indexes are those of the original
TeamTalk schema file (``auto_setup/mariadb/conf/ttopen.sql``), so a
deployment can switch servers on its existing data. Differences:

- ``IMTransmitFile`` (offline files) is added: the original server code
  reads and writes it, but its schema file does not create it.
- Every table uses ``utf8mb4`` with the ``utf8mb4_bin`` collation, so nick
  names and message content may hold emoji.
- Fresh databases get extra unique keys as a safety net against duplicate
  rows (names start with ``uniq_``). Databases created by the original
  schema file lack them, so no code may depend on them.

:func:`init_db` uses ``CREATE TABLE IF NOT EXISTS`` (and, on SQLite,
``CREATE INDEX IF NOT EXISTS``), so it can run any number of times and
never alters or fills an existing table. It inserts no rows.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from teamtalk.storage.database import Cursor, Database, check_identifier
from teamtalk.storage.shards import group_message_tables, message_tables

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Column:
    name: str
    #: MySQL type as in the original schema, e.g. ``"int(11) unsigned"``.
    mysql_type: str
    not_null: bool = True
    #: DEFAULT value, or None for no DEFAULT clause.
    default: int | str | None = None
    comment: str = ""


@dataclass(frozen=True)
class Index:
    name: str
    #: Column names; a MySQL prefix length is written ``"name(191)"``.
    columns: tuple[str, ...]
    unique: bool = False


@dataclass(frozen=True)
class Table:
    name: str
    #: The first column is the auto-increment primary key ``id``.
    columns: tuple[Column, ...]
    indexes: tuple[Index, ...] = field(default=())
    comment: str = ""


def _id(mysql_type: str = "int(11)") -> Column:
    return Column("id", mysql_type)


def _int(name: str, default: int | None = None, *, not_null: bool = True, comment: str = "") -> Column:
    return Column(name, "int(11) unsigned", not_null, default, comment)


def _tinyint(name: str, width: int, default: int | None, *, not_null: bool = True, comment: str = "") -> Column:
    return Column(name, f"tinyint({width}) unsigned", not_null, default, comment)


def _varchar(name: str, length: int, *, not_null: bool = True, default: str | None = "", comment: str = "") -> Column:
    return Column(name, f"varchar({length})", not_null, default, comment)


def _message_table(name: str) -> Table:
    return Table(
        name,
        (
            _id(),
            _int("relateId", comment="relation id (IMRelationShip.id)"),
            _int("fromId", comment="sender user id"),
            _int("toId", comment="recipient user id"),
            _int("msgId", comment="msg_id within the relation"),
            _varchar("content", 4096, not_null=False, comment="msg_data as sent by the client"),
            _tinyint("type", 2, 1, comment="MsgType"),
            _tinyint("status", 1, 0, comment="0 normal, 1 deleted"),
            _int("updated"),
            _int("created"),
        ),
        (
            Index("idx_relateId_status_created", ("relateId", "status", "created")),
            Index("idx_relateId_status_msgId_created", ("relateId", "status", "msgId", "created")),
            Index("idx_fromId_toId_created", ("fromId", "toId", "status")),
            Index("uniq_relateId_msgId", ("relateId", "msgId"), unique=True),
        ),
    )


def _group_message_table(name: str) -> Table:
    return Table(
        name,
        (
            _id(),
            _int("groupId", comment="group id"),
            _int("userId", comment="sender user id"),
            _int("msgId", comment="msg_id within the group"),
            _varchar("content", 4096, comment="msg_data as sent by the client"),
            _tinyint("type", 3, 2, comment="2 text, 101 audio"),
            _int("status", 0, comment="0 normal, 1 deleted"),
            _int("updated", 0),
            _int("created", 0),
        ),
        (
            Index("idx_groupId_status_created", ("groupId", "status", "created")),
            Index("idx_groupId_msgId_status_created", ("groupId", "msgId", "status", "created")),
            Index("uniq_groupId_msgId", ("groupId", "msgId"), unique=True),
        ),
        "group messages",
    )


TABLES: tuple[Table, ...] = (
    Table(
        "IMAdmin",
        (
            _id("mediumint(6) unsigned"),
            _varchar("uname", 40, default=None, comment="admin login name"),
            Column("pwd", "char(32)", comment="md5 hex of the password"),
            _tinyint("status", 2, 0, comment="0 normal, 1 deleted"),
            _int("created", 0),
            _int("updated", 0),
        ),
    ),
    Table(
        "IMAudio",
        (
            _id(),
            _int("fromId", comment="sender user id"),
            _int("toId", comment="recipient user or group id"),
            _varchar("path", 255, not_null=False, comment="where the audio file is stored"),
            _int("size", 0, comment="file size in bytes"),
            _int("duration", 0, comment="length in seconds"),
            _int("created"),
        ),
        (Index("idx_fromId_toId", ("fromId", "toId")),),
    ),
    Table(
        "IMDepart",
        (
            _id("int(11) unsigned"),
            _varchar("departName", 64, comment="department name"),
            _int("priority", 0, comment="display order"),
            _int("parentId", comment="parent department id, 0 for none"),
            _int("status", 0, comment="DepartmentStatusType: 0 ok, 1 deleted"),
            _int("created"),
            _int("updated"),
        ),
        (
            Index("idx_departName", ("departName",)),
            Index("idx_priority_status", ("priority", "status")),
        ),
    ),
    Table(
        "IMDiscovery",
        (
            _id("int(11) unsigned"),
            _varchar("itemName", 64),
            _varchar("itemUrl", 64),
            _int("itemPriority", comment="display order"),
            _int("status", 0),
            _int("created"),
            _int("updated"),
        ),
        (Index("idx_itemName", ("itemName",)),),
    ),
    Table(
        "IMGroup",
        (
            _id(),
            _varchar("name", 256, comment="group name"),
            _varchar("avatar", 256, comment="group avatar URL"),
            _int("creator", 0, comment="creator user id"),
            _tinyint("type", 3, 1, comment="GroupType: 1 normal, 2 temporary"),
            _int("userCnt", 0, comment="number of members"),
            _tinyint("status", 3, 1, comment="0 normal, 1 deleted"),
            _int("version", 1, comment="bumped on every change"),
            _int("lastChated", 0, comment="time of the latest message"),
            _int("updated", 0),
            _int("created", 0),
        ),
        (
            Index("idx_name", ("name(191)",)),
            Index("idx_creator", ("creator",)),
        ),
        "groups",
    ),
    Table(
        "IMGroupMember",
        (
            _id(),
            _int("groupId"),
            _int("userId"),
            _tinyint("status", 4, 1, comment="0 member, 1 left"),
            _int("created", 0),
            _int("updated", 0),
        ),
        (
            Index("idx_groupId_userId_status", ("groupId", "userId", "status")),
            Index("idx_userId_status_updated", ("userId", "status", "updated")),
            Index("idx_groupId_updated", ("groupId", "updated")),
        ),
        "group membership",
    ),
    *(_group_message_table(name) for name in group_message_tables()),
    *(_message_table(name) for name in message_tables()),
    Table(
        "IMRecentSession",
        (
            _id(),
            _int("userId", comment="owner of the session"),
            _int("peerId", comment="user id or group id"),
            _tinyint("type", 1, 0, not_null=False, comment="SessionType: 1 single, 2 group"),
            _tinyint("status", 1, 0, not_null=False, comment="0 normal, 1 removed"),
            _int("created", 0),
            _int("updated", 0),
        ),
        (
            Index("idx_userId_peerId_status_updated", ("userId", "peerId", "status", "updated")),
            Index("idx_userId_peerId_type", ("userId", "peerId", "type")),
            Index("uniq_userId_peerId_type", ("userId", "peerId", "type"), unique=True),
        ),
    ),
    Table(
        "IMRelationShip",
        (
            _id(),
            _int("smallId", comment="the smaller user id"),
            _int("bigId", comment="the bigger user id"),
            _tinyint("status", 1, 0, not_null=False, comment="0 normal, 1 removed"),
            _int("created", 0),
            _int("updated", 0),
        ),
        (
            Index("idx_smallId_bigId_status_updated", ("smallId", "bigId", "status", "updated")),
            Index("uniq_smallId_bigId", ("smallId", "bigId"), unique=True),
        ),
    ),
    Table(
        "IMTransmitFile",
        (
            _id(),
            _int("fromId", comment="sender user id"),
            _int("toId", comment="recipient user id"),
            _varchar("fileName", 255),
            _int("size", 0, comment="file size in bytes"),
            _varchar("taskId", 64, comment="file_server task id"),
            _int("status", 0, comment="0 waiting for the recipient"),
            _int("created", 0),
            _int("updated", 0),
        ),
        (
            Index("idx_toId_status_created", ("toId", "status", "created")),
            Index("idx_fromId_toId_taskId", ("fromId", "toId", "taskId")),
        ),
        "offline files",
    ),
    Table(
        "IMUser",
        (
            _id("int(11) unsigned"),
            _tinyint("sex", 1, 0, comment="1 male, 2 female, 0 unknown"),
            _varchar("name", 32, comment="login name, also sent as user_real_name"),
            _varchar("domain", 32, comment="pinyin of the name"),
            _varchar("nick", 32, comment="nick name"),
            _varchar("password", 32, comment="md5 hex of (md5 hex of the password + salt)"),
            _varchar("salt", 4),
            _varchar("phone", 11),
            _varchar("email", 64),
            _varchar("avatar", 255, not_null=False, comment="avatar URL"),
            _int("departId", comment="department id"),
            _tinyint("status", 2, 0, not_null=False, comment="0 active (may log in), 3 left"),
            _int("created"),
            _int("updated"),
            _tinyint("push_shield_status", 1, 0, comment="1 do not disturb"),
            _varchar("sign_info", 128, comment="signature line"),
        ),
        (
            Index("idx_domain", ("domain",)),
            Index("idx_name", ("name",)),
            Index("idx_phone", ("phone",)),
            Index("uniq_name", ("name",), unique=True),
        ),
    ),
)

_PREFIX_LENGTH = re.compile(r"\((\d+)\)$")


def _sql_literal(value: int | str) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


def _mysql_index_column(spec: str) -> str:
    match = _PREFIX_LENGTH.search(spec)
    if match:
        return f"`{check_identifier(spec[: match.start()])}`({match.group(1)})"
    return f"`{check_identifier(spec)}`"


def mysql_statements(table: Table) -> list[str]:
    """Return the MySQL DDL of one table: a single CREATE TABLE with its indexes inline.

    Keeping the indexes inside CREATE TABLE IF NOT EXISTS works on MySQL
    5.6 and later, which lack CREATE INDEX IF NOT EXISTS.
    """
    lines = []
    for position, column in enumerate(table.columns):
        parts = [f"`{check_identifier(column.name)}`", column.mysql_type]
        if column.not_null:
            parts.append("NOT NULL")
        if position == 0:
            parts.append("AUTO_INCREMENT")
        if column.default is not None:
            parts.append("DEFAULT " + _sql_literal(column.default))
        if column.comment:
            parts.append("COMMENT " + _sql_literal(column.comment))
        lines.append("  " + " ".join(parts))
    lines.append(f"  PRIMARY KEY (`{table.columns[0].name}`)")
    for index in table.indexes:
        kind = "UNIQUE KEY" if index.unique else "KEY"
        columns = ", ".join(_mysql_index_column(column) for column in index.columns)
        lines.append(f"  {kind} `{check_identifier(index.name)}` ({columns})")
    options = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
    if table.comment:
        options += " COMMENT=" + _sql_literal(table.comment)
    body = ",\n".join(lines)
    return [f"CREATE TABLE IF NOT EXISTS `{check_identifier(table.name)}` (\n{body}\n) {options}"]


def _sqlite_type(mysql_type: str) -> str:
    if "int" in mysql_type:
        return "INTEGER"
    if mysql_type.startswith(("varchar", "char")):
        return "TEXT"
    raise ValueError(f"no SQLite type for MySQL type {mysql_type!r}")


def sqlite_statements(table: Table) -> list[str]:
    """Return the SQLite DDL of one table: CREATE TABLE, then one CREATE INDEX per index.

    SQLite index names are global to the database, not per table, so each
    is prefixed with its table name (``IMUser_idx_name``).
    """
    table_name = check_identifier(table.name)
    lines = [f'  "{table.columns[0].name}" INTEGER PRIMARY KEY AUTOINCREMENT']
    for column in table.columns[1:]:
        parts = [f'"{check_identifier(column.name)}"', _sqlite_type(column.mysql_type)]
        if column.not_null:
            parts.append("NOT NULL")
        if column.default is not None:
            parts.append("DEFAULT " + _sql_literal(column.default))
        lines.append("  " + " ".join(parts))
    body = ",\n".join(lines)
    statements = [f'CREATE TABLE IF NOT EXISTS "{table_name}" (\n{body}\n)']
    for index in table.indexes:
        kind = "UNIQUE INDEX" if index.unique else "INDEX"
        columns = ", ".join(
            f'"{check_identifier(_PREFIX_LENGTH.sub("", column))}"' for column in index.columns
        )
        statements.append(
            f'CREATE {kind} IF NOT EXISTS "{table_name}_{check_identifier(index.name)}" '
            f'ON "{table_name}" ({columns})'
        )
    return statements


def schema_statements(dialect: str) -> list[str]:
    """Return every DDL statement of the schema for ``"mysql"`` or ``"sqlite"``."""
    build = {"mysql": mysql_statements, "sqlite": sqlite_statements}[dialect]
    return [statement for table in TABLES for statement in build(table)]


def _execute_all(cursor: Cursor, statements: list[str]) -> None:
    for statement in statements:
        cursor.execute(statement)


async def init_db(database: Database) -> None:
    """Create every missing table and index; leave existing ones untouched.

    Safe to run repeatedly: a second run changes nothing. Inserts no rows.
    """
    statements = schema_statements(database.dialect)
    await database.run("init_db", _execute_all, statements)
    logger.info("schema checked on %s (%d tables)", database.name, len(TABLES))


def _describe_mysql(cursor: Cursor) -> dict[str, Any]:
    cursor.execute(
        "SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, EXTRA"
        " FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()"
        " ORDER BY TABLE_NAME, ORDINAL_POSITION"
    )
    tables: dict[str, Any] = {}
    for table, column, column_type, nullable, default, extra in cursor.fetchall():
        entry = tables.setdefault(table, {"columns": [], "indexes": {}})
        entry["columns"].append((column, column_type, nullable, default, extra))
    cursor.execute(
        "SELECT TABLE_NAME, INDEX_NAME, NON_UNIQUE, COLUMN_NAME, SUB_PART"
        " FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE()"
        " ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX"
    )
    for table, index, non_unique, column, sub_part in cursor.fetchall():
        indexes = tables[table]["indexes"]
        unique, columns = indexes.get(index, (not int(non_unique), ()))
        indexes[index] = (unique, columns + ((column, sub_part),))
    return tables


def _describe_sqlite(cursor: Cursor) -> dict[str, Any]:
    cursor.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%%' ORDER BY name"
    )
    tables: dict[str, Any] = {}
    for (table,) in cursor.fetchall():
        # Table and index names come from the database itself; PRAGMA
        # takes no parameters, so they are checked and formatted in.
        cursor.execute(f'PRAGMA table_info("{check_identifier(table)}")')
        columns = [(row[1], row[2], row[3], row[4], row[5]) for row in cursor.fetchall()]
        cursor.execute(f'PRAGMA index_list("{table}")')
        indexes = {}
        for row in cursor.fetchall():
            index_name, unique = row[1], bool(row[2])
            cursor.execute(f'PRAGMA index_info("{check_identifier(index_name)}")')
            indexes[index_name] = (unique, tuple(info[2] for info in cursor.fetchall()))
        tables[table] = {"columns": columns, "indexes": indexes}
    return tables


async def describe_schema(database: Database) -> dict[str, Any]:
    """Return the tables of ``database`` with their columns and indexes.

    The result maps table name to ``{"columns": [...], "indexes": {name:
    (unique, columns)}}``. It is meant for comparisons and diagnostics; the
    exact tuples differ between dialects.
    """
    describe = _describe_mysql if database.dialect == "mysql" else _describe_sqlite
    return await database.run("describe_schema", describe)
