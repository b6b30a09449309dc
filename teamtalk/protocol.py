"""Protocol helpers shared by all roles: dispatch by table, attach_data, constants.

Handlers are looked up by (service_id, command_id).  Each table entry names
the protobuf message class of the body, so a body that does not parse is
dropped and logged here, once, and handlers only ever see parsed messages.
"""

from __future__ import annotations

import logging
import struct
from typing import Awaitable, Callable

from google.protobuf.message import DecodeError

from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.pb import IM_Other
from teamtalk.pdu import Pdu, encode_pdu

logger = logging.getLogger(__name__)

# Client classes: a new login replaces older ones of the same class only.
PC_CLIENT_TYPES = frozenset({BD.CLIENT_TYPE_WINDOWS, BD.CLIENT_TYPE_MAC})
MOBILE_CLIENT_TYPES = frozenset({BD.CLIENT_TYPE_IOS, BD.CLIENT_TYPE_ANDROID})
SINGLE_MSG_TYPES = frozenset({BD.MSG_TYPE_SINGLE_TEXT, BD.MSG_TYPE_SINGLE_AUDIO})
GROUP_MSG_TYPES = frozenset({BD.MSG_TYPE_GROUP_TEXT, BD.MSG_TYPE_GROUP_AUDIO})

HEARTBEAT_PDU = encode_pdu(BD.SID_OTHER, BD.CID_OTHER_HEARTBEAT, IM_Other.IMHeartBeat().SerializeToString())

# attach_data that msg_server puts on requests to db_proxy and that db_proxy
# echoes back: three big-endian uint32 (type, handle, service_type).
ATTACH_TYPE_HANDLE = 1
ATTACH_TYPE_PDU = 2
ATTACH_TYPE_HANDLE_AND_PDU = 3
_ATTACH = struct.Struct("!III")


def encode_attach_data(handle: int, attach_type: int = ATTACH_TYPE_HANDLE,
                       service_type: int = 0, pdu: bytes = b"") -> bytes:
    """Build attach_data; for the PDU types the PDU follows, prefixed by its length."""
    data = _ATTACH.pack(attach_type, handle & 0xFFFFFFFF, service_type)
    if attach_type in (ATTACH_TYPE_PDU, ATTACH_TYPE_HANDLE_AND_PDU):
        data += struct.pack("!I", len(pdu)) + pdu
    return data


def decode_attach_data(data: bytes) -> tuple[int, int, int, bytes]:
    """Return (type, handle, service_type, pdu) or raise ValueError."""
    if len(data) < _ATTACH.size:
        raise ValueError(f"attach_data of {len(data)} bytes is shorter than {_ATTACH.size}")
    attach_type, handle, service_type = _ATTACH.unpack_from(data)
    pdu = b""
    if attach_type in (ATTACH_TYPE_PDU, ATTACH_TYPE_HANDLE_AND_PDU) and len(data) >= _ATTACH.size + 4:
        (length,) = struct.unpack_from("!I", data, _ATTACH.size)
        pdu = bytes(data[_ATTACH.size + 4:_ATTACH.size + 4 + length])
    return attach_type, handle, service_type, pdu


def attach_handle(data: bytes) -> int | None:
    """Return the connection handle carried in attach_data, or None if absent."""
    if len(data) < _ATTACH.size:
        return None
    return _ATTACH.unpack_from(data)[1]


Handler = Callable[..., Awaitable[None]]


class Dispatcher:
    """A table from (service_id, command_id) to (message class, handler).

    ``dispatch`` parses the body and awaits ``handler(connection, pdu, message)``.
    Unknown commands and bodies that do not parse are logged and dropped;
    the connection lives on.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.routes: dict[tuple[int, int], tuple[type, Handler]] = {}
        self.unknown_count = 0
        self.bad_body_count = 0

    def add(self, service_id: int, command_id: int, message_class: type, handler: Handler) -> None:
        key = (service_id, command_id)
        if key in self.routes:
            raise ValueError(f"{self.name}: command 0x{command_id:04x} is registered twice")
        self.routes[key] = (message_class, handler)

    async def dispatch(self, connection, pdu: Pdu) -> None:
        entry = self.routes.get((pdu.service_id, pdu.command_id))
        if entry is None:
            self.unknown_count += 1
            logger.info("%s: ignoring unknown command service_id=%d command_id=0x%04x from %s",
                        self.name, pdu.service_id, pdu.command_id, connection.peer)
            return
        message_class, handler = entry
        message = message_class()
        try:
            message.ParseFromString(pdu.body)
        except DecodeError as exc:
            self.bad_body_count += 1
            logger.info("%s: dropping command 0x%04x from %s: body is not a valid %s (%s)",
                        self.name, pdu.command_id, connection.peer, message_class.__name__, exc)
            return
        if not message.IsInitialized():
            # proto2 parsing does not check required fields; a peer must send them.
            self.bad_body_count += 1
            logger.info("dropping command 0x%04x from %s: %s lacks required fields %s",
                        pdu.command_id, connection.peer, message_class.__name__,
                        ", ".join(message.FindInitializationErrors()))
            return
        await handler(connection, pdu, message)


def encode_message(service_id: int, command_id: int, message, seq_num: int = 0) -> bytes:
    """Serialize ``message`` and frame it as one PDU."""
    return encode_pdu(service_id, command_id, message.SerializeToString(), seq_num)
