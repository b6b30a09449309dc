"""Conf files of the TeamTalk roles: reading, validation and typed settings.

Each role reads one ``key=value`` file whose keys are those of the C++
servers (``msgserver.conf``, ``dbproxyserver.conf``...). The syntax follows
their reader: ``#`` starts a comment anywhere on a line, whitespace around
key and value is trimmed, and the first ``=`` splits the key from the value,
so a value cannot contain ``#``. Unlike that reader, this one rejects lines
without ``=``, duplicate keys, unknown keys and invalid values, and each
error names the file, the line, the key and the value. ``--set KEY=VALUE``
on the command line overrides any key of the file.

Settings the C++ servers lack (timeouts, limits, storage engines) are extra
keys with defaults. Every key has a default except the per-instance keys of
``DBInstances`` and ``CacheInstances``, so ``load_config(role, None)`` gives
a working setup on 127.0.0.1 with the default ports.

``load_config`` returns one frozen dataclass per role (``MsgServerConfig``,
``DbProxyConfig``...) whose fields have snake_case names. The schemas below
map each original key to its field, its value type and a one-line help that
``default_config_text`` renders as a sample conf file.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import ipaddress
import logging
import math
import os
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

logger = logging.getLogger(__name__)

DEFAULTS_SOURCE = "<defaults>"
COMMAND_LINE_SOURCE = "command line"

ROLES = (
    "login_server",
    "msg_server",
    "route_server",
    "db_proxy_server",
    "file_server",
    "msfs",
    "http_msg_server",
    "push_server",
)

# Cache pools that db_proxy_server needs when CacheEngine is redis, named as
# in the C++ server. Its fifth pool, "sync", is accepted but not required.
REQUIRED_CACHE_POOLS = ("unread", "group_set", "token", "group_member")
MASTER_DB_INSTANCE = "teamtalk_master"


class ConfigError(Exception):
    """Invalid configuration: unreadable file, bad syntax, unknown key or invalid value.

    ``problems`` contains one message per problem found, and ``str()`` joins
    them with newlines. Each message starts with the file (and line) or
    "command line", then names the key and the value involved; values of
    secret keys (passwords, aesKey) are never included.
    """

    def __init__(self, problems: str | Iterable[str]) -> None:
        if isinstance(problems, str):
            problems = (problems,)
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


# ---------------------------------------------------------------------------
# Typed settings, one dataclass per role

class ServerAddress(NamedTuple):
    """Host and port of a server that a role connects to."""

    host: str
    port: int


@dataclass(frozen=True, kw_only=True)
class RoleConfig:
    """Settings every role has; ``source`` is the conf file path or "<defaults>"."""

    source: str = DEFAULTS_SOURCE
    max_pdu_length: int = 1 << 20
    send_queue_length: int = 1024
    write_timeout: float = 30.0
    server_heartbeat_interval: float = 5.0
    server_timeout: float = 30.0
    shutdown_grace_period: float = 5.0
    log_level: str = "INFO"


@dataclass(frozen=True, kw_only=True)
class LoginServerConfig(RoleConfig):
    """Settings of login_server (``loginserver.conf``)."""

    client_listen_ips: tuple[str, ...] = ("127.0.0.1",)
    client_port: int = 8008
    http_listen_ips: tuple[str, ...] = ("127.0.0.1",)
    http_port: int = 8080
    msg_server_listen_ips: tuple[str, ...] = ("127.0.0.1",)
    msg_server_port: int = 8100
    msfs_url: str = "http://127.0.0.1:8700/"
    discovery_url: str = ""


@dataclass(frozen=True, kw_only=True)
class MsgServerConfig(RoleConfig):
    """Settings of msg_server (``msgserver.conf``)."""

    listen_ips: tuple[str, ...] = ("127.0.0.1",)
    listen_port: int = 8000
    ip_addr1: str = "127.0.0.1"
    ip_addr2: str = "127.0.0.1"
    max_conn_cnt: int = 100000
    aes_key: str | None = field(default=None, repr=False)
    concurrent_db_conn_cnt: int = 2
    db_servers: tuple[ServerAddress, ...] = (ServerAddress("127.0.0.1", 10600),)
    login_servers: tuple[ServerAddress, ...] = (ServerAddress("127.0.0.1", 8100),)
    route_servers: tuple[ServerAddress, ...] = (ServerAddress("127.0.0.1", 8200),)
    push_servers: tuple[ServerAddress, ...] = (ServerAddress("127.0.0.1", 8500),)
    file_servers: tuple[ServerAddress, ...] = (ServerAddress("127.0.0.1", 8601),)
    login_timeout: float = 15.0
    pc_client_timeout: float = 120.0
    mobile_client_timeout: float = 300.0
    pending_ack_timeout: float = 15.0
    max_msg_per_second: int = 20


@dataclass(frozen=True, kw_only=True)
class RouteServerConfig(RoleConfig):
    """Settings of route_server (``routeserver.conf``)."""

    listen_ips: tuple[str, ...] = ("127.0.0.1",)
    listen_port: int = 8200


@dataclass(frozen=True, kw_only=True)
class DbInstanceConfig:
    """One MySQL instance listed in ``DBInstances``."""

    name: str
    host: str
    port: int
    dbname: str
    username: str
    password: str = field(default="", repr=False)
    max_conn_cnt: int


@dataclass(frozen=True, kw_only=True)
class CacheInstanceConfig:
    """One Redis pool listed in ``CacheInstances``; ``db`` is the Redis database number."""

    name: str
    host: str
    port: int
    db: int
    password: str = field(default="", repr=False)
    max_conn_cnt: int


@dataclass(frozen=True, kw_only=True)
class DbProxyConfig(RoleConfig):
    """Settings of db_proxy_server (``dbproxyserver.conf``).

    ``db_engine`` is "mysql" (instances in ``db_instances``) or "sqlite"
    (one file, ``sqlite_file``); ``cache_engine`` is "redis" (pools in
    ``cache_instances``) or "embedded" (in-process).
    """

    listen_ips: tuple[str, ...] = ("127.0.0.1",)
    listen_port: int = 10600
    msfs_site: str = "http://127.0.0.1:8700/"
    aes_key: str | None = field(default=None, repr=False)
    db_engine: str = "sqlite"
    sqlite_file: str = "teamtalk.db"
    db_pool_size: int = 8
    cache_engine: str = "embedded"
    db_instances: tuple[DbInstanceConfig, ...] = ()
    cache_instances: tuple[CacheInstanceConfig, ...] = ()

    def db_instance(self, name: str) -> DbInstanceConfig:
        """Return the MySQL instance called ``name``; raise KeyError if it is not listed."""
        for instance in self.db_instances:
            if instance.name == name:
                return instance
        raise KeyError(name)

    def cache_instance(self, name: str) -> CacheInstanceConfig:
        """Return the cache pool called ``name``; raise KeyError if it is not listed."""
        for instance in self.cache_instances:
            if instance.name == name:
                return instance
        raise KeyError(name)


@dataclass(frozen=True, kw_only=True)
class FileServerConfig(RoleConfig):
    """Settings of file_server (``fileserver.conf``)."""

    client_listen_ips: tuple[str, ...] = ("127.0.0.1",)
    client_listen_port: int = 8600
    msg_server_listen_ips: tuple[str, ...] = ("127.0.0.1",)
    msg_server_listen_port: int = 8601
    task_timeout: float = 60.0
    file_server_ips: tuple[str, ...] = ("127.0.0.1",)


@dataclass(frozen=True, kw_only=True)
class MsfsConfig(RoleConfig):
    """Settings of msfs (``msfs.conf``)."""

    listen_ips: tuple[str, ...] = ("127.0.0.1",)
    listen_port: int = 8700
    base_dir: str = "msfs_data"
    file_cnt: int = 0
    files_per_dir: int = 30000
    get_thread_count: int = 32
    post_thread_count: int = 1


@dataclass(frozen=True, kw_only=True)
class HttpMsgServerConfig(RoleConfig):
    """Settings of http_msg_server (``httpmsgserver.conf``)."""

    listen_ips: tuple[str, ...] = ("127.0.0.1",)
    listen_port: int = 8400
    concurrent_db_conn_cnt: int = 2
    db_servers: tuple[ServerAddress, ...] = (ServerAddress("127.0.0.1", 10600),)
    route_servers: tuple[ServerAddress, ...] = (ServerAddress("127.0.0.1", 8200),)


@dataclass(frozen=True, kw_only=True)
class PushServerConfig(RoleConfig):
    """Settings of push_server (``pushserver.conf``); empty paths disable APNs."""

    listen_ips: tuple[str, ...] = ("127.0.0.1",)
    listen_port: int = 8500
    cert_path: str = ""
    key_path: str = ""
    key_password: str = field(default="", repr=False)
    sandbox: bool = False


# ---------------------------------------------------------------------------
# Value types

@dataclass(frozen=True)
class ValueKind:
    """Value type of a key: its parser, its renderer and the wording of its errors."""

    expected: str  # ends the sentence "expected ..." of an error
    parse: Callable[[str], Any]  # raises ValueError, whose text adds detail
    render: Callable[[Any], str] = str  # the inverse of parse, for sample files
    secret: bool = False  # keep the value out of error messages


_INTEGER_RE = re.compile(r"-?[0-9]+")
_DECIMAL_RE = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_NAME_RE = re.compile(r"[A-Za-z0-9_]+")
_HOST_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _integer_kind(minimum: int, maximum: int, expected: str | None = None) -> ValueKind:
    def parse(text: str) -> int:
        if not _INTEGER_RE.fullmatch(text):
            raise ValueError
        number = int(text)
        if not minimum <= number <= maximum:
            raise ValueError
        return number

    return ValueKind(expected or f"an integer from {minimum} to {maximum}", parse)


def _parse_seconds(text: str) -> float:
    if not _DECIMAL_RE.fullmatch(text):
        raise ValueError
    seconds = float(text)
    if seconds <= 0 or math.isinf(seconds):
        raise ValueError
    return seconds


def _render_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else repr(seconds)


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError


def _split_items(text: str, separator: str) -> list[str]:
    items = [item.strip() for item in text.split(separator)]
    if any(not item for item in items):
        raise ValueError("empty item")
    return items


def _parse_ip(text: str) -> str:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ValueError from None
    return text


def _parse_host(text: str) -> str:
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    labels = text.split(".")
    # A name whose last label is all digits is a mistyped IPv4 address.
    if len(text) > 253 or labels[-1].isdigit():
        raise ValueError
    if not all(_HOST_LABEL_RE.fullmatch(label) for label in labels):
        raise ValueError
    return text


def _parse_ip_list(text: str) -> tuple[str, ...]:
    return tuple(_parse_ip(item) for item in _split_items(text, ";"))


def _parse_host_list(text: str) -> tuple[str, ...]:
    return tuple(_parse_host(item) for item in _split_items(text, ";"))


def _parse_name_list(text: str) -> tuple[str, ...]:
    names = _split_items(text, ",")
    for name in names:
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"invalid name {name!r}")
        if names.count(name) > 1:
            raise ValueError(f"{name!r} is listed twice")
    return tuple(names)


def _parse_url(text: str) -> str:
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError
    return text


def _parse_optional_url(text: str) -> str:
    return _parse_url(text) if text else text


def _parse_text(text: str) -> str:
    if not text:
        raise ValueError
    return text


def _parse_aes_key(text: str) -> str:
    if len(text.encode("utf-8")) != 32:
        raise ValueError
    return text


def _choice_kind(*choices: str) -> ValueKind:
    by_lower = {choice.lower(): choice for choice in choices}

    def parse(text: str) -> str:
        try:
            return by_lower[text.lower()]
        except KeyError:
            raise ValueError from None

    return ValueKind("one of " + ", ".join(choices), parse)


PORT = _integer_kind(1, 65535, "an integer port 1-65535")
LISTEN_PORT = _integer_kind(0, 65535, "an integer port 0-65535 (0 picks a free port)")
SECONDS = ValueKind("a number of seconds greater than 0", _parse_seconds, _render_seconds)
BOOL = ValueKind("0 or 1 (or false/true, no/yes, off/on)", _parse_bool, lambda value: "1" if value else "0")
IP_LIST = ValueKind("IP addresses separated by ';'", _parse_ip_list, ";".join)
HOST = ValueKind("an IP address or host name", _parse_host)
HOST_LIST = ValueKind("IP addresses or host names separated by ';'", _parse_host_list, ";".join)
NAME_LIST = ValueKind("names of letters, digits and '_' separated by ','", _parse_name_list, ",".join)
URL = ValueKind("an http:// or https:// URL", _parse_url)
OPTIONAL_URL = ValueKind("an http:// or https:// URL, or nothing", _parse_optional_url)
TEXT = ValueKind("a non-empty value", _parse_text)
OPTIONAL_TEXT = ValueKind("any text", str)
SECRET_TEXT = ValueKind("any text", str, secret=True)
AES_KEY = ValueKind("exactly 32 bytes (an AES-256 key)", _parse_aes_key, secret=True)
LOG_LEVEL = _choice_kind("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


# ---------------------------------------------------------------------------
# Schemas

@dataclass(frozen=True)
class KeySpec:
    """One key of a conf file, the dataclass field it sets, and its help line.

    ``extension`` marks keys the C++ servers do not read; sample files show
    them commented out with their default. ``ignored`` keys come from the
    C++ samples and are validated, then dropped. ``sample`` is the value a
    sample file shows when it differs from the field's default.
    """

    key: str
    field: str | None
    kind: ValueKind
    help: str
    extension: bool = False
    ignored: bool = False
    sample: str | None = None

    def __post_init__(self) -> None:
        if (self.field is None) != self.ignored:
            raise ValueError(f"{self.key}: a key has a field unless it is ignored")


@dataclass(frozen=True)
class ServerListSpec:
    """Numbered keys ``<ip_prefix><n>`` and ``<port_prefix><n>`` (n = 1, 2...) of servers to dial.

    ``help`` names the servers in the plural, e.g. "route_servers".
    """

    ip_prefix: str
    port_prefix: str
    field: str
    help: str


@dataclass(frozen=True)
class InstanceKeySpec:
    """The key ``<name>_<suffix>`` that each named instance of a group needs."""

    suffix: str
    field: str
    kind: ValueKind
    required: bool = True


@dataclass(frozen=True)
class InstanceGroupSpec:
    """A list key naming instances (``DBInstances``) and the keys each instance needs."""

    list_key: str
    field: str
    factory: type
    keys: tuple[InstanceKeySpec, ...]
    help: str
    sample: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()


@dataclass(frozen=True)
class RoleSchema:
    """Everything a role's conf file may contain."""

    role: str
    file_name: str
    config_class: type[RoleConfig]
    keys: tuple[KeySpec, ...]
    server_lists: tuple[ServerListSpec, ...] = ()
    instance_groups: tuple[InstanceGroupSpec, ...] = ()
    check: Callable[[_Loader], None] | None = None


