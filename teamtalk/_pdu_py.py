"""Pure-Python PDU framing, the twin of the compiled ``teamtalk._pdu``.

Both modules have the same API and the same behaviour, and the tests run
every case against both. Import the framing from ``teamtalk.pdu``, which
loads the compiled module when it is built and this one otherwise.

Wire format: a 16-byte big-endian header, then a protobuf body::

    length uint32 (whole PDU, header included), version uint16,
    flag uint16, service_id uint16, command_id uint16, seq_num uint16,
    reserved uint16

The framing is sans-I/O: ``PduReader`` takes bytes as they arrive and returns
complete PDUs, and ``encode_pdu`` builds outgoing bytes. Nothing here touches
a socket or the clock.
"""

import operator
import struct

from teamtalk.errors import ProtocolError

__all__ = [
    "DEFAULT_MAX_PDU_LENGTH",
    "HEADER_LENGTH",
    "Pdu",
    "PduReader",
    "ProtocolError",
    "encode_pdu",
]

HEADER_LENGTH = 16
DEFAULT_MAX_PDU_LENGTH = 1 << 20

_UINT16_MAX = 0xFFFF
_UINT32_MAX = 0xFFFFFFFF
_HEADER = struct.Struct(">IHHHHHH")
_LENGTH = struct.Struct(">I")


def _check_uint16(name, value):
    """Return ``value`` as an int, or raise if it does not fit a uint16 field.

    Raises TypeError for a non-integer and OverflowError for a value outside
    0..65535, naming the field in both cases.
    """
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None
    if not 0 <= number <= _UINT16_MAX:
        raise OverflowError(f"{name} {number} is out of the uint16 range 0..{_UINT16_MAX}")
    return number


def _check_pdu_length(length):
    """Raise ValueError if a PDU of ``length`` bytes cannot be framed."""
    if length > _UINT32_MAX:
        raise ValueError(
            f"PDU length {length} exceeds the uint32 length field maximum of {_UINT32_MAX}"
        )


def _as_body_bytes(body):
    """Return a bytes-like ``body`` as bytes; raise TypeError for anything else."""
    if type(body) is bytes:
        return body
    # memoryview() rejects an int, which bytes() would turn into zero bytes.
    return bytes(memoryview(body))


def encode_pdu(service_id, command_id, body, seq_num=0, version=1, flag=0, reserved=0):
    """Build the wire bytes of one PDU: the header, then ``body``.

    ``body`` is any bytes-like object (bytes, bytearray, a contiguous
    memoryview). Header fields must fit uint16: out-of-range values raise
    OverflowError naming the field, and non-integers raise TypeError.
    A body too long for the uint32 length field raises ValueError.
    """
    if type(body) is bytes:
        body_length = len(body)
    else:
        body_length = memoryview(body).nbytes
    length = HEADER_LENGTH + body_length
    try:
        header = _HEADER.pack(length, version, flag, service_id, command_id, seq_num, reserved)
    except struct.error:
        # Rerun the checks one field at a time so that the error names the field.
        _check_pdu_length(length)
        _check_uint16("service_id", service_id)
        _check_uint16("command_id", command_id)
        _check_uint16("seq_num", seq_num)
        _check_uint16("version", version)
        _check_uint16("flag", flag)
        _check_uint16("reserved", reserved)
        raise
    return header + body


def _uint16_field(name, doc):
    """Build a property for a Pdu header field stored in the slot ``_<name>``."""
    slot = "_" + name

    def set_field(pdu, value):
        setattr(pdu, slot, _check_uint16(name, value))

    return property(operator.attrgetter(slot), set_field, doc=doc)


