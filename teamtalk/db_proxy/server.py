"""db_proxy_server: the role that serves all storage requests of msg_servers.

msg_servers connect (default port 10600) and send requests whose responses
carry the request's seq_num and attach_data back, so msg_server can route
each response to its client. Requests run in three ways:

- ``IMMsgData`` (single and group) goes to the single
  :class:`MessageWriter` task, which stores messages in batches in arrival
  order and responds in that order;
- read acknowledgements and heartbeats are handled inline, in the order
  the connection delivers them;
- every other request runs as its own task, at most ``max_in_flight`` at
  a time, so one slow query does not hold up the connection. When the
  limit is reached, the connection stops reading until a task finishes.

Each connection gets a heartbeat every ``heartbeat_interval`` seconds and
is closed after ``server_timeout`` seconds without any PDU from its peer.
"""

from __future__ import annotations

import logging

import trio

from teamtalk.db_proxy.handlers_buddy import BuddyHandlers
from teamtalk.db_proxy.handlers_common import Handler
from teamtalk.db_proxy.handlers_group import GroupHandlers, GroupReader
from teamtalk.db_proxy.handlers_login import LoginHandlers
from teamtalk.db_proxy.handlers_message import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_QUEUED,
    MessageHandlers,
    MessageWriter,
)
from teamtalk.db_proxy.handlers_session import SessionHandlers
from teamtalk.db_proxy.handlers_settings import SettingsHandlers
from teamtalk.db_proxy.handlers_unread import UnreadHandlers
from teamtalk.db_proxy.handlers_user import UserHandlers
from teamtalk.net.connection import SERVER_LINK_QUEUE_LENGTH, Connection
from teamtalk.net.server import PduServer
from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.pb import IM_Other, IM_Server
from teamtalk.pdu import Pdu
from teamtalk.protocol import HEARTBEAT_PDU, Dispatcher, encode_message
from teamtalk.storage import Storage
from teamtalk.storage.group_messages import GroupMessageStore
from teamtalk.storage.groups import GroupDirectory
from teamtalk.storage.messages import DEFAULT_MAX_MSG_DATA_LENGTH, MessageStore

logger = logging.getLogger(__name__)

#: Requests (other than messages) that may run at once across all connections.
DEFAULT_MAX_IN_FLIGHT = 256

class DbProxyServer:
    """The db_proxy_server role on one listening address.

    The server does not own ``storage``. The caller that opened it closes
    it after this role has stopped.
    """

    name = "db_proxy_server"

    def __init__(
        self,
        storage: Storage,
        host: str = "127.0.0.1",
        port: int = 10600,
        *,
        max_pdu_length: int = 1 << 20,
        heartbeat_interval: float = 5.0,
        server_timeout: float = 30.0,
        max_msg_data_length: int = DEFAULT_MAX_MSG_DATA_LENGTH,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_queued: int = DEFAULT_MAX_QUEUED,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        self.storage = storage
        self.heartbeat_interval = heartbeat_interval
        self.server_timeout = server_timeout
        self.store = MessageStore.from_storage(storage, max_msg_data_length=max_msg_data_length)
        self.groups = GroupDirectory.from_storage(storage)
        self.group_store = GroupMessageStore.from_storage(storage, self.groups,
                                                          max_msg_data_length=max_msg_data_length)
        self.writer = MessageWriter(self.store, group_store=self.group_store, max_batch=max_batch,
                                    max_queued=max_queued)
        self.dispatcher = Dispatcher(self.name)
        self.server = PduServer(self.name, host, port, self, max_pdu_length=max_pdu_length,
                                send_queue_length=SERVER_LINK_QUEUE_LENGTH)
        self._request_slots = trio.Semaphore(max_in_flight)
        self._in_flight = 0
        self._idle = trio.lowlevel.ParkingLot()
        self._nursery: trio.Nursery | None = None
        self._register_handlers()

    @property
    def port(self) -> int:
        """The listening port; the bound one once ``run`` has started."""
        return self.server.port

    def _register_handlers(self) -> None:
        spawn = self._spawned
        self.dispatcher.add(BD.SID_OTHER, BD.CID_OTHER_HEARTBEAT, IM_Other.IMHeartBeat, _ignore_heartbeat)
        LoginHandlers(self.storage).register(self.dispatcher, spawn)
        group_reader = GroupReader(self.storage, self.groups)
        MessageHandlers(self.storage, self.store, self.writer, group_reader).register(self.dispatcher, spawn)
        UnreadHandlers(self.storage, self.store, group_reader).register(self.dispatcher, spawn)
        SessionHandlers(self.storage, self.store, group_reader).register(self.dispatcher, spawn)
        UserHandlers(self.storage).register(self.dispatcher, spawn)
        GroupHandlers(self.storage, self.groups).register(self.dispatcher, spawn)
        BuddyHandlers(self.storage, group_reader).register(self.dispatcher, spawn)
        SettingsHandlers(self.storage).register(self.dispatcher, spawn)

    # Role interface

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Listen, report the bound port through ``task_status``, serve until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self.writer.run)
            port = await nursery.start(self.server.run)
            nursery.start_soon(self._send_heartbeats)
            task_status.started(port)

    def stop_accepting(self) -> None:
        """Close the listening socket and ask each msg_server to send no more requests."""
        self.server.stop_accepting()
        stop = encode_message(BD.SID_OTHER, BD.CID_OTHER_STOP_RECV_PACKET, IM_Server.IMStopReceivePacket(result=0))
        for connection in list(self.server.connections):
            connection.send(stop)

    async def drain(self) -> None:
        """Wait until every queued message and running request has got its response."""
        while self._in_flight or self.writer.busy:
            if self.writer.busy:
                await self.writer.wait_idle()
            else:
                await self._idle.park()

    # ConnectionHandler interface, called by PduServer

    def connection_made(self, connection: Connection) -> None:
        connection.idle_timeout = self.server_timeout
        logger.info("msg_server connected from %s", connection.peer)

    async def pdu_received(self, connection: Connection, pdu: Pdu) -> None:
        await self.dispatcher.dispatch(connection, pdu)

    def connection_lost(self, connection: Connection) -> None:
        logger.info("msg_server %s disconnected: %s", connection.peer, connection.close_reason)

    # Internals

    def _spawned(self, handler: Handler) -> Handler:
        """Wrap ``handler`` so that each request runs as its own task."""

        async def start_request(connection: Connection, pdu: Pdu, message) -> None:
            await self._request_slots.acquire()
            self._in_flight += 1
            assert self._nursery is not None
            self._nursery.start_soon(self._run_request, handler, connection, pdu, message)

        return start_request

    async def _run_request(self, handler: Handler, connection: Connection, pdu: Pdu, message) -> None:
        try:
            await handler(connection, pdu, message)
        except Exception:
            logger.exception("request 0x%04x from %s failed; it gets no response",
                             pdu.command_id, connection.peer)
        finally:
            self._in_flight -= 1
            self._request_slots.release()
            if not self._in_flight:
                self._idle.unpark_all()

    async def _send_heartbeats(self) -> None:
        while True:
            await trio.sleep(self.heartbeat_interval)
            for connection in list(self.server.connections):
                connection.send(HEARTBEAT_PDU)


async def _ignore_heartbeat(connection: Connection, pdu: Pdu, message) -> None:
    """Ignore a heartbeat: receiving any PDU keeps the connection alive, and none is sent back."""