_COMMON_KEYS = (
    KeySpec("MaxPduLength", "max_pdu_length", _integer_kind(16, 2**32 - 1),
            "Longest PDU accepted from a peer, in bytes; a longer one closes the connection.",
            extension=True),
    KeySpec("SendQueueLength", "send_queue_length", _integer_kind(1, 1 << 20),
            "Outgoing PDUs queued per connection; a peer that lets the queue fill is disconnected.",
            extension=True),
    KeySpec("WriteTimeout", "write_timeout", SECONDS,
            "A connection whose socket accepts no data for this long is closed, in seconds.",
            extension=True),
    KeySpec("ServerHeartbeatInterval", "server_heartbeat_interval", SECONDS,
            "Interval between heartbeats on links between servers, in seconds.",
            extension=True),
    KeySpec("ServerTimeout", "server_timeout", SECONDS,
            "A link between servers silent for this long is closed and dialled again, in seconds.",
            extension=True),
    KeySpec("ShutdownGracePeriod", "shutdown_grace_period", SECONDS,
            "On shutdown, time given to busy connections to finish, in seconds.",
            extension=True),
    KeySpec("LogLevel", "log_level", LOG_LEVEL,
            "Lowest level logged: DEBUG, INFO, WARNING, ERROR or CRITICAL.",
            extension=True),
)


