"""A bare PDU peer for tests: connect, send protobuf messages, read PDUs back."""

from __future__ import annotations

import trio

from teamtalk.pdu import PduReader, encode_pdu


class RawPeer:
    """One TCP connection speaking PDUs, with no behaviour of its own."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.reader = PduReader()
        self.received: list = []

    @classmethod
    async def connect(cls, host: str, port: int) -> "RawPeer":
        return cls(await trio.open_tcp_stream(host, port))

    async def send(self, service_id: int, command_id: int, message=None, seq_num: int = 0) -> None:
        body = message.SerializeToString() if message is not None else b""
        await self.stream.send_all(encode_pdu(service_id, command_id, body, seq_num))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def next_pdu(self, timeout: float = 5.0):
        """Return the next PDU, or None if the peer closed the connection."""
        with trio.fail_after(timeout):
            while True:
                pdu = self.reader.next_pdu()
                if pdu is not None:
                    return pdu
                data = await self.stream.receive_some(65536)
                if not data:
                    return None
                self.reader.feed(data)

    async def expect(self, command_id: int, message_class, timeout: float = 5.0):
        """Return (pdu, message) of the next PDU with ``command_id``; others are kept in ``received``."""
        with trio.fail_after(timeout):
            while True:
                pdu = await self.next_pdu(timeout)
                if pdu is None:
                    raise EOFError(f"connection closed while waiting for command 0x{command_id:04x}")
                if pdu.command_id == command_id:
                    message = message_class()
                    message.ParseFromString(pdu.body)
                    return pdu, message
                self.received.append(pdu)

    async def expect_closed(self, timeout: float = 5.0) -> None:
        with trio.fail_after(timeout):
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return
                if not data:
                    return

    async def aclose(self) -> None:
        await self.stream.aclose()
