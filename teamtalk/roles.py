"""Build and run roles from their configuration: what the role commands of the CLI call.

Each ``run_*`` function is synchronous: it sets up logging, opens what the
role needs, runs it under Trio until SIGINT or SIGTERM, and returns the
process exit code.  Start-up failures (a port in use, a database that does
not respond) are reported in one line naming the address, with exit code 1.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import sys
from pathlib import Path

import trio

from teamtalk import config as tt_config
from teamtalk import pdu
from teamtalk.log import setup_logging
from teamtalk.net.runner import run_roles
from teamtalk.net.server import ListenError

logger = logging.getLogger(__name__)


def raise_open_file_limit() -> int:
    """Raise the soft limit on open files to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            logger.warning("cannot raise the open file limit from %d to %d: %s", soft, hard, exc)
    return soft


def log_start_up(role: str, source: str) -> None:
    limit = raise_open_file_limit()
    if pdu.IMPLEMENTATION == "cython":
        logger.info("%s starting (config %s, Cython PDU framing, open file limit %d)", role, source, limit)
    else:
        logger.warning("%s starting (config %s) with the pure-Python PDU framing: the Cython "
                       "extension is not built, so framing is several times slower", role, source)


# Storage

async def open_storage_for(config: tt_config.DbProxyConfig):
    """Open the database and caches that a db_proxy config names."""
    from teamtalk import storage as st
    from teamtalk.storage.cache import CacheSet, EmbeddedCache, RedisCache
    from teamtalk.storage.database import open_sqlite

    if config.db_engine == "mysql":
        storage = await st.open_storage(
            {i.name: (i.host, i.port, i.dbname, i.username, i.password, i.max_conn_cnt)
             for i in config.db_instances},
            {},
        )
        cache_base = Path(".")
    else:
        path = Path(config.sqlite_file).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        database = await open_sqlite(st.MASTER, str(path), config.db_pool_size)
        await st.init_db(database)
        storage = st.Storage(database, database, st.ShardMap(database), CacheSet({}), {st.MASTER: database})
        cache_base = path.parent

    if config.cache_engine == "redis":
        caches = {}
        for instance in config.cache_instances:
            caches[instance.name] = RedisCache(instance.host, instance.port, instance.db,
                                               instance.password or None, instance.max_conn_cnt)
        storage.caches = CacheSet(caches)
        try:
            await storage.caches.ping()
        except BaseException:
            await storage.aclose()
            raise
    else:
        storage.caches = CacheSet.embedded(str(cache_base / st.EMBEDDED_CACHE_FILENAME))
        for cache in storage.caches.distinct():
            if isinstance(cache, EmbeddedCache):
                await cache.load()
    return storage


# Role builders

def build_login_server(config: tt_config.LoginServerConfig):
    from teamtalk.login_server.server import LoginServer

    return LoginServer(client_host=config.client_listen_ips, client_port=config.client_port,
                       http_host=config.http_listen_ips, http_port=config.http_port,
                       msg_server_host=config.msg_server_listen_ips, msg_server_port=config.msg_server_port,
                       msfs_url=config.msfs_url, discovery_url=config.discovery_url,
                       max_pdu_length=config.max_pdu_length,
                       heartbeat_interval=config.server_heartbeat_interval,
                       server_timeout=config.server_timeout)


def build_route_server(config: tt_config.RouteServerConfig):
    from teamtalk.route_server.server import RouteServer

    return RouteServer(config.listen_ips, config.listen_port, max_pdu_length=config.max_pdu_length,
                       heartbeat_interval=config.server_heartbeat_interval,
                       server_timeout=config.server_timeout)


def msg_server_settings(config: tt_config.MsgServerConfig):
    from teamtalk.msg_server.server import MsgServerSettings

    return MsgServerSettings(
        listen_host=config.listen_ips, listen_port=config.listen_port,
        ip1=config.ip_addr1, ip2=config.ip_addr2, max_conn_cnt=config.max_conn_cnt,
        db_servers=[tuple(a) for a in config.db_servers],
        login_servers=[tuple(a) for a in config.login_servers],
        route_servers=[tuple(a) for a in config.route_servers],
        max_pdu_length=config.max_pdu_length, send_queue_length=config.send_queue_length,
        login_timeout=config.login_timeout, pc_client_timeout=config.pc_client_timeout,
        mobile_client_timeout=config.mobile_client_timeout,
        max_msg_per_second=config.max_msg_per_second,
        pending_ack_timeout=config.pending_ack_timeout,
        server_heartbeat_interval=config.server_heartbeat_interval,
        server_timeout=config.server_timeout,
        host_name=socket.gethostname(),
    )