def _listen_keys(port_key: str, peers: str) -> tuple[KeySpec, ...]:
    return (
        KeySpec("ListenIP", "listen_ips", IP_LIST,
                f"Addresses where {peers} connect; separate several with ';'."),
        KeySpec(port_key, "listen_port", LISTEN_PORT, f"Port where {peers} connect."),
    )


_DB_SERVERS = ServerListSpec("DBServerIP", "DBServerPort", "db_servers", "db_proxy_servers")
_ROUTE_SERVERS = ServerListSpec("RouteServerIP", "RouteServerPort", "route_servers", "route_servers")

_CONCURRENT_DB_CONN_CNT = KeySpec(
    "ConcurrentDBConnCnt", "concurrent_db_conn_cnt", _integer_kind(1, 64),
    "Connections opened to each db_proxy_server.")


def _check_common(loader: _Loader) -> None:
    interval = loader.values.get("server_heartbeat_interval", RoleConfig.server_heartbeat_interval)
    timeout = loader.values.get("server_timeout", RoleConfig.server_timeout)
    if timeout > interval:
        return
    # A link would time out between two heartbeats; blame the key that was set.
    if "ServerTimeout" in loader.entries:
        loader.invalid("ServerTimeout", f"expected more than ServerHeartbeatInterval ({interval:g} s)")
    else:
        loader.invalid("ServerHeartbeatInterval", f"expected less than ServerTimeout ({timeout:g} s)")


