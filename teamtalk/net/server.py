"""Accept TCP connections and serve each as a ``Connection`` in a nursery."""

from __future__ import annotations

import logging
from typing import Protocol, Sequence

import trio

from teamtalk.net.connection import Connection, IdleSweeper, peer_name
from teamtalk.pdu import Pdu

logger = logging.getLogger(__name__)


class ConnectionHandler(Protocol):
    """Interface a role implements to serve the connections of one listener."""

    def connection_made(self, connection: Connection) -> None: ...

    async def pdu_received(self, connection: Connection, pdu: Pdu) -> None: ...

    def connection_lost(self, connection: Connection) -> None: ...


class ListenError(OSError):
    """Binding a listening socket failed; the message names the address."""


async def open_listeners(name: str, hosts: str | Sequence[str], port: int) -> list[trio.SocketListener]:
    """Listen on ``port`` of each host (a name or a list); raise ListenError naming the address.

    With port 0 the first host picks a free port and the others reuse it.
    """
    host_list = [hosts] if isinstance(hosts, str) else list(hosts)
    listeners: list[trio.SocketListener] = []
    for host in host_list or [""]:
        try:
            listeners += await trio.open_tcp_listeners(port, host=host or None)
        except OSError as exc:
            for listener in listeners:
                await listener.aclose()
            raise ListenError(exc.errno, f"{name}: cannot listen on {host or '*'}:{port}: "
                                         f"{exc.strerror or exc}") from exc
        port = listeners[0].socket.getsockname()[1]
    return listeners


class PduServer:
    """A listener whose connections speak PDUs.

    ``run`` binds, reports the bound port through ``task_status``, and
    serves until cancelled.  ``stop_accepting`` closes the listening socket
    while existing connections go on; ``close_all`` closes those too.
    """

    def __init__(
        self,
        name: str,
        host: str | Sequence[str],
        port: int,
        handler: ConnectionHandler,
        *,
        max_pdu_length: int,
        send_queue_length: int = 1024,
        sweeper: IdleSweeper | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.handler = handler
        self.max_pdu_length = max_pdu_length
        self.send_queue_length = send_queue_length
        self.sweeper = sweeper or IdleSweeper()
        self.connections: set[Connection] = set()
        self._listen_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self.sweeper.run)
            with trio.CancelScope() as self._listen_scope:
                listeners = await open_listeners(self.name, self.host, self.port)
                self.port = listeners[0].socket.getsockname()[1]
                hosts = self.host if isinstance(self.host, str) else ",".join(self.host)
                logger.info("%s listening on %s:%d", self.name, hosts, self.port)
                task_status.started(self.port)
                await trio.serve_listeners(self._serve_one, listeners, handler_nursery=nursery)

    def stop_accepting(self) -> None:
        if self._listen_scope is not None:
            self._listen_scope.cancel()

    def close_all(self, reason: str) -> None:
        for connection in list(self.connections):
            connection.close(reason)

    async def _serve_one(self, stream: trio.SocketStream) -> None:
        connection = Connection(
            stream,
            peer=peer_name(stream),
            max_pdu_length=self.max_pdu_length,
            send_queue_length=self.send_queue_length,
            spawn=self._nursery.start_soon,
        )
        logger.debug("%s accepted %s", self.name, connection.peer)
        self.connections.add(connection)
        self.sweeper.add(connection)
        try:
            self.handler.connection_made(connection)
            await connection.run(self.handler.pdu_received)
        finally:
            self.connections.discard(connection)
            logger.debug("%s closed %s: %s", self.name, connection.peer, connection.close_reason)
            self.handler.connection_lost(connection)