def build_msg_server(config: tt_config.MsgServerConfig):
    from teamtalk.msg_server.server import MsgServer

    return MsgServer(msg_server_settings(config))


# Running

def run_role(role_name: str, conf_path: str | None, overrides: dict[str, str]) -> int:
    """Run one role from an original-style conf file; return the exit code."""
    try:
        config = tt_config.load_config(role_name, conf_path, overrides)
    except tt_config.ConfigError as exc:
        print(f"teamtalk {role_name}: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    log_start_up(role_name, config.source)
    try:
        trio.run(_run_role_async, role_name, config)
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        cause = _start_up_error(exc)
        if cause is None:
            raise
        logger.error("%s failed to start: %s", role_name,
                     _describe(cause, "choose another port in the conf file or with --set KEY=PORT"))
        return 1
    return 0


def _start_up_error(exc: BaseException) -> BaseException | None:
    """Return the port or storage error inside ``exc`` (Trio wraps it in exception groups), if any."""
    from teamtalk.storage.database import StorageUnavailable

    if isinstance(exc, (OSError, StorageUnavailable)):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _start_up_error(inner)
            if found is not None:
                return found
    return None


def _describe(exc: BaseException, port_hint: str) -> str:
    if isinstance(exc, ListenError):
        return f"{exc.strerror}; {port_hint}, or stop what uses it"
    return str(exc)


async def _run_role_async(role_name: str, config) -> None:
    grace = config.shutdown_grace_period
    if role_name == "login_server":
        await run_roles([build_login_server(config)], grace=grace)
    elif role_name == "route_server":
        await run_roles([build_route_server(config)], grace=grace)
    elif role_name == "msg_server":
        await run_roles([build_msg_server(config)], grace=grace)
    elif role_name == "db_proxy_server":
        await _run_db_proxy(config, grace)
    else:
        raise ValueError(f"role {role_name} is not available yet")


async def _run_db_proxy(config: tt_config.DbProxyConfig, grace: float) -> None:
    from teamtalk.db_proxy.server import DbProxyServer

    storage = await open_storage_for(config)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(storage.run)
            server = DbProxyServer(storage, config.listen_ips, config.listen_port,
                                   max_pdu_length=config.max_pdu_length,
                                   heartbeat_interval=config.server_heartbeat_interval,
                                   server_timeout=config.server_timeout)
            await run_roles([server], grace=grace)
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await storage.aclose()


def default_data_dir() -> str:
    return os.environ.get("TEAMTALK_DATA_DIR") or str(Path("~/.local/share/teamtalk").expanduser())


def run_serve(data_dir: str, settings, grace: float = 5.0, log_level: str = "INFO") -> int:
    """Run all four core roles in one process on embedded storage in ``data_dir``."""
    setup_logging(log_level)
    log_start_up("teamtalk serve", data_dir)
    try:
        trio.run(_serve_async, data_dir, settings, grace)
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        cause = _start_up_error(exc)
        if cause is None:
            raise
        logger.error("teamtalk serve failed to start: %s",
                     _describe(cause, "choose another port (teamtalk serve --help lists the port options)"))
        return 1
    return 0


async def _serve_async(data_dir: str, settings, grace: float) -> None:
    from teamtalk.cluster import Cluster
    from teamtalk.storage import open_embedded_storage

    storage = await open_embedded_storage(data_dir)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(storage.run)
            cluster = Cluster(storage, settings)
            s = cluster.settings
            logger.info("data in %s; clients ask http://%s:%d/msg_server", data_dir, s.public_ip,
                        s.login_http_port)
            await run_roles([cluster], grace=grace)
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await storage.aclose()