def _check_msg_server(loader: _Loader) -> None:
    # Like the C++ msg_server, a missing IpAddr2 falls back to IpAddr1.
    if "IpAddr2" not in loader.entries and "ip_addr1" in loader.values:
        loader.values["ip_addr2"] = loader.values["ip_addr1"]


def _check_db_proxy(loader: _Loader) -> None:
    values = loader.values

    # Without an explicit engine, listing instances selects the server engine.
    if "DBEngine" not in loader.entries:
        values["db_engine"] = "mysql" if "DBInstances" in loader.entries else "sqlite"
    if "CacheEngine" not in loader.entries:
        values["cache_engine"] = "redis" if "CacheInstances" in loader.entries else "embedded"

    if values["db_engine"] == "mysql":
        if "DBInstances" not in loader.entries:
            loader.missing("DBInstances", "needed when DBEngine is mysql")
        elif "db_instances" in values:
            names = [instance.name for instance in values["db_instances"]]
            if MASTER_DB_INSTANCE not in names:
                loader.invalid("DBInstances", f"expected a list that includes {MASTER_DB_INSTANCE}")

    if values["cache_engine"] == "redis":
        if "CacheInstances" not in loader.entries:
            loader.missing("CacheInstances", "needed when CacheEngine is redis")
        elif "cache_instances" in values:
            names = [instance.name for instance in values["cache_instances"]]
            absent = [name for name in REQUIRED_CACHE_POOLS if name not in names]
            if absent:
                loader.invalid("CacheInstances", "expected a list that also includes " + ", ".join(absent))


_LOGIN_SERVER = RoleSchema(
    role="login_server",
    file_name="loginserver.conf",
    config_class=LoginServerConfig,
    keys=(
        KeySpec("ClientListenIP", "client_listen_ips", IP_LIST,
                "Addresses where clients connect with PDUs; separate several with ';'."),
        KeySpec("ClientPort", "client_port", LISTEN_PORT, "Port for client PDU connections."),
        KeySpec("HttpListenIP", "http_listen_ips", IP_LIST,
                "Addresses of the HTTP API that assigns a msg_server to clients; separate several with ';'."),
        KeySpec("HttpPort", "http_port", LISTEN_PORT, "Port of the HTTP API."),
        KeySpec("MsgServerListenIP", "msg_server_listen_ips", IP_LIST,
                "Addresses where msg_servers register; separate several with ';'."),
        KeySpec("MsgServerPort", "msg_server_port", LISTEN_PORT, "Port where msg_servers register."),
        KeySpec("msfs", "msfs_url", URL, "Base URL of msfs, sent to clients for pictures and avatars."),
        KeySpec("discovery", "discovery_url", OPTIONAL_URL,
                "URL of the discovery page sent to clients; may be empty."),
    ),
)

_MSG_SERVER = RoleSchema(
    role="msg_server",
    file_name="msgserver.conf",
    config_class=MsgServerConfig,
    keys=(
        *_listen_keys("ListenPort", "clients"),
        KeySpec("IpAddr1", "ip_addr1", HOST,
                "Address of this server that login_server gives to clients."),
        KeySpec("IpAddr2", "ip_addr2", HOST,
                "Backup address that login_server gives to clients; defaults to IpAddr1."),
        KeySpec("MaxConnCnt", "max_conn_cnt", _integer_kind(1, 10_000_000),
                "Client connection limit reported to login_server, which sends no clients to a full server."),
        KeySpec("aesKey", "aes_key", AES_KEY,
                "AES-256 key of the clients' message bodies (32 bytes); needed only for push notification text."),
        _CONCURRENT_DB_CONN_CNT,
        KeySpec("LoginTimeout", "login_timeout", SECONDS,
                "A client connection not logged in within this time is closed, in seconds.",
                extension=True),
        KeySpec("PcClientTimeout", "pc_client_timeout", SECONDS,
                "A PC client silent for this long is closed, in seconds.", extension=True),
        KeySpec("MobileClientTimeout", "mobile_client_timeout", SECONDS,
                "A mobile client silent for this long is closed, in seconds.", extension=True),
        KeySpec("PendingAckTimeout", "pending_ack_timeout", SECONDS,
                "A delivered message not acknowledged by the device within this time is counted as"
                " unacknowledged, in seconds.", extension=True),
        KeySpec("MaxMsgPerSecond", "max_msg_per_second", _integer_kind(1, 1_000_000),
                "Messages a client connection may send per second; more are rejected.", extension=True),
    ),
    server_lists=(
        _DB_SERVERS,
        ServerListSpec("LoginServerIP", "LoginServerPort", "login_servers", "login_servers"),
        _ROUTE_SERVERS,
        ServerListSpec("PushServerIP", "PushServerPort", "push_servers", "push_servers"),
        ServerListSpec("FileServerIP", "FileServerPort", "file_servers", "file_servers"),
    ),
    check=_check_msg_server,
)

