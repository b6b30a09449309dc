"""The ``teamtalk`` command: administration of the database, and the server roles.

Administration commands work on the embedded SQLite database of a data
directory (``--data-dir``, the default) or on the database named by a
db_proxy_server conf file (``-c dbproxyserver.conf``)::

    teamtalk init-db
    teamtalk depart add Engineering
    teamtalk user add alice --depart 1
    teamtalk user list
    teamtalk group add Engineering --creator alice --members bob,carol
    teamtalk group members Engineering --add dave --remove 3

Each subcommand stores a ``handler(args) -> int`` in its parser defaults;
:func:`main` calls it and returns its exit status.
"""

from __future__ import annotations

import argparse
import difflib
import getpass
import logging
import os
import signal
import sys
import time
import unicodedata
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.storage import (
    MASTER,
    DatabaseEndpoint,
    StorageUnavailable,
    open_embedded_database,
)
from teamtalk.storage import departs, groups, users
from teamtalk.storage.cache import CacheSet, RedisCache
from teamtalk.storage.database import Database, open_mysql, open_sqlite
from teamtalk.storage.schema import TABLES, init_db

logger = logging.getLogger(__name__)

PROG = "teamtalk"
DATA_DIR_ENV = "TEAMTALK_DATA_DIR"
#: Connections the administration commands open on a MySQL database.
ADMIN_POOL_SIZE = 1
#: Exit status when stdout is a pipe whose reader has gone (``teamtalk user list | head -1``):
#: 128 + SIGPIPE, what shells report for cat or grep stopped by the same closed pipe, so
#: scripts with ``set -o pipefail`` can treat both alike. The example in "Note on SIGPIPE"
#: of Python's signal module docs exits with 1, but 1 already means a failed command here.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


class CommandError(Exception):
    """A command cannot run. The message gives the reason and what to do next."""


def default_data_dir() -> Path:
    """Return $TEAMTALK_DATA_DIR, else ``~/.local/share/teamtalk``."""
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".local" / "share" / "teamtalk"


# ---------------------------------------------------------------------------
# Which database a command works on


@dataclass(frozen=True)
class DatabaseTarget:
    """The database an administration command opens: a SQLite file or a MySQL instance."""

    sqlite_path: Path | None = None
    #: True when ``sqlite_path`` is ``teamtalk.db`` of a data directory.
    data_dir: bool = False
    mysql: DatabaseEndpoint | None = None


def _storage_from_conf(path: str) -> DatabaseTarget:
    """Return the database that db_proxy_server would use with the conf file ``path``."""
    from teamtalk.config import ConfigError, load_config

    try:
        config = load_config("db_proxy_server", path)
    except ConfigError as exc:
        raise CommandError(f"invalid conf file {path}:\n{exc}") from exc

    if config.db_engine == "sqlite":
        return DatabaseTarget(sqlite_path=Path(config.sqlite_file))
    master = config.db_instance(MASTER)
    endpoint = DatabaseEndpoint(
        master.host, master.port, master.dbname, master.username, master.password, ADMIN_POOL_SIZE
    )
    return DatabaseTarget(mysql=endpoint)


def _endpoint_from_url(url: str) -> DatabaseEndpoint:
    """Parse ``mysql://user[:password]@host[:port]/dbname``."""
    parts = urllib.parse.urlsplit(url)
    dbname = parts.path.lstrip("/")
    if parts.scheme != "mysql" or not parts.hostname or not dbname:
        raise CommandError(f"invalid MySQL URL {url!r}: expected mysql://user:password@host:port/dbname")
    return DatabaseEndpoint(
        parts.hostname,
        parts.port or 3306,
        urllib.parse.unquote(dbname),
        urllib.parse.unquote(parts.username or "root"),
        urllib.parse.unquote(parts.password or ""),
        ADMIN_POOL_SIZE,
    )


def _target_from_args(args: argparse.Namespace) -> DatabaseTarget:
    if getattr(args, "config", None):
        return _storage_from_conf(args.config)
    if getattr(args, "mysql_url", None):
        return DatabaseTarget(mysql=_endpoint_from_url(args.mysql_url))
    data_dir = getattr(args, "data_dir", None)
    directory = Path(data_dir).expanduser() if data_dir else default_data_dir()
    return DatabaseTarget(sqlite_path=directory, data_dir=True)


