"""msg_server: holds client connections and relays everything they do.

Clients log in here; requests that need storage are forwarded to
db_proxy_server with ``attach_data`` naming the client connection (a
handle), and the answer comes back with the same attach_data so it can be
routed to that connection.  Deliveries to users on other msg_servers go
through route_server.  msg_server registers with login_server and keeps it
informed of its user count.

Handlers live in ``client_handlers`` (PDUs from clients) and
``link_handlers`` (PDUs from db_proxy, route_server and login_server); this
module owns the state and the links.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field

import trio

from teamtalk.net.connection import Connection, IdleSweeper
from teamtalk.net.link import ServerLink
from teamtalk.net.server import PduServer
from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.pb import IM_Login, IM_Server
from teamtalk.protocol import encode_message
from teamtalk.msg_server.users import ClientState, OnlineUser, PendingAcks, is_pc

logger = logging.getLogger(__name__)

USER_ACTION_ADD = 1
USER_ACTION_DEL = 2

# Seconds for which presence notifies are gathered before going to PC clients.
PRESENCE_COALESCE_INTERVAL = 0.05


@dataclass
class MsgServerSettings:
    """Everything msg_server needs from its configuration."""

    listen_host: str = "0.0.0.0"
    listen_port: int = 8000
    ip1: str = "127.0.0.1"
    ip2: str = "127.0.0.1"
    max_conn_cnt: int = 100000
    db_servers: list = field(default_factory=lambda: [("127.0.0.1", 10600)])
    login_servers: list = field(default_factory=lambda: [("127.0.0.1", 8100)])
    route_servers: list = field(default_factory=lambda: [("127.0.0.1", 8200)])
    max_pdu_length: int = 1 << 20
    send_queue_length: int = 1024
    login_timeout: float = 15.0
    pc_client_timeout: float = 120.0
    mobile_client_timeout: float = 300.0
    max_msg_per_second: int = 20
    max_msg_length: int = 4096
    pending_ack_timeout: float = 15.0
    server_heartbeat_interval: float = 5.0
    server_timeout: float = 30.0
    host_name: str = field(default_factory=socket.gethostname)


class MsgServer:
    """The msg_server role."""

    name = "msg_server"

    def __init__(self, settings: MsgServerSettings) -> None:
        from teamtalk.msg_server.client_handlers import ClientHandlers
        from teamtalk.msg_server.contact_handlers import ContactHandlers
        from teamtalk.msg_server.groups import GroupFanOut
        from teamtalk.msg_server.link_handlers import LinkHandlers

        self.settings = settings
        self.users: dict[int, OnlineUser] = {}
        self.handles: dict[int, Connection] = {}
        self.pending = PendingAcks(settings.pending_ack_timeout)
        self.sweeper = IdleSweeper()
        self._pc_broadcast: list[bytes] = []
        self._nursery: trio.Nursery | None = None
        self.stats = {"msg_received": 0, "msg_acked": 0, "msg_dropped": 0, "logins": 0}

        self.clients = ClientHandlers(self)
        self.link_handlers = LinkHandlers(self)
        self.groups = GroupFanOut(self)
        ContactHandlers(self).register(self.clients.dispatcher, self.link_handlers.db_dispatcher,
                                       self.link_handlers.route_dispatcher)
        self.listener = PduServer(self.name, settings.listen_host, settings.listen_port, self.clients,
                                  max_pdu_length=settings.max_pdu_length,
                                  send_queue_length=settings.send_queue_length,
                                  sweeper=self.sweeper)
        link_options = dict(max_pdu_length=settings.max_pdu_length,
                            heartbeat_interval=settings.server_heartbeat_interval,
                            timeout=settings.server_timeout, sweeper=self.sweeper)
        # login_server hands clients only to msg_servers that can serve them, so
        # this one registers once a db_proxy and route_server link are up too.
        self._registered_on: dict[ServerLink, object] = {}
        self.db_links = [
            ServerLink(f"db_proxy link {i + 1}", [address], self.link_handlers.db_dispatcher.dispatch,
                       on_connected=self._register_when_ready, on_disconnected=self._reject_pending_logins,
                       **link_options)
            for i, address in enumerate(settings.db_servers)
        ]
        self.login_links = [
            ServerLink(f"login_server link {i + 1}", [address], self.link_handlers.login_dispatcher.dispatch,
                       on_connected=self._register_when_ready, **link_options)
            for i, address in enumerate(settings.login_servers)
        ]
        self.route_link = ServerLink("route_server link", settings.route_servers,
                                     self.link_handlers.route_dispatcher.dispatch,
                                     on_connected=self._register_with_route, **link_options)

    # Role interface

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            # Listen first, so the port registered with login_server is the bound one.
            port = await nursery.start(self.listener.run)
            for link in (*self.db_links, *self.login_links, self.route_link):
                await nursery.start(link.run)
            nursery.start_soon(self._sweep_pending)
            task_status.started(port)

    def stop_accepting(self) -> None:
        self.listener.stop_accepting()

    async def drain(self) -> None:
        """Wait briefly for the queued PDUs of clients to be written."""
        self.listener.close_all("server shutting down")

    @property
    def port(self) -> int:
        return self.listener.port

    # Links

    def db_link_for(self, user_id: int) -> ServerLink | None:
        """Pick the db_proxy link for a user; one user's requests keep one link, so stay in order."""
        links = [link for link in self.db_links if link.connected]
        if not links:
            return None
        return links[user_id % len(links)]

    def send_to_db(self, user_id: int, data: bytes) -> bool:
        link = self.db_link_for(user_id)
        return link is not None and link.send(data)

    def _reject_pending_logins(self, link: ServerLink) -> None:
        """Reject the logins validated on a db_proxy link that dropped, since no response will come."""
        for connection in list(self.handles.values()):
            state: ClientState = connection.state
            if state.login_pending and state.validate_link is link:
                logger.info("login of %r from %s rejected: %s dropped before db_proxy responded",
                            state.user_name, connection.peer, link.name)
                state.login_pending = False
                self.clients.refuse_login(connection, BD.REFUSE_REASON_NO_DB_SERVER, seq_num=state.login_seq_num)

    def login_connected(self) -> bool:
        return any(link.connected for link in self.login_links)

    def send_to_login_servers(self, data: bytes) -> None:
        for link in self.login_links:
            link.send(data)

    def _register_when_ready(self, _link: ServerLink | None = None) -> None:
        if self.db_link_for(0) is None or not self.route_link.connected:
            return
        for link in self.login_links:
            if link.connected and self._registered_on.get(link) is not link.connection:
                self._register_with_login(link)
                self._registered_on[link] = link.connection

    def _register_with_login(self, link: ServerLink) -> None:
        s = self.settings
        info = IM_Server.IMMsgServInfo(ip1=s.ip1, ip2=s.ip2, port=self.listener.port or s.listen_port,
                                       max_conn_cnt=s.max_conn_cnt, cur_conn_cnt=self.logged_in_count(),
                                       host_name=s.host_name)
        link.send(encode_message(BD.SID_OTHER, BD.CID_OTHER_MSG_SERV_INFO, info))

    def _register_with_route(self, link: ServerLink) -> None:
        self._announce_online_users(link)
        self._register_when_ready()

    def _announce_online_users(self, link: ServerLink) -> None:
        link.send(encode_message(BD.SID_OTHER, BD.CID_OTHER_ROLE_SET, IM_Server.IMRoleSet(master=1)))
        info = IM_Server.IMOnlineUserInfo()
        for user in self.users.values():
            for connection in user.connections:
                info.user_stat_list.add(user_id=user.user_id, status=connection.state.online_status,
                                        client_type=connection.state.client_type)
        link.send(encode_message(BD.SID_OTHER, BD.CID_OTHER_ONLINE_USER_INFO, info))

    # Users and connections

    def logged_in_count(self) -> int:
        return sum(len(user.connections) for user in self.users.values())

    def add_login(self, connection: Connection) -> None:
        """Record a validated login and announce it to route_server and login_server."""
        state: ClientState = connection.state
        user = self.users.get(state.user_id)
        if user is None:
            user = self.users[state.user_id] = OnlineUser(state.user_id)
        user.connections.append(connection)
        state.logged_in = True
        self.stats["logins"] += 1

        self.route_link.send(encode_message(
            BD.SID_OTHER, BD.CID_OTHER_USER_STATUS_UPDATE,
            IM_Server.IMUserStatusUpdate(user_status=BD.USER_STATUS_ONLINE, user_id=state.user_id,
                                         client_type=state.client_type)))
        self.send_to_login_servers(encode_message(
            BD.SID_OTHER, BD.CID_OTHER_USER_CNT_UPDATE,
            IM_Server.IMUserCntUpdate(user_action=USER_ACTION_ADD, user_id=state.user_id)))

    def remove_login(self, connection: Connection) -> None:
        """Forget a closed logged-in connection and announce the logout."""
        state: ClientState = connection.state
        if not state.logged_in:
            return
        state.logged_in = False
        user = self.users.get(state.user_id)
        if user is not None and connection in user.connections:
            user.connections.remove(connection)
            if not user.connections:
                del self.users[state.user_id]

        self.route_link.send(encode_message(
            BD.SID_OTHER, BD.CID_OTHER_USER_STATUS_UPDATE,
            IM_Server.IMUserStatusUpdate(user_status=BD.USER_STATUS_OFFLINE, user_id=state.user_id,
                                         client_type=state.client_type)))
        self.send_to_login_servers(encode_message(
            BD.SID_OTHER, BD.CID_OTHER_USER_CNT_UPDATE,
            IM_Server.IMUserCntUpdate(user_action=USER_ACTION_DEL, user_id=state.user_id)))

    def kick_local(self, user_id: int, client_type: int, reason: int, keep: Connection | None = None) -> int:
        """Send IMKickUser to the user's connections of the same client class and close them."""
        user = self.users.get(user_id)
        if user is None:
            return 0
        victims = [c for c in user.connections_of_class(client_type) if c is not keep]
        if not victims:
            return 0
        kick = encode_message(BD.SID_LOGIN, BD.CID_LOGIN_KICK_USER,
                              IM_Login.IMKickUser(user_id=user_id, kick_reason=reason))
        kicked = 0
        for connection in victims:
            logger.info("kicking user %d on %s (reason %d)", user_id, connection.peer, reason)
            self.remove_login(connection)
            connection.send(kick)
            connection.close_after_flush("kicked")
            kicked += 1
        return kicked

    def deliver_to_user(self, user_id: int, data: bytes, *, exclude: Connection | None = None,
                        pending_peer: int | None = None, msg_id: int = 0) -> int:
        """Send the same encoded PDU to every local device of a user.

        With ``pending_peer`` set, each delivery waits for the device's
        IMMsgDataAck keyed by (pending_peer, msg_id).
        """
        user = self.users.get(user_id)
        if user is None:
            return 0
        sent = 0
        for connection in user.connections:
            if connection is exclude:
                continue
            if connection.send(data):
                sent += 1
                if pending_peer is not None:
                    self.pending.add(connection, pending_peer, msg_id)
        return sent

    def broadcast_to_clients(self, data: bytes) -> None:
        for user in self.users.values():
            for connection in user.connections:
                connection.send(data)

    def broadcast_to_pc_clients(self, data: bytes) -> None:
        """Queue a PDU for every PC client; queued PDUs go out together.

        Presence changes arrive in bursts (a login storm announces every PC
        login to every PC user), so the PDUs of ``PRESENCE_COALESCE_INTERVAL``
        seconds are joined and handed to each connection as one chunk: one
        queue entry and one write per connection, not one per PDU.  Only
        presence waits; messages are never delayed.
        """
        self._pc_broadcast.append(data)
        if len(self._pc_broadcast) == 1:
            self._nursery.start_soon(self._flush_pc_broadcast)

    async def _flush_pc_broadcast(self) -> None:
        await trio.sleep(PRESENCE_COALESCE_INTERVAL)
        data = b"".join(self._pc_broadcast)
        self._pc_broadcast.clear()
        for user in self.users.values():
            for connection in user.connections:
                if is_pc(connection.state.client_type):
                    connection.send(data)

    async def _sweep_pending(self) -> None:
        while True:
            await trio.sleep(1.0)
            missed = self.pending.sweep()
            if missed:
                logger.info("%d deliveries were not acknowledged within %.0f s (total %d)",
                            missed, self.pending.timeout, self.pending.miss_count)