_ROUTE_SERVER = RoleSchema(
    role="route_server",
    file_name="routeserver.conf",
    config_class=RouteServerConfig,
    keys=_listen_keys("ListenMsgPort", "msg_servers"),
)

_DB_INSTANCES = InstanceGroupSpec(
    list_key="DBInstances",
    field="db_instances",
    factory=DbInstanceConfig,
    keys=(
        InstanceKeySpec("host", "host", HOST),
        InstanceKeySpec("port", "port", PORT),
        InstanceKeySpec("dbname", "dbname", TEXT),
        InstanceKeySpec("username", "username", TEXT),
        InstanceKeySpec("password", "password", SECRET_TEXT),
        InstanceKeySpec("maxconncnt", "max_conn_cnt", _integer_kind(1, 10000)),
    ),
    help=(f"MySQL instances by name ({MASTER_DB_INSTANCE} is required). Each name needs the keys"
          " <name>_host, _port, _dbname, _username, _password (may be empty) and _maxconncnt."),
    sample=tuple(
        (name, (("host", "127.0.0.1"), ("port", "3306"), ("dbname", "teamtalk"),
                ("username", "root"), ("password", ""), ("maxconncnt", "16")))
        for name in (MASTER_DB_INSTANCE, "teamtalk_slave")
    ),
)

_CACHE_INSTANCES = InstanceGroupSpec(
    list_key="CacheInstances",
    field="cache_instances",
    factory=CacheInstanceConfig,
    keys=(
        InstanceKeySpec("host", "host", HOST),
        InstanceKeySpec("port", "port", PORT),
        InstanceKeySpec("db", "db", _integer_kind(0, 65535)),
        InstanceKeySpec("password", "password", SECRET_TEXT, required=False),
        InstanceKeySpec("maxconncnt", "max_conn_cnt", _integer_kind(1, 10000)),
    ),
    help=("Redis pools by name (" + ", ".join(REQUIRED_CACHE_POOLS) + " are required). Each name"
          " needs the keys <name>_host, _port, _db (database number) and _maxconncnt;"
          " <name>_password is optional."),
    sample=tuple(
        (name, (("host", "127.0.0.1"), ("port", "6379"), ("db", str(db)), ("maxconncnt", "16")))
        for name, db in (("unread", 1), ("group_set", 2), ("sync", 3), ("token", 4), ("group_member", 5))
    ),
)

_DB_PROXY_SERVER = RoleSchema(
    role="db_proxy_server",
    file_name="dbproxyserver.conf",
    config_class=DbProxyConfig,
    keys=(
        *_listen_keys("ListenPort", "msg_servers and http_msg_servers"),
        KeySpec("ThreadNum", None, _integer_kind(1, 4096),
                "Worker threads of the C++ server; ignored here, DBPoolSize sizes the pool.",
                ignored=True),
        KeySpec("MsfsSite", "msfs_site", TEXT, "Address of msfs, the base of audio file URLs."),
        KeySpec("aesKey", "aes_key", AES_KEY,
                "AES-256 key of the clients' message bodies (32 bytes); encrypts the text stored"
                " for audio messages."),
        KeySpec("DBEngine", "db_engine", _choice_kind("mysql", "sqlite"),
                "Database: mysql (DBInstances) or sqlite (SqliteFile); the default is mysql"
                " when DBInstances is set, else sqlite.",
                extension=True, sample="mysql"),
        KeySpec("SqliteFile", "sqlite_file", TEXT,
                "SQLite database file; a relative path is relative to this conf file's directory.",
                extension=True),
        KeySpec("DBPoolSize", "db_pool_size", _integer_kind(1, 1024),
                "Database requests run at once, each in a worker thread.", extension=True),
        KeySpec("CacheEngine", "cache_engine", _choice_kind("redis", "embedded"),
                "Cache: redis (CacheInstances) or embedded (in-process); the default is redis"
                " when CacheInstances is set, else embedded.",
                extension=True, sample="redis"),
    ),
    instance_groups=(_DB_INSTANCES, _CACHE_INSTANCES),
    check=_check_db_proxy,
)

_FILE_SERVER = RoleSchema(
    role="file_server",
    file_name="fileserver.conf",
    config_class=FileServerConfig,
    keys=(
        KeySpec("ClientListenIP", "client_listen_ips", IP_LIST,
                "Addresses where clients connect; separate several with ';'."),
        KeySpec("ClientListenPort", "client_listen_port", LISTEN_PORT, "Port where clients connect."),
        KeySpec("MsgServerListenIP", "msg_server_listen_ips", IP_LIST,
                "Addresses where msg_servers connect; separate several with ';'."),
        KeySpec("MsgServerListenPort", "msg_server_listen_port", LISTEN_PORT,
                "Port where msg_servers connect."),
        KeySpec("TaskTimeout", "task_timeout", SECONDS,
                "Timeout of a file transfer task, in seconds."),
        KeySpec("FileServerIp", "file_server_ips", HOST_LIST,
                "Addresses of this server that clients are told to connect to; separate several with ';'."),
    ),
)