async def _open_database(target: DatabaseTarget, create_database: bool = False) -> Database:
    if target.mysql is not None:
        host, port, dbname, user, password, pool_size = target.mysql
        return await open_mysql(MASTER, host, port, user, password, dbname, pool_size,
                                create_database=create_database)
    assert target.sqlite_path is not None
    if target.data_dir:
        return await open_embedded_database(target.sqlite_path)
    database = await open_sqlite(MASTER, str(target.sqlite_path))
    try:
        await init_db(database)
    except BaseException:
        await database.aclose()
        raise
    return database


def _run_with_database(command: Callable[[Database, argparse.Namespace], Awaitable[None]],
                       create_database: bool = False) -> Callable:
    """Wrap an async command into a handler that opens and closes its database."""

    def handler(args: argparse.Namespace) -> int:
        target = _target_from_args(args)

        async def run() -> None:
            database = await _open_database(target, create_database)
            try:
                await command(database, args)
            finally:
                await database.aclose()

        trio.run(run)
        return 0

    return handler


# ---------------------------------------------------------------------------
# Output


def _display_width(text: str) -> int:
    """Return the terminal columns ``text`` takes (CJK characters take two)."""
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print rows as left-aligned columns under a header line."""
    cells = [[str(value) for value in row] for row in [headers, *rows]]
    widths = [max(_display_width(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        padded = [value + " " * (width - _display_width(value)) for value, width in zip(row, widths)]
        print("  ".join(padded).rstrip())


def _status_text(status: int) -> str:
    if status == users.STATUS_ACTIVE:
        return "active"
    if status == users.STATUS_DISABLED:
        return "disabled"
    return f"status {status}"


def _read_password(args: argparse.Namespace) -> str:
    if args.password is not None:
        if not args.password:
            raise CommandError("the password must not be empty")
        return args.password
    try:
        first = getpass.getpass(f"Password for {args.name}: ")
        second = getpass.getpass("Repeat the password: ")
    except EOFError:
        raise CommandError("no password given: pass --password or run the command in a terminal") from None
    if not first:
        raise CommandError("the password must not be empty")
    if first != second:
        raise CommandError("the two passwords differ; run the command again")
    return first


# ---------------------------------------------------------------------------
# Commands


async def _init_db(database: Database, args: argparse.Namespace) -> None:
    # The database was opened with init_db for SQLite; running it again is
    # harmless and covers MySQL.
    await init_db(database)
    print(f"{len(TABLES)} tables ready in {database.description}")


async def _user_add(database: Database, args: argparse.Namespace) -> None:
    if args.depart and await departs.get_depart(database, args.depart) is None:
        raise CommandError(f"no department with id {args.depart}; see `{PROG} depart list`")
    password = _read_password(args)
    user_id = await users.add_user(
        database,
        args.name,
        password,
        nick=args.nick,
        real_name=args.real_name,
        depart_id=args.depart,
        email=args.email,
        phone=args.phone,
        sex=args.sex,
        domain=args.domain,
    )
    print(f"added user {user_id}: {args.name}")


async def _user_list(database: Database, args: argparse.Namespace) -> None:
    rows = await users.list_users(database)
    print_table(
        ("ID", "NAME", "NICK", "DEPART", "STATUS", "EMAIL", "PHONE"),
        [(u.id, u.name, u.nick, u.depart_id, _status_text(u.status), u.email, u.phone) for u in rows],
    )


async def _user_passwd(database: Database, args: argparse.Namespace) -> None:
    if await users.get_user_by_name(database, args.name) is None:
        raise CommandError(f"no user named {args.name!r}; see `{PROG} user list`")
    password = _read_password(args)
    await users.set_password(database, args.name, password)
    print(f"password of {args.name} changed")


async def _user_disable(database: Database, args: argparse.Namespace) -> None:
    await users.set_user_status(database, args.name, users.STATUS_DISABLED)
    print(f"user {args.name} disabled: cannot log in")


async def _user_enable(database: Database, args: argparse.Namespace) -> None:
    await users.set_user_status(database, args.name, users.STATUS_ACTIVE)
    print(f"user {args.name} enabled: can log in")


async def _depart_add(database: Database, args: argparse.Namespace) -> None:
    depart_id = await departs.add_depart(database, args.name, args.parent, args.priority)
    print(f"added department {depart_id}: {args.name}")


async def _depart_list(database: Database, args: argparse.Namespace) -> None:
    rows = await departs.list_departs(database)
    print_table(
        ("ID", "NAME", "PARENT", "PRIORITY", "STATUS"),
        [(d.id, d.name, d.parent_id, d.priority, "ok" if d.status == 0 else "deleted") for d in rows],
    )


# ---------------------------------------------------------------------------
# Group commands
#
# Groups are changed in the tables, and every change bumps IMGroup.version.
# A running db_proxy_server notices the new version and reloads the members,
# so these commands need no server. With a conf file whose caches are Redis
# they also update the group_member_<groupId> hashes and the unread counters
# there. An embedded cache file is left alone, because a running server
# keeps its content in memory and would overwrite it. The server rewrites
# the hashes itself on its next reload of the group.


def _group_caches(args: argparse.Namespace) -> CacheSet | None:
    """Return the Redis caches of the conf file given with ``-c``, or None for other storage."""
    if not getattr(args, "config", None):
        return None
    from teamtalk.config import load_config

    config = load_config("db_proxy_server", args.config)
    if config.cache_engine != "redis":
        return None
    caches = {}
    for name in ("unread", "group_member"):
        instance = config.cache_instance(name)
        caches[name] = RedisCache(instance.host, instance.port, instance.db, instance.password or None,
                                  ADMIN_POOL_SIZE)
    return CacheSet(caches)


def _run_with_groups(command: Callable[[Database, CacheSet | None, argparse.Namespace], Awaitable[None]]) -> Callable:
    """Wrap a group command into a handler that opens the database and the Redis caches, if any."""

    def handler(args: argparse.Namespace) -> int:
        target = _target_from_args(args)
        caches = _group_caches(args)

        async def run() -> None:
            database = await _open_database(target)
            try:
                if caches is not None:
                    await caches.ping()
                await command(database, caches, args)
            finally:
                try:
                    if caches is not None:
                        await caches.aclose()
                finally:
                    await database.aclose()

        trio.run(run)
        return 0

    return handler


async def _resolve_users(database: Database, text: str) -> list[users.UserRow]:
    """Return the users named in a comma-separated list of names or ids, in list order."""
    found: list[users.UserRow] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        user = None
        if item.isdigit():
            matches = await users.get_users(database, [int(item)])
            user = matches[0] if matches else None
        if user is None:
            user = await users.get_user_by_name(database, item)
        if user is None:
            raise CommandError(f"no user named {item!r} and no user with that id; see `{PROG} user list`")
        if all(user.id != seen.id for seen in found):
            found.append(user)
    return found


async def _resolve_group(database: Database, text: str) -> groups.GroupSnapshot:
    """Return the group with id ``text``, else the only usable group called ``text``."""
    group_ids = [int(text)] if text.isdigit() else []
    snapshots = await groups.get_snapshots(database, group_ids)
    if not snapshots:
        group_ids = await groups.find_groups_by_name(database, text)
        if len(group_ids) > 1:
            raise CommandError(f"{len(group_ids)} groups are called {text!r} (ids "
                               f"{', '.join(map(str, group_ids))}); name the group by its id")
        snapshots = await groups.get_snapshots(database, group_ids)
    if not snapshots:
        raise CommandError(f"no group {text!r}; see `{PROG} group list`")
    snapshot = next(iter(snapshots.values()))
    if not snapshot.usable:
        raise CommandError(f"group {snapshot.group.id} ({snapshot.group.name}) is deleted")
    return snapshot


def _names(rows: Sequence[users.UserRow], ids: Sequence[int]) -> str:
    by_id = {row.id: row.name for row in rows}
    return ", ".join(by_id.get(user_id, str(user_id)) for user_id in ids)


async def _group_add(database: Database, caches: CacheSet | None, args: argparse.Namespace) -> None:
    creators = await _resolve_users(database, args.creator)
    if len(creators) != 1:
        raise CommandError("--creator must name exactly one user")
    creator = creators[0]
    members = await _resolve_users(database, args.members)
    if await groups.find_groups_by_name(database, args.name):
        raise users.AlreadyExists(f"a group called {args.name!r} already exists; see `{PROG} group list`")
    member_ids = [creator.id, *(member.id for member in members)]
    snapshot = await groups.create_group(database, args.name, creator.id, member_ids, avatar=args.avatar,
                                         group_type=BD.GROUP_TYPE_NORMAL)
    if caches is not None:
        await groups.publish_new_group(caches, snapshot)
    print(f"added group {snapshot.group.id}: {args.name} ({len(snapshot.members)} members)")


async def _group_list(database: Database, caches: CacheSet | None, args: argparse.Namespace) -> None:
    rows = await groups.list_groups(database)
    type_names = {BD.GROUP_TYPE_NORMAL: "normal", BD.GROUP_TYPE_TMP: "temporary"}
    print_table(
        ("ID", "NAME", "TYPE", "CREATOR", "MEMBERS", "VERSION", "STATUS"),
        [(g.id, g.name, type_names.get(g.group_type, f"type {g.group_type}"), g.creator, g.user_cnt, g.version,
          "ok" if g.status == groups.GROUP_STATUS_OK else "deleted") for g in rows],
    )


async def _group_members(database: Database, caches: CacheSet | None, args: argparse.Namespace) -> None:
    snapshot = await _resolve_group(database, args.group)
    group_id = snapshot.group.id
    for option, change_type, verb in ((args.add, BD.GROUP_MODIFY_TYPE_ADD, "added"),
                                      (args.remove, BD.GROUP_MODIFY_TYPE_DEL, "removed")):
        if option is None:
            continue
        named = await _resolve_users(database, option)
        if not named:
            raise CommandError(f"no user given to be {verb}")
        # Actor 0 is the server itself: no permission check, as for http_msg_server.
        change = await groups.change_members(database, group_id, 0, change_type, [user.id for user in named])
        if change.outcome == groups.CHANGE_NO_GROUP:
            raise CommandError(f"group {group_id} was deleted meanwhile")
        changed = change.changed if change.outcome == groups.CHANGE_OK else []
        unchanged = [user.id for user in named if user.id not in changed]
        if changed:
            print(f"{verb}: {_names(named, changed)}")
            if caches is not None:
                await groups.publish_member_change(caches, change)
        if unchanged:
            state = "already members" if change_type == BD.GROUP_MODIFY_TYPE_ADD else "not members"
            print(f"{state}, unchanged: {_names(named, unchanged)}")
        if change.snapshot is not None:
            snapshot = change.snapshot

    snapshot = (await groups.get_snapshots(database, [group_id]))[group_id]
    rows = await users.get_users(database, snapshot.members)
    print(f"group {group_id}: {snapshot.group.name}, version {snapshot.group.version}, "
          f"{len(snapshot.members)} members")
    print_table(
        ("ID", "NAME", "NICK", "JOINED"),
        [(u.id, u.name, u.nick, time.strftime("%Y-%m-%d %H:%M", time.localtime(snapshot.members[u.id])))
         for u in rows],
    )


# ---------------------------------------------------------------------------
# Parser


def _storage_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("storage")
    exclusive = group.add_mutually_exclusive_group()
    exclusive.add_argument(
        "--data-dir", metavar="DIR",
        help=f"data directory of the embedded SQLite database (default: ${DATA_DIR_ENV},"
             " else ~/.local/share/teamtalk); created if missing",
    )
    exclusive.add_argument(
        "-c", "--config", metavar="FILE",
        help="dbproxyserver.conf: use its teamtalk_master MySQL instance (or its SqliteFile)",
    )
    # For tests and scripts: mysql://user:password@host:port/dbname.
    exclusive.add_argument("--mysql-url", help=argparse.SUPPRESS)
    return parent


def _int_at_least_zero(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _add_admin_commands(subparsers: argparse._SubParsersAction) -> None:
    storage = _storage_options()

    init = subparsers.add_parser(
        "init-db", parents=[storage], help="create the missing tables (safe to repeat)",
        description="Create every missing TeamTalk table and index; existing tables are left untouched.",
    )
    init.set_defaults(handler=_run_with_database(_init_db, create_database=True))

    user = subparsers.add_parser("user", help="add, list and change users")
    user_commands = user.add_subparsers(dest="user_command", metavar="COMMAND", required=True)

    password_help = "the plain password (visible to other local users in the process list);" \
                    " prompted for when omitted"
    add = user_commands.add_parser("add", parents=[storage], help="add a user who can log in")
    add.add_argument("name", help="login name (at most 32 characters)")
    add.add_argument("--password", help=password_help)
    add.add_argument("--nick", default="", help="nick name")
    add.add_argument("--real-name", default="",
                     help="must equal NAME: clients show the login name as the real name")
    add.add_argument("--depart", type=_int_at_least_zero, default=0, metavar="ID", help="department id")
    add.add_argument("--email", default="")
    add.add_argument("--phone", default="", help="phone number (at most 11 characters)")
    add.add_argument("--sex", type=int, choices=(0, 1, 2), default=0, help="1 male, 2 female, 0 unknown")
    add.add_argument("--domain", default="", help="pinyin of the name, used by clients to search")
    add.set_defaults(handler=_run_with_database(_user_add))

    listing = user_commands.add_parser("list", parents=[storage], help="list every user")
    listing.set_defaults(handler=_run_with_database(_user_list))

    passwd = user_commands.add_parser("passwd", parents=[storage], help="set a user's password")
    passwd.add_argument("name")
    passwd.add_argument("--password", help=password_help)
    passwd.set_defaults(handler=_run_with_database(_user_passwd))

    disable = user_commands.add_parser("disable", parents=[storage], help="stop a user from logging in")
    disable.add_argument("name")
    disable.set_defaults(handler=_run_with_database(_user_disable))

    enable = user_commands.add_parser("enable", parents=[storage], help="let a disabled user log in again")
    enable.add_argument("name")
    enable.set_defaults(handler=_run_with_database(_user_enable))

    depart = subparsers.add_parser("depart", help="add and list departments")
    depart_commands = depart.add_subparsers(dest="depart_command", metavar="COMMAND", required=True)

    depart_add = depart_commands.add_parser("add", parents=[storage], help="add a department")
    depart_add.add_argument("name", help="department name (at most 64 characters)")
    depart_add.add_argument("--parent", type=_int_at_least_zero, default=0, metavar="ID",
                            help="id of the parent department (default: 0, top level)")
    depart_add.add_argument("--priority", type=_int_at_least_zero, default=0, metavar="N",
                            help="display order in clients")
    depart_add.set_defaults(handler=_run_with_database(_depart_add))

    depart_list = depart_commands.add_parser("list", parents=[storage], help="list every department")
    depart_list.set_defaults(handler=_run_with_database(_depart_list))

    _add_group_commands(subparsers, storage)


def _add_group_commands(subparsers: argparse._SubParsersAction, storage: argparse.ArgumentParser) -> None:
    group = subparsers.add_parser("group", help="add, list and change groups")
    group_commands = group.add_subparsers(dest="group_command", metavar="COMMAND", required=True)
    users_help = "comma-separated user names or ids"

    group_add = group_commands.add_parser(
        "add", parents=[storage], help="add a normal (fixed) group",
        description="Add a normal group. The creator is a member too and may change the members from a client.")
    group_add.add_argument("name", help="group name (at most 256 characters)")
    group_add.add_argument("--creator", required=True, metavar="USER", help="user name or id of the creator")
    group_add.add_argument("--members", required=True, metavar="USERS", help=users_help)
    group_add.add_argument("--avatar", default="", metavar="URL", help="URL of the group's avatar picture")
    group_add.set_defaults(handler=_run_with_groups(_group_add))

    group_list = group_commands.add_parser("list", parents=[storage], help="list every group")
    group_list.set_defaults(handler=_run_with_groups(_group_list))

    group_members = group_commands.add_parser(
        "members", parents=[storage], help="list a group's members, adding or removing some first",
        description="Print a group's members. --add, then --remove, change them first; each change "
                    "bumps the group version, so clients fetch the group again.")
    group_members.add_argument("group", help="group id, or the name of a group")
    group_members.add_argument("--add", metavar="USERS", help=users_help)
    group_members.add_argument("--remove", metavar="USERS", help=users_help)
    group_members.set_defaults(handler=_run_with_groups(_group_members))


#: CLI command name -> role name of teamtalk.config.
ROLE_COMMANDS = {
    "login-server": "login_server",
    "msg-server": "msg_server",
    "route-server": "route_server",
    "db-proxy-server": "db_proxy_server",
}


def add_role_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the server roles, ``serve``, ``sample-config`` and ``chat``."""
    from teamtalk import config as tt_config

    for command, role in ROLE_COMMANDS.items():
        parser = subparsers.add_parser(
            command, help=f"run {role} from an original-style conf file",
            description=f"Run {role}. Keys and defaults: {PROG} sample-config {command}.")
        parser.add_argument("-c", "--config", metavar="FILE",
                            help=f"conf file (e.g. {tt_config.conf_file_name(role)}); "
                                 "without it, loopback defaults are used")
        tt_config.add_override_arguments(parser)
        parser.set_defaults(handler=_role_handler(role))

    serve = subparsers.add_parser(
        "serve", help="run login_server, msg_server, route_server and db_proxy_server in one process",
        description="Run the four core roles in one process on embedded storage (SQLite and an "
                    "in-process cache) kept in the data directory.")
    serve.add_argument("--data-dir", type=Path, default=None,
                       help=f"where the database and cache files live (default: ${DATA_DIR_ENV} "
                            "or ~/.local/share/teamtalk); created on first run")
    serve.add_argument("--listen-ip", default="127.0.0.1",
                       help="address every role listens on (default 127.0.0.1; 0.0.0.0 for all)")
    serve.add_argument("--public-ip", default=None,
                       help="address that login_server hands to clients for msg_server "
                            "(default: the listen IP, or 127.0.0.1 when listening on 0.0.0.0)")
    serve.add_argument("--http-port", type=_int_at_least_zero, default=8080,
                       help="login_server HTTP port that clients ask for a msg_server (default 8080)")
    serve.add_argument("--msg-port", type=_int_at_least_zero, default=8000,
                       help="msg_server client port (default 8000)")
    serve.add_argument("--login-port", type=_int_at_least_zero, default=8008,
                       help="login_server TCP port for clients (default 8008)")
    serve.add_argument("--login-msg-port", type=_int_at_least_zero, default=8100,
                       help="login_server port where msg_servers register (default 8100)")
    serve.add_argument("--route-port", type=_int_at_least_zero, default=8200,
                       help="route_server port (default 8200)")
    serve.add_argument("--db-proxy-port", type=_int_at_least_zero, default=10600,
                       help="db_proxy_server port (default 10600)")
    serve.add_argument("--max-msg-per-second", type=_int_at_least_zero, default=20,
                       help="messages one client connection may send per second; more are dropped "
                            "(default 20, as the original)")
    serve.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    serve.set_defaults(handler=_serve)

    sample = subparsers.add_parser("sample-config", help="print a sample conf file of a role",
                                   description="Print a conf file with every key of a role and its default.")
    sample.add_argument("role", type=_role_name, metavar="ROLE",
                        help=f"one of {', '.join(_hyphenated(role) for role in tt_config.ROLES)}; "
                             "the conf spelling with underscores (route_server) works too")
    sample.set_defaults(handler=lambda args: _print_sample(args.role))

    try:
        from teamtalk.chat import add_chat_command
    except ImportError:  # the terminal client is optional in stripped-down installs
        return
    add_chat_command(subparsers)


