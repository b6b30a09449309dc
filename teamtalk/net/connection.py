"""A framed PDU connection: one Trio stream, a receive loop and a writer.

Strategy: the receive loop feeds bytes into a sans-I/O ``PduReader`` and
awaits the handler for each complete PDU in arrival order, so the handler of
one connection sees its PDUs in order.  Sends never block the caller: they
write to the socket at once when nothing is queued (the usual case), else
append to a bounded outgoing queue that a writer task drains with one
``send_all`` per batch.  The writer exists only while there is something
to write, so an idle connection costs no task.  A peer that stops
reading fills the queue and is disconnected instead of growing memory
without bound.

Timeouts are not checked per connection.  Each connection carries an
absolute ``deadline`` (e.g. "log in before this"), an ``idle_timeout``
(seconds since the last received PDU) and the start time of the write in
progress, and one ``IdleSweeper`` per server closes the connections that
passed a limit.  That keeps a sleeping task per connection out of memory.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from typing import Awaitable, Callable

import trio

from teamtalk.errors import ProtocolError
from teamtalk.log import connection_id_var
from teamtalk.pdu import Pdu, PduReader, encode_pdu

logger = logging.getLogger(__name__)

RECEIVE_SIZE = 65536
DEFAULT_SEND_QUEUE_LENGTH = 1024
# Links between roles are trusted peers: a busy peer is slow, not hostile, and
# dropping the link would lose requests in flight, so their queues are long.
SERVER_LINK_QUEUE_LENGTH = 1 << 20
DEFAULT_WRITE_TIMEOUT = 30.0

_connection_ids = itertools.count(1)

PduHandler = Callable[["Connection", Pdu], Awaitable[None]]
Spawn = Callable[..., None]


class Connection:
    """One peer speaking PDUs over a Trio stream.

    The connection owns its stream: ``run`` closes it on return.  ``send``
    and ``close`` are safe to call from any task of the same Trio run.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        peer: str,
        max_pdu_length: int,
        send_queue_length: int = DEFAULT_SEND_QUEUE_LENGTH,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        spawn: Spawn | None = None,
    ) -> None:
        self.id = next(_connection_ids)
        self.peer = peer
        self.stream = stream
        self.send_queue_length = send_queue_length
        self.write_timeout = write_timeout
        self.closed = False
        self.close_reason = ""
        # Absolute trio time after which the sweeper closes the connection.
        self.deadline = math.inf
        # Seconds of silence (no PDU received) after which the sweeper closes it.
        self.idle_timeout = math.inf
        self.last_receive = trio.current_time()
        # Role state attached by the handler (user id, client type, ...).
        self.state: object = None
        # Trio time when the write in progress started; inf while none is.
        self.write_started = math.inf
        self._reader = PduReader(max_pdu_length)
        self._queue: list[bytes] = []
        # Starts a task in a nursery that outlives the connection; set by run() if None.
        self._spawn = spawn
        self._writing = False
        # The socket's file descriptor, written directly while nothing is queued.
        self._fd = _socket_fd(stream)
        self._cancel_scope: trio.CancelScope | None = None
        self._on_close: list[Callable[["Connection"], None]] = []
        self._closing = False

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.peer}{' closed' if self.closed else ''}>"

    # Sending

    def send(self, data: bytes) -> bool:
        """Send encoded PDU bytes, or queue them; return False if the connection is closed.

        With nothing queued the bytes go to the socket at once, and only what
        the kernel does not take is queued for the writer task.  If the queue
        already holds ``send_queue_length`` entries, the peer is not reading:
        the connection is closed and False returned.
        """
        if self.closed or self._closing:
            return False
        if len(self._queue) >= self.send_queue_length:
            logger.info("closing %s: outgoing queue full (%d PDUs), peer is not reading",
                        self.peer, len(self._queue))
            self.close("outgoing queue full")
            return False
        if not self._writing and not self._queue and self._fd is not None:
            # Fast path: nothing is queued, so write at once without a task.
            try:
                written = os.write(self._fd, data)
            except BlockingIOError:
                written = 0
            except OSError as exc:
                self.close(f"send failed: {exc}")
                return False
            if written == len(data):
                return True
            data = data[written:]
        self._queue.append(data)
        if not self._writing and self._spawn is not None:
            self._writing = True
            self._spawn(self._write_queued)
        return True

    def send_message(self, service_id: int, command_id: int, message, seq_num: int = 0) -> bool:
        """Encode a protobuf message into a PDU and queue it."""
        return self.send(encode_pdu(service_id, command_id, message.SerializeToString(), seq_num))

    # Closing

    def add_close_callback(self, callback: Callable[["Connection"], None]) -> None:
        """Call ``callback(connection)`` once, when the connection closes."""
        if self.closed:
            callback(self)
        else:
            self._on_close.append(callback)

    def close_after_flush(self, reason: str = "") -> None:
        """Stop accepting sends and close once the queued PDUs are written."""
        if self.closed or self._closing:
            return
        self._closing = True
        self.close_reason = reason
        if not self._queue:
            self.close(reason)

    def close(self, reason: str = "") -> None:
        """Close the connection; idempotent.  Unsent queued bytes are dropped."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self._queue.clear()
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()
        callbacks, self._on_close = self._on_close, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                logger.exception("close callback of %s failed", self.peer)

    # Running

    async def run(self, handle_pdu: PduHandler) -> None:
        """Receive and dispatch PDUs until the peer leaves or ``close`` is called.

        Always closes the stream before returning.  A framing error closes
        the connection; an exception raised by ``handle_pdu`` for one PDU is
        logged and the connection goes on with the next PDU.  Without a
        ``spawn`` function, the writer runs in a nursery of this call.
        """
        connection_id_var.set(self.id)
        try:
            with trio.CancelScope() as self._cancel_scope:
                if self.closed:
                    return
                if self._spawn is not None:
                    await self._receive_loop(handle_pdu)
                    return
                async with trio.open_nursery() as nursery:
                    self._spawn = nursery.start_soon
                    if self._queue and not self._writing:
                        self._writing = True
                        nursery.start_soon(self._write_queued)
                    await self._receive_loop(handle_pdu)
                    nursery.cancel_scope.cancel()
        finally:
            self.close(self.close_reason or "closed")
            with trio.CancelScope(shield=True):
                with trio.move_on_after(1):
                    await trio.aclose_forcefully(self.stream)

    async def _receive_loop(self, handle_pdu: PduHandler) -> None:
        reader = self._reader
        while True:
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self.close_reason = f"receive failed: {exc}"
                return
            if not data:
                self.close_reason = "peer closed the connection"
                return
            self.last_receive = trio.current_time()
            reader.feed(data)
            try:
                for pdu in reader:
                    await self._dispatch(handle_pdu, pdu)
                    if self.closed:
                        return
            except ProtocolError as exc:
                logger.info("closing %s: protocol error: %s", self.peer, exc)
                self.close_reason = f"protocol error: {exc}"
                return

    async def _dispatch(self, handle_pdu: PduHandler, pdu: Pdu) -> None:
        try:
            await handle_pdu(self, pdu)
        except (trio.Cancelled, KeyboardInterrupt):
            raise
        except Exception:
            logger.exception("handler failed on PDU service_id=%d command_id=%d from %s",
                             pdu.service_id, pdu.command_id, self.peer)

    async def _write_queued(self) -> None:
        """Write queued bytes until the queue is empty, then end (the next send starts another)."""
        try:
            while self._queue and not self.closed:
                queue = self._queue
                data = queue[0] if len(queue) == 1 else b"".join(queue)
                queue.clear()
                self.write_started = trio.current_time()
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    self.close(f"send failed: {exc}")
                    return
                finally:
                    self.write_started = math.inf
            if self._closing:
                self.close(self.close_reason)
        except trio.Cancelled:
            raise
        except Exception:
            # This task runs in a server-wide nursery: an error must not end the server.
            logger.exception("writer of %s failed", self.peer)
            self.close("writer failed")
        finally:
            self._writing = False


class IdleSweeper:
    """Close connections whose deadline or idle timeout has passed.

    One sweeper serves all connections of a server; ``run`` checks every
    ``interval`` seconds, so a timeout fires up to ``interval`` late.
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.connections: set[Connection] = set()

    def add(self, connection: Connection) -> None:
        self.connections.add(connection)
        connection.add_close_callback(self.connections.discard)

    def sweep(self) -> None:
        now = trio.current_time()
        for connection in list(self.connections):
            if now >= connection.deadline:
                logger.info("closing %s: deadline passed", connection.peer)
                connection.close("deadline passed")
            elif now - connection.write_started >= connection.write_timeout:
                logger.info("closing %s: write timed out after %.0f s", connection.peer, connection.write_timeout)
                connection.close("write timed out")
            elif now - connection.last_receive >= connection.idle_timeout:
                logger.info("closing %s: no PDU for %.0f s", connection.peer, connection.idle_timeout)
                connection.close("idle timeout")

    async def run(self) -> None:
        while True:
            await trio.sleep(self.interval)
            self.sweep()


def _socket_fd(stream: trio.abc.Stream) -> int | None:
    """Return the file descriptor of a plain trio.SocketStream, else None."""
    if type(stream) is not trio.SocketStream:
        return None
    try:
        return stream.socket.fileno()
    except OSError:
        return None


def peer_name(stream: trio.abc.Stream) -> str:
    """Return "host:port" of a socket stream's peer, or a placeholder."""
    try:
        host, port = stream.socket.getpeername()[:2]
    except (AttributeError, OSError):
        return "<unknown peer>"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