_MSFS = RoleSchema(
    role="msfs",
    file_name="msfs.conf",
    config_class=MsfsConfig,
    keys=(
        *_listen_keys("ListenPort", "HTTP clients"),
        KeySpec("BaseDir", "base_dir", TEXT,
                "Directory of the stored files, relative to the working directory."),
        KeySpec("FileCnt", "file_cnt", _integer_kind(0, 2**63 - 1),
                "Count of files stored so far; it picks the directory of the next file."),
        KeySpec("FilesPerDir", "files_per_dir", _integer_kind(1, 10_000_000),
                "Files stored in one directory before the next one is used."),
        KeySpec("GetThreadCount", "get_thread_count", _integer_kind(1, 1024),
                "Downloads read from disk at once."),
        KeySpec("PostThreadCount", "post_thread_count", _integer_kind(1, 1024),
                "Uploads written to disk at once."),
    ),
)

_HTTP_MSG_SERVER = RoleSchema(
    role="http_msg_server",
    file_name="httpmsgserver.conf",
    config_class=HttpMsgServerConfig,
    keys=(*_listen_keys("ListenPort", "HTTP clients"), _CONCURRENT_DB_CONN_CNT),
    server_lists=(_DB_SERVERS, _ROUTE_SERVERS),
)

_PUSH_SERVER = RoleSchema(
    role="push_server",
    file_name="pushserver.conf",
    config_class=PushServerConfig,
    keys=(
        *_listen_keys("ListenPort", "msg_servers"),
        KeySpec("CertPath", "cert_path", OPTIONAL_TEXT,
                "PEM certificate for Apple push (APNs); empty disables APNs."),
        KeySpec("KeyPath", "key_path", OPTIONAL_TEXT, "PEM private key of that certificate."),
        KeySpec("KeyPassword", "key_password", SECRET_TEXT, "Password of that private key."),
        KeySpec("SandBox", "sandbox", BOOL, "1 sends to the APNs sandbox, 0 to production."),
    ),
)

_SCHEMAS = {
    schema.role: schema
    for schema in (_LOGIN_SERVER, _MSG_SERVER, _ROUTE_SERVER, _DB_PROXY_SERVER,
                   _FILE_SERVER, _MSFS, _HTTP_MSG_SERVER, _PUSH_SERVER)
}


def role_schema(role: str) -> RoleSchema:
    """Return the schema of ``role``; raise ValueError for an unknown role."""
    try:
        return _SCHEMAS[role]
    except KeyError:
        raise ValueError(f"unknown role {role!r}: expected one of {', '.join(ROLES)}") from None


def conf_file_name(role: str) -> str:
    """Return the conf file name the C++ server of ``role`` reads, e.g. "msgserver.conf"."""
    return role_schema(role).file_name


# ---------------------------------------------------------------------------
# Reading conf files

class ConfEntry(NamedTuple):
    """One ``key=value`` setting and where it came from (``line`` is None on the command line)."""

    value: str
    line: int | None
    source: str


def parse_conf_file(path: str | os.PathLike[str]) -> dict[str, ConfEntry]:
    """Read a ``key=value`` file into entries keyed by key, in file order.

    Raises ConfigError if the file cannot be read, and lists every
    malformed line, duplicate key and non-UTF-8 setting of the file.
    """
    source = os.fspath(path)
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {source}: {exc.strerror or exc}") from exc
    return parse_conf_bytes(data, source)


def parse_conf_bytes(data: bytes, source: str) -> dict[str, ConfEntry]:
    """Parse the contents of a conf file; ``source`` names it in errors."""
    entries: dict[str, ConfEntry] = {}
    problems = []
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]

    for number, raw_line in enumerate(data.split(b"\n"), start=1):
        # Cut the comment before decoding, so comments of existing files may
        # use any encoding (the C++ samples have Chinese comments).
        setting = raw_line.split(b"#", 1)[0]
        try:
            text = setting.decode("utf-8").strip()
        except UnicodeDecodeError:
            problems.append(f"{source} line {number}: invalid UTF-8 outside a comment")
            continue
        if not text:
            continue

        key, equals, value = text.partition("=")
        key = key.strip()
        if not equals or not key:
            problems.append(f"{source} line {number}: malformed line, expected key=value")
            continue
        if key in entries:
            problems.append(f"{source} line {number}: duplicate key {key!r}"
                            f" (first set on line {entries[key].line})")
            continue
        entries[key] = ConfEntry(value.strip(), number, source)

    if problems:
        raise ConfigError(problems)
    return entries


# ---------------------------------------------------------------------------
# Validation

def _where(entry: ConfEntry) -> str:
    return entry.source if entry.line is None else f"{entry.source} line {entry.line}"


def _shown_value(kind: ValueKind, value: str) -> str:
    if kind.secret:
        return f"of {len(value.encode('utf-8'))} bytes (hidden)"
    return repr(value)