def _hyphenated(role: str) -> str:
    return role.replace("_", "-")


def _role_name(text: str) -> str:
    """Return the role name of teamtalk.config that ``text`` spells with hyphens or underscores."""
    from teamtalk import config as tt_config

    role = text.replace("-", "_")
    if role not in tt_config.ROLES:
        choices = ", ".join(_hyphenated(name) for name in tt_config.ROLES)
        raise argparse.ArgumentTypeError(f"unknown role {text!r}; choose from {choices}")
    return role


def _role_handler(role: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        from teamtalk import config as tt_config
        from teamtalk.roles import run_role

        try:
            overrides = tt_config.overrides_from_args(args)
        except tt_config.ConfigError as exc:
            # The same form and status as run_role's errors for the conf file and the keys.
            print(f"{PROG} {role}: {exc}", file=sys.stderr)
            return 2
        return run_role(role, args.config, overrides)

    return handler


def _serve(args: argparse.Namespace) -> int:
    from teamtalk.cluster import ClusterSettings
    from teamtalk.msg_server.server import MsgServerSettings
    from teamtalk.roles import run_serve

    data_dir = args.data_dir or default_data_dir()
    public_ip = args.public_ip or ("127.0.0.1" if args.listen_ip in ("0.0.0.0", "::") else args.listen_ip)
    settings = ClusterSettings(host=args.listen_ip, public_ip=public_ip,
                               login_http_port=args.http_port, msg_server_port=args.msg_port,
                               login_client_port=args.login_port, login_msg_server_port=args.login_msg_port,
                               route_port=args.route_port, db_proxy_port=args.db_proxy_port,
                               msg=MsgServerSettings(max_msg_per_second=args.max_msg_per_second))
    return run_serve(str(data_dir), settings, log_level=args.log_level)


def _print_sample(role: str) -> int:
    from teamtalk import config as tt_config

    sys.stdout.write(tt_config.default_config_text(role))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="TeamTalk-compatible IM server and its administration.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_admin_commands(subparsers)
    add_role_commands(subparsers)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv`` like ``parser.parse_args``, but report unknown arguments with the subcommand's usage.

    argparse hands the arguments that a subcommand does not know back to
    the top-level parser, whose error shows the top-level usage. Here the
    innermost chosen subcommand reports them, with the closest option name
    when one is near. Raises SystemExit after printing the error, as
    argparse does.
    """
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        command_parser = _chosen_parser(parser, args)
        command_parser.error(_unknown_arguments_message(command_parser, unknown))
    return args


def _chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """Return the parser of the innermost subcommand that ``args`` chose."""
    while True:
        subcommands = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
        if not subcommands:
            return parser
        chosen = getattr(args, subcommands[0].dest, None)
        if chosen not in subcommands[0].choices:
            return parser
        parser = subcommands[0].choices[chosen]


def _unknown_arguments_message(parser: argparse.ArgumentParser, unknown: Sequence[str]) -> str:
    options = [option for action in parser._actions if action.help != argparse.SUPPRESS
               for option in action.option_strings]
    suggestions = []
    for argument in unknown:
        if argument.startswith("-"):
            suggestions += difflib.get_close_matches(argument.partition("=")[0], options, n=1)
    message = f"unrecognized arguments: {' '.join(unknown)}"
    if suggestions:
        message += f" (did you mean {' or '.join(suggestions)}?)"
    return message


def _discard_stdout() -> int:
    """Point stdout at /dev/null after its reader went away, and return EXIT_BROKEN_PIPE.

    Python flushes sys.stdout once more at exit, which would raise
    BrokenPipeError again on the closed pipe.
    """
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError):  # no real file, such as pytest's capture
        return EXIT_BROKEN_PIPE
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
    return EXIT_BROKEN_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``teamtalk`` command and return its exit status.

    0 on success, 1 when the command fails (the reason is printed to
    stderr), 2 for invalid arguments, 130 after Ctrl-C, and 141
    (EXIT_BROKEN_PIPE) without a message when stdout is a pipe that its
    reader closed.
    """
    try:
        status = _run(argv)
        # A closed pipe shows up at this flush at the latest, not at interpreter exit.
        sys.stdout.flush()
    except BrokenPipeError:
        return _discard_stdout()
    except BaseExceptionGroup as group:
        # The chat prints from tasks of Trio nurseries, which wrap the error.
        if group.split(BrokenPipeError)[1] is not None:
            raise
        return _discard_stdout()
    return status


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parse_args(parser, argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1

    try:
        return args.handler(args)
    except (CommandError, StorageUnavailable, users.AlreadyExists, users.NotFound, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
