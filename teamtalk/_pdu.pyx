# cython: language_level=3, boundscheck=True, wraparound=False
"""Compiled PDU framing, the twin of the pure-Python ``teamtalk._pdu_py``.

Both modules have the same API and the same behaviour, and the tests run
every case against both. Import the framing from ``teamtalk.pdu``, which
loads this module when it is built and the pure-Python one otherwise.

Wire format: a 16-byte big-endian header, then a protobuf body::

    length uint32 (whole PDU, header included), version uint16,
    flag uint16, service_id uint16, command_id uint16, seq_num uint16,
    reserved uint16

The framing is sans-I/O: ``PduReader`` takes bytes as they arrive and returns
complete PDUs, and ``encode_pdu`` builds outgoing bytes. The reader parses
headers straight from its bytearray's memory, and copies each body once out
of that buffer into the bytes object of its Pdu.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsLongAndOverflow
from cpython.number cimport PyNumber_Index
from libc.stdint cimport uint16_t, uint32_t
from libc.string cimport memcpy

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

cdef enum:
    _HEADER_LENGTH = 16
    _UINT16_MAX = 0xFFFF

cdef Py_ssize_t _MAX_BODY_LENGTH = <Py_ssize_t>0xFFFFFFFF - _HEADER_LENGTH


# Big-endian helpers. The callers check that the bytes exist.

cdef inline uint32_t _read_uint32(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline uint16_t _read_uint16(const unsigned char* p) noexcept nogil:
    return <uint16_t>((p[0] << 8) | p[1])


cdef inline void _write_uint32(unsigned char* p, uint32_t value) noexcept nogil:
    p[0] = <unsigned char>(value >> 24)
    p[1] = <unsigned char>(value >> 16)
    p[2] = <unsigned char>(value >> 8)
    p[3] = <unsigned char>value


cdef inline void _write_uint16(unsigned char* p, uint16_t value) noexcept nogil:
    p[0] = <unsigned char>(value >> 8)
    p[1] = <unsigned char>value


cdef long _check_uint16(str name, object value) except -1:
    """Return ``value`` as a C long, or raise if it does not fit a uint16 field.

    Raises TypeError for a non-integer and OverflowError for a value outside
    0..65535, naming the field in both cases.
    """
    cdef int overflow = 0
    cdef long number

    if type(value) is not int:
        try:
            value = PyNumber_Index(value)
        except TypeError:
            raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None
    number = PyLong_AsLongAndOverflow(value, &overflow)
    if overflow or not 0 <= number <= _UINT16_MAX:
        raise OverflowError(f"{name} {value} is out of the uint16 range 0..{_UINT16_MAX}")
    return number


cdef bytes _as_body_bytes(object body):
    """Return a bytes-like ``body`` as bytes; raise TypeError for anything else."""
    if type(body) is bytes:
        return <bytes>body
    # memoryview() rejects an int, which bytes() would turn into zero bytes.
    return bytes(memoryview(body))


cdef bytes _encode(uint16_t service_id, uint16_t command_id, const unsigned char* body,
                   Py_ssize_t body_length, uint16_t seq_num, uint16_t version,
                   uint16_t flag, uint16_t reserved):
    """Build the wire bytes of one PDU from checked header fields and a body."""
    cdef bytes pdu
    cdef unsigned char* p

    if body_length > _MAX_BODY_LENGTH:
        raise ValueError(
            f"PDU length {body_length + _HEADER_LENGTH} exceeds the uint32 length field "
            f"maximum of {0xFFFFFFFF}"
        )
    pdu = PyBytes_FromStringAndSize(NULL, _HEADER_LENGTH + body_length)
    p = <unsigned char*>PyBytes_AS_STRING(pdu)
    _write_uint32(p, <uint32_t>(_HEADER_LENGTH + body_length))
    _write_uint16(p + 4, version)
    _write_uint16(p + 6, flag)
    _write_uint16(p + 8, service_id)
    _write_uint16(p + 10, command_id)
    _write_uint16(p + 12, seq_num)
    _write_uint16(p + 14, reserved)
    if body_length:
        memcpy(p + _HEADER_LENGTH, body, body_length)
    return pdu


def encode_pdu(service_id, command_id, body, seq_num=0, version=1, flag=0, reserved=0):
    """Build the wire bytes of one PDU: the header, then ``body``.

    ``body`` is any bytes-like object (bytes, bytearray, a contiguous
    memoryview). Header fields must fit uint16: out-of-range values raise
    OverflowError naming the field, and non-integers raise TypeError.
    A body too long for the uint32 length field raises ValueError.
    """
    cdef uint16_t c_service_id = <uint16_t>_check_uint16("service_id", service_id)
    cdef uint16_t c_command_id = <uint16_t>_check_uint16("command_id", command_id)
    cdef uint16_t c_seq_num = <uint16_t>_check_uint16("seq_num", seq_num)
    cdef uint16_t c_version = <uint16_t>_check_uint16("version", version)
    cdef uint16_t c_flag = <uint16_t>_check_uint16("flag", flag)
    cdef uint16_t c_reserved = <uint16_t>_check_uint16("reserved", reserved)
    cdef Py_buffer view

    if type(body) is bytes:
        return _encode(c_service_id, c_command_id,
                       <const unsigned char*>PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body),
                       c_seq_num, c_version, c_flag, c_reserved)

    PyObject_GetBuffer(body, &view, PyBUF_SIMPLE)
    try:
        return _encode(c_service_id, c_command_id,
                       <const unsigned char*>view.buf, view.len,
                       c_seq_num, c_version, c_flag, c_reserved)
    finally:
        PyBuffer_Release(&view)


@cython.final
cdef class Pdu:
    """One PDU: the header fields and the protobuf body.

    ``Pdu(service_id, command_id, body=b"", seq_num=0, version=1, flag=0,
    reserved=0)``. Header fields are ints that must fit uint16, checked when
    set. ``body`` is stored as bytes, and any bytes-like value is copied into
    bytes. Pdu objects compare equal when all fields and the body are equal,
    and are unhashable because they are mutable.
    """

    def __init__(self, service_id, command_id, body=b"", seq_num=0, version=1, flag=0,
                 reserved=0):
        self.version = <uint16_t>_check_uint16("version", version)
        self.flag = <uint16_t>_check_uint16("flag", flag)
        self.service_id = <uint16_t>_check_uint16("service_id", service_id)
        self.command_id = <uint16_t>_check_uint16("command_id", command_id)
        self.seq_num = <uint16_t>_check_uint16("seq_num", seq_num)
        self.reserved = <uint16_t>_check_uint16("reserved", reserved)
        self._body = _as_body_bytes(body)

    # Inside this class self.<field> is the C field declared in _pdu.pxd. The
    # properties below expose it to Python and check each value set, because
    # Cython's own conversion to uint16_t truncates a float silently (seen with
    # Cython 3.3).

    @property
    def version(self):
        """Protocol version, 1 for every known peer."""
        return self.version

    @version.setter
    def version(self, value):
        self.version = <uint16_t>_check_uint16("version", value)

    @property
    def flag(self):
        """Header flag, unused by TeamTalk and sent as 0."""
        return self.flag

    @flag.setter
    def flag(self, value):
        self.flag = <uint16_t>_check_uint16("flag", value)

    @property
    def service_id(self):
        """Service of the command (IM.BaseDefine ServiceID)."""
        return self.service_id

    @service_id.setter
    def service_id(self, value):
        self.service_id = <uint16_t>_check_uint16("service_id", value)

    @property
    def command_id(self):
        """Command within the service (a CmdID enum value)."""
        return self.command_id

    @command_id.setter
    def command_id(self, value):
        self.command_id = <uint16_t>_check_uint16("command_id", value)

    @property
    def seq_num(self):
        """Request sequence number, echoed by the reply."""
        return self.seq_num

    @seq_num.setter
    def seq_num(self, value):
        self.seq_num = <uint16_t>_check_uint16("seq_num", value)

    @property
    def reserved(self):
        """Reserved header field, sent as 0."""
        return self.reserved

    @reserved.setter
    def reserved(self, value):
        self.reserved = <uint16_t>_check_uint16("reserved", value)

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
        return _HEADER_LENGTH + PyBytes_GET_SIZE(self._body)

    def encode(self):
        """Return the wire bytes of this PDU; see ``encode_pdu`` for errors."""
        return _encode(self.service_id, self.command_id,
                       <const unsigned char*>PyBytes_AS_STRING(self._body),
                       PyBytes_GET_SIZE(self._body),
                       self.seq_num, self.version, self.flag, self.reserved)

    def __eq__(self, other):
        if not isinstance(other, Pdu):
            return NotImplemented
        cdef Pdu that = <Pdu>other
        return (
            self.service_id == that.service_id
            and self.command_id == that.command_id
            and self.seq_num == that.seq_num
            and self.version == that.version
            and self.flag == that.flag
            and self.reserved == that.reserved
            and self._body == that._body
        )

    __hash__ = None

    def __repr__(self):
        # The body may hold a password or a message, so only its length is shown.
        return (
            f"Pdu(service_id=0x{self.service_id:04x}, command_id=0x{self.command_id:04x}, "
            f"seq_num={self.seq_num}, version={self.version}, flag={self.flag}, "
            f"reserved={self.reserved}, body=<{len(self._body)} bytes>)"
        )


@cython.final
cdef class PduReader:
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

    def __cinit__(self):
        self._buffer = bytearray()
        self._offset = 0
        self._error = None

    def __init__(self, max_length=DEFAULT_MAX_PDU_LENGTH):
        max_length = PyNumber_Index(max_length)
        if not _HEADER_LENGTH <= max_length <= 0xFFFFFFFF:
            raise ValueError(
                f"max_length {max_length} is out of the range {_HEADER_LENGTH}..{0xFFFFFFFF}"
            )
        self.max_length = max_length

    @property
    def buffered(self):
        """Number of bytes received and not yet returned as part of a PDU."""
        return PyByteArray_GET_SIZE(self._buffer) - self._offset

    def feed(self, data):
        """Append received bytes (any bytes-like object) to the buffer.

        Raises the poisoning ProtocolError if an earlier read failed.
        """
        if self._error is not None:
            raise self._error.with_traceback(None)
        if self._offset:
            self._compact()
        self._buffer += data

    def next_pdu(self):
        """Return the next complete Pdu, or None when more bytes are needed.

        Raises ProtocolError for a length field out of range.
        """
        return self._next_pdu()

    def __iter__(self):
        return self

    def __next__(self):
        cdef Pdu pdu = self._next_pdu()
        if pdu is None:
            raise StopIteration
        return pdu

    cdef Pdu _next_pdu(self):
        cdef Py_ssize_t size
        cdef Py_ssize_t available
        cdef const unsigned char* start
        cdef uint32_t length
        cdef Pdu pdu

        if self._error is not None:
            raise self._error.with_traceback(None)
        size = PyByteArray_GET_SIZE(self._buffer)
        available = size - self._offset
        if available < 4:
            return None

        # Check the length field before waiting for the rest of the PDU.
        start = <const unsigned char*>PyByteArray_AS_STRING(self._buffer) + self._offset
        length = _read_uint32(start)
        if length < _HEADER_LENGTH or length > self.max_length:
            self._reject_length(length)
        if available < <Py_ssize_t>length:
            return None

        # Build the Pdu without __init__: the fields come straight off the wire.
        pdu = Pdu.__new__(Pdu)
        pdu.version = _read_uint16(start + 4)
        pdu.flag = _read_uint16(start + 6)
        pdu.service_id = _read_uint16(start + 8)
        pdu.command_id = _read_uint16(start + 10)
        pdu.seq_num = _read_uint16(start + 12)
        pdu.reserved = _read_uint16(start + 14)
        pdu._body = PyBytes_FromStringAndSize(
            <const char*>start + _HEADER_LENGTH, <Py_ssize_t>length - _HEADER_LENGTH
        )

        self._offset += length
        if self._offset == size:
            self._compact()
        return pdu

    cdef int _compact(self) except -1:
        """Drop consumed bytes when all are consumed or they fill half the buffer."""
        cdef Py_ssize_t size = PyByteArray_GET_SIZE(self._buffer)
        if self._offset == size:
            self._buffer.clear()
            self._offset = 0
        elif self._offset * 2 >= size:
            del self._buffer[:self._offset]
            self._offset = 0
        return 0

    cdef int _reject_length(self, uint32_t length) except -1:
        """Poison the reader with a ProtocolError for ``length`` and raise it."""
        if length < _HEADER_LENGTH:
            message = f"PDU length {length} is below the {_HEADER_LENGTH}-byte header"
        else:
            message = f"PDU length {length} exceeds the maximum of {self.max_length} bytes"
        self._error = ProtocolError(message)
        raise self._error
