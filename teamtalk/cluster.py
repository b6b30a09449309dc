"""All four core roles in one process, talking to each other over loopback.

``teamtalk serve`` and the end-to-end tests use this.  The roles keep
their real TCP links, exactly as when they run as separate processes, so
the one-process mode exercises the same code paths.  A port of 0 picks a
free port; later roles are configured with the ports the earlier ones got.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import trio

from teamtalk.db_proxy.server import DbProxyServer
from teamtalk.login_server.server import LoginServer
from teamtalk.msg_server.server import MsgServer, MsgServerSettings
from teamtalk.route_server.server import RouteServer

logger = logging.getLogger(__name__)


@dataclass
class ClusterSettings:
    """Listening addresses of the roles. A port of 0 picks any free port."""

    host: str = "127.0.0.1"
    public_ip: str = "127.0.0.1"
    msg_server_port: int = 8000
    login_client_port: int = 8008
    login_http_port: int = 8080
    login_msg_server_port: int = 8100
    route_port: int = 8200
    db_proxy_port: int = 10600
    msg_server_count: int = 1
    msfs_url: str = "http://127.0.0.1:8700/"
    discovery_url: str = ""
    msg: MsgServerSettings = dataclasses.field(default_factory=MsgServerSettings)


class Cluster:
    """A role made of db_proxy, route_server, login_server and msg_servers."""

    name = "teamtalk"

    def __init__(self, storage, settings: ClusterSettings | None = None) -> None:
        self.storage = storage
        self.settings = settings or ClusterSettings()
        s = self.settings
        self.db_proxy = DbProxyServer(storage, s.host, s.db_proxy_port)
        self.route = RouteServer(s.host, s.route_port)
        self.login = LoginServer(client_host=s.host, client_port=s.login_client_port,
                                 http_host=s.host, http_port=s.login_http_port,
                                 msg_server_host=s.host, msg_server_port=s.login_msg_server_port,
                                 msfs_url=s.msfs_url, discovery_url=s.discovery_url)
        self.msg_servers: list[MsgServer] = []

    @property
    def roles(self):
        return [self.db_proxy, self.route, self.login, *self.msg_servers]

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        s = self.settings
        async with trio.open_nursery() as nursery:
            db_port = await nursery.start(self.db_proxy.run)
            route_port = await nursery.start(self.route.run)
            await nursery.start(self.login.run)
            login_port = self.login.msg_server_listener.port
            for index in range(s.msg_server_count):
                settings = dataclasses.replace(
                    s.msg,
                    listen_host=s.host,
                    listen_port=s.msg_server_port + index if s.msg_server_port else 0,
                    ip1=s.public_ip, ip2=s.public_ip,
                    db_servers=[(s.host, db_port)],
                    login_servers=[(s.host, login_port)],
                    route_servers=[(s.host, route_port)],
                )
                msg_server = MsgServer(settings)
                await nursery.start(msg_server.run)
                self.msg_servers.append(msg_server)
            task_status.started(self)

    def stop_accepting(self) -> None:
        for role in reversed(self.roles):
            role.stop_accepting()

    async def drain(self) -> None:
        for role in reversed(self.roles):
            await role.drain()

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until every msg_server has all its links up and is registered."""
        with trio.fail_after(timeout):
            for msg_server in self.msg_servers:
                for link in (*msg_server.db_links, *msg_server.login_links, msg_server.route_link):
                    await link.wait_connected()
            while len(self.login.registry.entries) < len(self.msg_servers):
                await trio.sleep(0.01)