class _Loader:
    """Validate the entries of one role and build its config object.

    Problems are collected rather than raised one at a time, so one
    ConfigError lists everything wrong with a file, in line order.
    """

    def __init__(self, schema: RoleSchema, entries: dict[str, ConfEntry], label: str) -> None:
        self.schema = schema
        self.entries = entries
        self.label = label
        self.values: dict[str, Any] = {}
        # (line, message); problems without a line sort after the file's.
        self.problems: list[tuple[float, str]] = []
        self.known: set[str] = set()
        self.candidates: set[str] = set()

    def run(self) -> RoleConfig:
        self._load_keys()
        for server_list in self.schema.server_lists:
            self._load_server_list(server_list)
        for group in self.schema.instance_groups:
            self._load_instance_group(group)
        self._report_unknown_keys()

        _check_common(self)
        if self.schema.check is not None and not self.problems:
            self.schema.check(self)
        if self.problems:
            raise ConfigError(message for _, message in sorted(self.problems, key=lambda item: item[0]))
        return self.schema.config_class(source=self.label, **self.values)

    # Problems

    def add_problem(self, entry: ConfEntry | None, message: str) -> None:
        """Record ``message``, prefixed with the file and line of ``entry`` when given."""
        if entry is None:
            self.problems.append((math.inf, message))
        else:
            line = math.inf if entry.line is None else entry.line
            self.problems.append((line, f"{_where(entry)}: {message}"))

    def invalid(self, key: str, expected: str, kind: ValueKind = TEXT) -> None:
        entry = self.entries[key]
        self.add_problem(entry, f"key {key!r} has invalid value {_shown_value(kind, entry.value)}: {expected}")

    def missing(self, key: str, reason: str) -> None:
        self.add_problem(None, f"{self.label}: missing required key {key!r} ({reason})")

    def _parse(self, key: str, kind: ValueKind) -> Any:
        """Return the parsed value of the present ``key``, or None after recording a problem."""
        self.known.add(key)
        try:
            return kind.parse(self.entries[key].value)
        except ValueError as exc:
            detail = f" ({exc})" if str(exc) else ""
            self.invalid(key, f"expected {kind.expected}{detail}", kind)
            return None

    # Key families

    def _load_keys(self) -> None:
        for spec in (*self.schema.keys, *_COMMON_KEYS):
            self.candidates.add(spec.key)
            if spec.key not in self.entries:
                continue
            value = self._parse(spec.key, spec.kind)
            if spec.ignored:
                logger.info("%s: key %r is accepted and ignored", _where(self.entries[spec.key]), spec.key)
            elif value is not None:
                self.values[spec.field] = value

    def _load_server_list(self, spec: ServerListSpec) -> None:
        pattern = re.compile(f"({re.escape(spec.ip_prefix)}|{re.escape(spec.port_prefix)})([1-9][0-9]*)")
        indexes = set()
        for key in self.entries:
            match = pattern.fullmatch(key)
            if match:
                self.known.add(key)
                indexes.add(int(match.group(2)))
        for index in indexes | set(range(1, len(indexes) + 2)):
            self.candidates.update((f"{spec.ip_prefix}{index}", f"{spec.port_prefix}{index}"))
        if not indexes:
            return  # the field keeps its default

        servers = []
        for position, index in enumerate(sorted(indexes), start=1):
            ip_key, port_key = f"{spec.ip_prefix}{index}", f"{spec.port_prefix}{index}"
            if index != position:
                # The C++ servers stop reading at the first missing number
                # and would silently drop this server and those after it.
                first_key = ip_key if ip_key in self.entries else port_key
                self.add_problem(
                    self.entries[first_key],
                    f"key {first_key!r} is out of sequence: {spec.ip_prefix}{position} and"
                    f" {spec.port_prefix}{position} are missing (numbered keys count up from 1 without gaps)")
                return
            if ip_key not in self.entries:
                self.missing(ip_key, f"{port_key} is set")
            elif port_key not in self.entries:
                self.missing(port_key, f"{ip_key} is set")
            else:
                host = self._parse(ip_key, HOST)
                port = self._parse(port_key, PORT)
                if host is not None and port is not None:
                    servers.append(ServerAddress(host, port))
        self.values[spec.field] = tuple(servers)

    def _load_instance_group(self, group: InstanceGroupSpec) -> None:
        self.candidates.add(group.list_key)
        if group.list_key not in self.entries:
            return
        names = self._parse(group.list_key, NAME_LIST)
        if names is None:
            # The instance keys cannot be checked against a broken list, so
            # they are not reported as unknown on top of it.
            suffixes = tuple(f"_{key_spec.suffix}" for key_spec in group.keys)
            self.known.update(key for key in self.entries if key.endswith(suffixes))
            return

        instances = []
        for name in names:
            fields: dict[str, Any] = {"name": name}
            complete = True
            for key_spec in group.keys:
                key = f"{name}_{key_spec.suffix}"
                self.candidates.add(key)
                if key in self.entries:
                    value = self._parse(key, key_spec.kind)
                    complete = complete and value is not None
                    fields[key_spec.field] = value
                elif key_spec.required:
                    self.missing(key, f"{name} is listed in {group.list_key}")
                    complete = False
            if complete:
                instances.append(group.factory(**fields))
        self.values[group.field] = tuple(instances)

    def _report_unknown_keys(self) -> None:
        for key, entry in self.entries.items():
            if key in self.known:
                continue
            message = f"unknown key {key!r}"
            hint = self._instance_hint(key)
            if hint:
                message += f": {hint}"
            suggestion = _closest(key, self.candidates)
            if suggestion:
                message += f" (did you mean {suggestion!r}?)"
            self.add_problem(entry, message)

    def _instance_hint(self, key: str) -> str | None:
        """Return why a key shaped like ``<name>_<suffix>`` is unknown, or None for other keys."""
        name, _, suffix = key.rpartition("_")
        list_keys = [
            group.list_key
            for group in self.schema.instance_groups
            if any(key_spec.suffix == suffix for key_spec in group.keys)
        ]
        if not name or not list_keys:
            return None
        return f"{name!r} is not listed in {' or '.join(list_keys)}"