class Pdu:
    """One PDU: the header fields and the protobuf body.

    ``Pdu(service_id, command_id, body=b"", seq_num=0, version=1, flag=0,
    reserved=0)``. Header fields are ints that must fit uint16, checked when
    set. ``body`` is stored as bytes, and any bytes-like value is copied into
    bytes. Pdu objects compare equal when all fields and the body are equal,
    and are unhashable because they are mutable.
    """

    __slots__ = ("_version", "_flag", "_service_id", "_command_id", "_seq_num", "_reserved", "_body")

    version = _uint16_field("version", "Protocol version, 1 for every known peer.")
    flag = _uint16_field("flag", "Header flag, unused by TeamTalk and sent as 0.")
    service_id = _uint16_field("service_id", "Service of the command (IM.BaseDefine ServiceID).")
    command_id = _uint16_field("command_id", "Command within the service (a CmdID enum value).")
    seq_num = _uint16_field("seq_num", "Request sequence number, echoed by the reply.")
    reserved = _uint16_field("reserved", "Reserved header field, sent as 0.")

    def __init__(self, service_id, command_id, body=b"", seq_num=0, version=1, flag=0, reserved=0):
        self._version = _check_uint16("version", version)
        self._flag = _check_uint16("flag", flag)
        self._service_id = _check_uint16("service_id", service_id)
        self._command_id = _check_uint16("command_id", command_id)
        self._seq_num = _check_uint16("seq_num", seq_num)
        self._reserved = _check_uint16("reserved", reserved)
        self._body = _as_body_bytes(body)

    @property
    def body(self):
        """Protobuf body, as bytes."""
        return self._body

    @body.setter
    def body(self, value):
        self._body = _as_body_bytes(value)

    @property
    def length(self):
        """Wire length of the PDU in bytes: the header plus the body."""
        return HEADER_LENGTH + len(self._body)

    def encode(self):
        """Return the wire bytes of this PDU; see ``encode_pdu`` for errors."""
        return encode_pdu(
            self._service_id,
            self._command_id,
            self._body,
            self._seq_num,
            self._version,
            self._flag,
            self._reserved,
        )

    def __eq__(self, other):
        if not isinstance(other, Pdu):
            return NotImplemented
        return (
            self._service_id == other._service_id
            and self._command_id == other._command_id
            and self._seq_num == other._seq_num
            and self._version == other._version
            and self._flag == other._flag
            and self._reserved == other._reserved
            and self._body == other._body
        )

    __hash__ = None

    def __repr__(self):
        # The body may hold a password or a message, so only its length is shown.
        return (
            f"Pdu(service_id=0x{self._service_id:04x}, command_id=0x{self._command_id:04x}, "
            f"seq_num={self._seq_num}, version={self._version}, flag={self._flag}, "
            f"reserved={self._reserved}, body=<{len(self._body)} bytes>)"
        )


class PduReader:
    """Receive buffer that splits a peer's byte stream into PDUs.

    ``feed(data)`` appends bytes as they arrive, and ``next_pdu()`` or
    iteration returns the complete PDUs. Bytes of an incomplete PDU stay
    buffered until the rest arrives.

    A length field below ``HEADER_LENGTH`` or above ``max_length`` raises
    ProtocolError as soon as its 4 bytes are buffered. After that the reader
    is poisoned: every later call to ``feed``, ``next_pdu`` or ``__next__``
    raises the same ProtocolError instance, because the stream cannot be
    resynchronised.

    The buffer is a bytearray read from an offset. Consumed bytes are dropped
    only when all are consumed or when they fill at least half the buffer,
    so the cost of reading is linear in the bytes received however many PDUs
    arrive in one chunk. The reader does not limit how much is fed between
    reads. The caller should drain it after each ``feed``.
    """

    __slots__ = ("_buffer", "_offset", "_max_length", "_error")

    def __init__(self, max_length=DEFAULT_MAX_PDU_LENGTH):
        max_length = operator.index(max_length)
        if not HEADER_LENGTH <= max_length <= _UINT32_MAX:
            raise ValueError(
                f"max_length {max_length} is out of the range {HEADER_LENGTH}..{_UINT32_MAX}"
            )
        self._buffer = bytearray()
        self._offset = 0
        self._max_length = max_length
        self._error = None

    @property
    def max_length(self):
        """Largest PDU length accepted, in bytes, header included."""
        return self._max_length

    @property
    def buffered(self):
        """Number of bytes received and not yet returned as part of a PDU."""
        return len(self._buffer) - self._offset

    def feed(self, data):
        """Append received bytes (any bytes-like object) to the buffer.

        Raises the poisoning ProtocolError if an earlier read failed.
        """
        if self._error is not None:
            raise self._error.with_traceback(None)
        offset = self._offset
        if offset:
            buffer = self._buffer
            if offset == len(buffer):
                buffer.clear()
                self._offset = 0
            elif offset * 2 >= len(buffer):
                del buffer[:offset]
                self._offset = 0
        self._buffer += data

    def next_pdu(self):
        """Return the next complete Pdu, or None when more bytes are needed.

        Raises ProtocolError for a length field out of range.
        """
        if self._error is not None:
            raise self._error.with_traceback(None)
        buffer = self._buffer
        offset = self._offset
        available = len(buffer) - offset
        if available < 4:
            return None

        (length,) = _LENGTH.unpack_from(buffer, offset)
        if length < HEADER_LENGTH or length > self._max_length:
            self._reject_length(length)
        if available < length:
            return None

        end = offset + length
        pdu = Pdu.__new__(Pdu)
        (
            _,
            pdu._version,
            pdu._flag,
            pdu._service_id,
            pdu._command_id,
            pdu._seq_num,
            pdu._reserved,
        ) = _HEADER.unpack_from(buffer, offset)
        pdu._body = bytes(buffer[offset + HEADER_LENGTH : end])

        if end == len(buffer):
            buffer.clear()
            self._offset = 0
        else:
            self._offset = end
        return pdu

    def _reject_length(self, length):
        if length < HEADER_LENGTH:
            message = f"PDU length {length} is below the {HEADER_LENGTH}-byte header"
        else:
            message = f"PDU length {length} exceeds the maximum of {self._max_length} bytes"
        self._error = ProtocolError(message)
        raise self._error

    def __iter__(self):
        return self

    def __next__(self):
        pdu = self.next_pdu()
        if pdu is None:
            raise StopIteration
        return pdu
