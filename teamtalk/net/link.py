"""Outgoing server-to-server links that keep themselves connected.

A ``ServerLink`` dials one of its addresses, runs a ``Connection`` on it,
sends a heartbeat every ``heartbeat_interval`` seconds, lets the idle sweep
close it after ``timeout`` seconds of silence, and dials again with
exponential backoff (``backoff_initial`` doubling up to ``backoff_max``)
whenever the link drops.  Several addresses are tried in turn.
"""

from __future__ import annotations

import logging
import math
from typing import Awaitable, Callable, Sequence

import trio

from teamtalk.net.connection import SERVER_LINK_QUEUE_LENGTH, Connection, IdleSweeper
from teamtalk.pdu import Pdu, encode_pdu
from teamtalk.protocol import HEARTBEAT_PDU

logger = logging.getLogger(__name__)


class ServerLink:
    """A reconnecting PDU link to another server role.

    ``on_connected(link)`` runs each time the link comes up (to register,
    resend state, ...) and ``on_disconnected(link)`` each time it goes down.
    ``send`` returns False while the link is down; callers decide whether
    that is an error.
    """

    def __init__(
        self,
        name: str,
        addresses: Sequence[tuple[str, int]],
        handle_pdu: Callable[[Connection, Pdu], Awaitable[None]],
        *,
        max_pdu_length: int,
        heartbeat_interval: float = 5.0,
        timeout: float = 30.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        send_queue_length: int = SERVER_LINK_QUEUE_LENGTH,
        on_connected: Callable[["ServerLink"], None] | None = None,
        on_disconnected: Callable[["ServerLink"], None] | None = None,
        sweeper: IdleSweeper | None = None,
    ) -> None:
        if not addresses:
            raise ValueError(f"{name}: no address to connect to")
        self.name = name
        self.addresses = list(addresses)
        self.handle_pdu = handle_pdu
        self.max_pdu_length = max_pdu_length
        self.heartbeat_interval = heartbeat_interval
        self.timeout = timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.send_queue_length = send_queue_length
        self.on_connected = on_connected
        self.on_disconnected = on_disconnected
        self.sweeper = sweeper
        self.connection: Connection | None = None
        self.connect_count = 0
        self._up = trio.Event()

    @property
    def connected(self) -> bool:
        return self.connection is not None and not self.connection.closed

    def send(self, data: bytes) -> bool:
        connection = self.connection
        if connection is None:
            return False
        return connection.send(data)

    def send_message(self, service_id: int, command_id: int, message, seq_num: int = 0) -> bool:
        return self.send(encode_pdu(service_id, command_id, message.SerializeToString(), seq_num))

    async def wait_connected(self) -> None:
        while not self.connected:
            await self._up.wait()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Keep the link up until cancelled.

        Reports started at once, before the first connection succeeds.
        """
        task_status.started()
        delay = self.backoff_initial
        attempt = 0
        while True:
            host, port = self.addresses[attempt % len(self.addresses)]
            attempt += 1
            try:
                stream = await trio.open_tcp_stream(host, port)
            except OSError as exc:
                if attempt == 1 or math.log2(attempt).is_integer():
                    logger.warning("%s: cannot connect to %s:%d (%s); retrying in %.1f s",
                                   self.name, host, port, exc.strerror or exc, delay)
                await trio.sleep(delay)
                delay = min(delay * 2, self.backoff_max)
                continue
            delay = self.backoff_initial
            attempt = 0
            await self._run_connection(stream, f"{host}:{port}")
            await trio.sleep(self.backoff_initial)

    async def _run_connection(self, stream: trio.SocketStream, peer: str) -> None:
        connection = Connection(stream, peer=peer, max_pdu_length=self.max_pdu_length,
                                send_queue_length=self.send_queue_length)
        connection.idle_timeout = self.timeout
        if self.sweeper is not None:
            self.sweeper.add(connection)
        self.connection = connection
        self.connect_count += 1
        logger.info("%s: connected to %s", self.name, peer)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._heartbeat, connection)
                if self.sweeper is None:
                    nursery.start_soon(self._watch_idle, connection)
                if self.on_connected is not None:
                    self.on_connected(self)
                self._up.set()
                self._up = trio.Event()
                await connection.run(self.handle_pdu)
                nursery.cancel_scope.cancel()
        finally:
            self.connection = None
            logger.warning("%s: link to %s lost: %s", self.name, peer, connection.close_reason)
            if self.on_disconnected is not None:
                self.on_disconnected(self)

    async def _heartbeat(self, connection: Connection) -> None:
        while not connection.closed:
            connection.send(HEARTBEAT_PDU)
            await trio.sleep(self.heartbeat_interval)

    async def _watch_idle(self, connection: Connection) -> None:
        while not connection.closed:
            await trio.sleep(min(1.0, self.timeout))
            now = trio.current_time()
            if now - connection.last_receive >= self.timeout:
                logger.warning("%s: no PDU from %s for %.0f s", self.name, connection.peer, self.timeout)
                connection.close("link timeout")
            elif now - connection.write_started >= connection.write_timeout:
                logger.warning("%s: write to %s timed out", self.name, connection.peer)
                connection.close("write timed out")