def _closest(key: str, candidates: Iterable[str]) -> str | None:
    by_lower = {candidate.lower(): candidate for candidate in candidates}
    if key.lower() in by_lower:
        return by_lower[key.lower()]
    matches = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.7)
    return by_lower[matches[0]] if matches else None


def load_config(
    role: str,
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> RoleConfig:
    """Read, validate and return the settings of ``role``.

    ``path`` is the role's conf file, or None for defaults only.
    ``overrides`` maps original key names to values (``{"ListenPort":
    "9000"}``); they win over the file and are validated the same way, with
    "command line" named as their source. Raises ConfigError listing every
    problem found, and ValueError for a role not in ``ROLES``.
    """
    schema = role_schema(role)
    label = DEFAULTS_SOURCE if path is None else os.fspath(path)
    entries = {} if path is None else parse_conf_file(path)
    for key, value in (overrides or {}).items():
        entries[key] = ConfEntry(str(value).strip(), None, COMMAND_LINE_SOURCE)

    config = _Loader(schema, entries, label).run()
    if isinstance(config, DbProxyConfig) and path is not None and not os.path.isabs(config.sqlite_file):
        # Relative to the conf file, so a command run from another directory finds the same database.
        conf_dir = os.path.dirname(os.path.abspath(os.fspath(path)))
        config = dataclasses.replace(config, sqlite_file=os.path.join(conf_dir, config.sqlite_file))
    logger.debug("loaded %s settings from %s with %d overrides", role, label, len(overrides or {}))
    return config


# ---------------------------------------------------------------------------
# Sample files

def default_config_text(role: str) -> str:
    """Render a sample conf file of ``role`` with every key, its help and its default.

    Keys of the C++ servers are set to the defaults of ``load_config``,
    except that db_proxy_server lists MySQL and Redis instances on
    127.0.0.1. Keys without a default (aesKey) and keys only this
    implementation reads are commented out. Raises ValueError for an
    unknown role.
    """
    schema = role_schema(role)
    defaults = {item.name: item.default for item in dataclasses.fields(schema.config_class)}
    lines = [
        f"# {schema.file_name}: settings of {role}.",
        "# One key=value per line. '#' starts a comment, also after a value,",
        "# so values cannot contain '#'. Unknown keys and invalid values are errors.",
    ]

    extension_keys = []
    for spec in schema.keys:
        if spec.extension:
            extension_keys.append(spec)
        elif spec.ignored:
            lines += ["", *_comment_lines(f"{spec.key}: {spec.help}")]
        else:
            lines += ["", *_render_key(spec, defaults[spec.field])]

    for server_list in schema.server_lists:
        lines += ["", *_comment_lines(
            f"{server_list.help} to connect to: {server_list.ip_prefix}<n> and"
            f" {server_list.port_prefix}<n>, numbered from 1 without gaps.")]
        for index, server in enumerate(defaults[server_list.field], start=1):
            lines += [f"{server_list.ip_prefix}{index}={server.host}",
                      f"{server_list.port_prefix}{index}={server.port}"]

    for group in schema.instance_groups:
        lines += ["", *_comment_lines(group.help)]
        lines.append(f"{group.list_key}=" + ",".join(name for name, _ in group.sample))
        for name, settings in group.sample:
            lines.append("")
            lines += [f"{name}_{suffix}={value}" for suffix, value in settings]

    lines += ["", "# Settings below are read only by this implementation; the lines show",
              "# their defaults."]
    for spec in (*extension_keys, *_COMMON_KEYS):
        lines += ["", *_render_key(spec, defaults[spec.field])]
    return "\n".join(lines) + "\n"


def _render_key(spec: KeySpec, default: Any) -> list[str]:
    if spec.sample is not None:
        value = spec.sample
    elif default is None:
        value = ""
    else:
        value = spec.kind.render(default)
    prefix = "#" if spec.extension or default is None else ""
    return [*_comment_lines(spec.help), f"{prefix}{spec.key}={value}"]


def _comment_lines(text: str, width: int = 76) -> list[str]:
    lines: list[str] = []
    current = "#"
    for word in text.split():
        if len(current) + 1 + len(word) > width and current != "#":
            lines.append(current)
            current = "#"
        current += " " + word
    lines.append(current)
    return lines


# ---------------------------------------------------------------------------
# Command line

def add_override_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the repeatable ``--set KEY=VALUE`` option to ``parser``."""
    parser.add_argument(
        "--set",
        dest="config_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=_split_override,
        help="set one key of the conf file, named as in the file (e.g. --set LogLevel=DEBUG);"
             " repeatable, and wins over the file",
    )


def _split_override(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key.strip():
        raise argparse.ArgumentTypeError(f"invalid setting {text!r}: expected KEY=VALUE")
    return key.strip(), value.strip()


def overrides_from_args(args: argparse.Namespace) -> dict[str, str]:
    """Return the ``--set`` overrides of parsed ``args``; raise ConfigError for a key set twice."""
    overrides: dict[str, str] = {}
    for key, value in getattr(args, "config_overrides", None) or ():
        if key in overrides:
            raise ConfigError(f"{COMMAND_LINE_SOURCE}: duplicate key {key!r} (given twice with --set)")
        overrides[key] = value
    return overrides
